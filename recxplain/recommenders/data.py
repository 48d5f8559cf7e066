"""Reading the interactions table a prepare_data folder holds."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recxplain.schemas import check_columns


def read_interactions(data: Path) -> pl.DataFrame:
    """interactions.parquet of a prepare_data folder, checked against the contract."""
    path = data / "interactions.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (expected the prepare_data output folder)")
    frame = pl.read_parquet(path)
    check_columns(frame, "interactions", path)
    bad = set(frame["split"].unique().to_list()) - {"train", "valid", "test"}
    if bad:
        raise ValueError(f"{path}: column split has values {sorted(bad)}; expected train/valid/test")
    return frame.with_columns(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64))
