"""prepare_data on both layouts: loaders, the first seed's cut, splits and bad-input errors."""

import json
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from recxplain.config import DataConfig
from tasks.data import (
    DataError,
    has_repeated_pairs,
    most_recent_of_active,
    prepare_data,
    split_leave_last_out,
    split_temporal,
)

# Users 1-3 rate 3 to 5 movies (lines 2-13); user 4 rates once, on line 14, and is dropped by
# the cut at min_user_ratings=3: a bad line there shows the checks run before the cut.
RATINGS_OF_ACTIVE_USERS = (
    "userId,movieId,rating,timestamp\n"
    + "".join(f"1,{m},4.0,{100 + m}\n" for m in (1, 2, 3, 4, 5))
    + "".join(f"2,{m},3.5,{200 + m}\n" for m in (1, 2, 3, 4))
    + "".join(f"3,{m},5.0,{300 + m}\n" for m in (2, 3, 4))
)


def write_ml_latest(folder: Path, ratings: str | None = None, movies: str | None = None) -> Path:
    """A tiny ml-latest folder: 4 users, 5 movies, tags and a 3-tag genome."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(ratings if ratings is not None else RATINGS_OF_ACTIVE_USERS + "4,1,2.0,50\n")
    (folder / "movies.csv").write_text(
        movies
        if movies is not None
        else "movieId,title,genres\n"
        '1,"American President, The (1995)",Comedy|Drama|Romance\n'
        "2,Heat (1995),Action|Crime|Thriller\n"
        "3,Sabrina (1995),Comedy|Romance\n"
        "4,Untitled,(no genres listed)\n"
        "5,Se7en (a.k.a. Seven) (1995),Mystery|Thriller\n"
    )
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,2,Dark ,10\n2,2,dark,11\n3,5,twist ending,12\n")
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0112346,9087\n2,0113277,949\n")
    (folder / "genome-tags.csv").write_text("tagId,tag\n1,dark\n2,gritty\n3,funny\n")
    (folder / "genome-scores.csv").write_text(
        "movieId,tagId,relevance\n"
        + "".join(f"{m},{t},{r}\n" for m, t, r in [
            (1, 1, 0.1), (1, 2, 0.2), (1, 3, 0.9),
            (2, 1, 0.9), (2, 2, 0.85), (2, 3, 0.1),
            (3, 1, 0.2), (3, 2, 0.1), (3, 3, 0.95),
        ])
    )
    return folder


def prepare(tmp_path: Path, **fields) -> Path:
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    prepare_data(out, data=DataConfig(**fields))
    return out


def test_ml100k_from_the_recbole_wheel(tmp_path):
    out = prepare(tmp_path)
    ratings = pl.read_parquet(out / "interactions.parquet")
    items = pl.read_parquet(out / "items.parquet")
    users = pl.read_parquet(out / "users.parquet")
    kg = pl.read_parquet(out / "kg.parquet")
    assert ratings.height == 100_000 and users.height == 943 and items.height == 1682
    assert set(users.columns) >= {"user_id", "age", "gender", "occupation"}
    toy_story = items.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy_story["title"] == "Toy Story" and toy_story["year"] == 1995
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"]
    assert items.filter(pl.col("item_id") == 12)["title"][0] == "The Usual Suspects"
    # Every user: exactly one test and one valid rating, both after all their train ratings.
    per_user = ratings.group_by("user_id", "split").len().pivot(on="split", index="user_id", values="len")
    assert (per_user["test"] == 1).all() and (per_user["valid"] == 1).all()
    last_train = ratings.filter(pl.col("split") == "train").group_by("user_id").agg(pl.col("timestamp").max())
    first_test = ratings.filter(pl.col("split") == "test").select("user_id", pl.col("timestamp").alias("t"))
    assert (last_train.join(first_test, on="user_id").select(pl.col("timestamp") <= pl.col("t")).to_series()).all()
    # Freebase triples mapped onto movies with typed tails and full relation names.
    assert kg.filter(pl.col("relation") == "film.film.actor").height == 40_152
    assert kg["head"].str.starts_with("movie:").all()
    assert kg.filter(pl.col("relation") == "film.film.directed_by")["tail"].str.contains(r"^director:[mg]\.").all()
    assert kg.filter((pl.col("head") == "movie:1") & (pl.col("relation") == "genre"))["tail"].sort().to_list() == [
        "genre:Animation", "genre:Children's", "genre:Comedy",
    ]
    assert json.loads((out / "data_summary.json").read_text())["ratings"] == 100_000


def test_ml_latest_layout(tmp_path):
    folder = write_ml_latest(tmp_path / "ml")
    out = prepare(tmp_path, source="ml-latest", path=folder, min_user_ratings=3)
    ratings = pl.read_parquet(out / "interactions.parquet")
    items = pl.read_parquet(out / "items.parquet")
    kg = pl.read_parquet(out / "kg.parquet")
    assert sorted(ratings["user_id"].unique()) == [1, 2, 3]  # user 4 has 1 rating: not active
    first = items.filter(pl.col("item_id") == 1).row(0, named=True)
    assert first["title"] == "The American President" and first["year"] == 1995
    assert first["genres"] == ["Comedy", "Drama", "Romance"] and first["imdb_id"] == "0112346"
    assert items.filter(pl.col("item_id") == 4)["genres"][0].to_list() == []
    assert items.filter(pl.col("item_id") == 5)["title"][0] == "Se7en (a.k.a. Seven)"
    edges = set(kg.iter_rows())
    assert ("movie:2", "has_tag", "tag:dark") in edges  # user tags lowercased and stripped
    assert ("movie:5", "has_tag", "tag:twist ending") in edges
    assert ("movie:3", "has_tag", "tag:funny") in edges  # genome relevance 0.95 >= 0.8
    assert ("movie:1", "has_tag", "tag:dark") not in edges  # relevance 0.1
    # dark and gritty co-occur on movie 2 only: they are each other's nearest genome tag
    assert ("tag:dark", "similar_to", "tag:gritty") in edges
    assert ("tag:funny", "similar_to", "tag:dark") in edges or ("tag:funny", "similar_to", "tag:gritty") in edges
    assert pl.read_parquet(out / "users.parquet").columns == ["user_id"]


def test_most_recent_ratings_of_active_users():
    ratings = pl.DataFrame(
        {
            "user_id": [1] * 5 + [2] * 4 + [3] * 2,
            "item_id": [1, 2, 3, 4, 5, 1, 2, 3, 4, 1, 2],
            "rating": [4.0] * 11,
            "timestamp": [10, 20, 30, 40, 50, 15, 25, 35, 45, 60, 70],
        }
    ).lazy()
    cut = most_recent_of_active(ratings, min_user_ratings=3, max_ratings=6)
    # User 3 is not active; of the rest, the 6 most recent: 50, 45, 40, 35, 30, 25.
    assert sorted(cut["timestamp"].to_list()) == [25, 30, 35, 40, 45, 50]
    # With a cut of 5 (50, 45, 40, 35, 30), user 2 keeps only 45 and 35: too few, dropped.
    cut = most_recent_of_active(ratings, min_user_ratings=3, max_ratings=5)
    assert sorted(cut["timestamp"].to_list()) == [30, 40, 50]


def test_splits():
    ratings = pl.DataFrame(
        {"user_id": [1, 1, 1, 1, 2, 2, 2], "item_id": [1, 2, 3, 4, 1, 2, 3], "rating": [3.0] * 7,
         "timestamp": [40, 10, 30, 20, 5, 6, 7]}
    ).lazy()
    llo = split_leave_last_out(ratings).collect()
    assert dict(llo.filter(pl.col("user_id") == 1).select("item_id", "split").iter_rows()) == {
        2: "train", 4: "train", 3: "valid", 1: "test"
    }
    temporal = split_temporal(ratings, valid_fraction=0.3, test_fraction=0.3).collect()
    by_time = dict(temporal.select("timestamp", "split").iter_rows())
    # 7 ratings: the latest round(2.1) = 2 in test, the 2 before in valid.
    assert [by_time[t] for t in (5, 6, 7, 10, 20, 30, 40)] == ["train"] * 3 + ["valid"] * 2 + ["test"] * 2


@pytest.mark.parametrize(
    "ratings, message",
    [
        ("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,good,2\n1,3,4,3\n", "line 3: column 'rating'"),
        ("userId,movieId,score,timestamp\n1,1,4.0,1\n", "missing column(s) ['rating']"),
        ("", "file is empty"),
        ("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,1,4.0,1\n1,2,3.0,2\n", "duplicate (user_id, item_id)"),
    ],
)
def test_bad_ratings_name_the_file(tmp_path, ratings, message):
    folder = write_ml_latest(tmp_path / "ml", ratings=ratings)
    with pytest.raises(
        DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ) as err:
        prepare(tmp_path, source="ml-latest", path=folder, min_user_ratings=1)
    assert str(folder) in str(err.value)
    assert not list((tmp_path / "out").iterdir())  # nothing half-written


def test_bad_movies_name_file_line_and_column(tmp_path):
    folder = write_ml_latest(tmp_path / "ml", movies="movieId,title,genres\n1,A (1990),Drama\nx,B (1991),Drama\n")
    with pytest.raises(DataError, match=r"movies.csv: line 3: column 'movieId'"):
        prepare(tmp_path, source="ml-latest", path=folder, min_user_ratings=1)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="ratings.csv: file not found"):
        prepare(tmp_path, source="ml-latest", path=tmp_path, min_user_ratings=1)
    with pytest.raises(DataError, match="not a folder"):
        prepare(tmp_path, source="ml-latest", path=tmp_path / "nope")


def test_byte_order_mark_and_crlf_load_like_plain_files(tmp_path):
    plain = write_ml_latest(tmp_path / "plain")
    windows = write_ml_latest(tmp_path / "windows")
    for path in windows.iterdir():  # as Excel on Windows saves them
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    expected = prepare(tmp_path / "a", source="ml-latest", path=plain, min_user_ratings=3)
    got = prepare(tmp_path / "b", source="ml-latest", path=windows, min_user_ratings=3)
    for name in ("interactions.parquet", "items.parquet", "kg.parquet"):
        assert pl.read_parquet(got / name).equals(pl.read_parquet(expected / name)), name


def test_empty_tmdb_id_loads(tmp_path):
    folder = write_ml_latest(tmp_path / "ml")
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0112346,\n2,0113277,949\n")
    items = pl.read_parquet(prepare(tmp_path, source="ml-latest", path=folder, min_user_ratings=3) / "items.parquet")
    assert items.filter(pl.col("item_id") == 1)["tmdb_id"][0] is None


# (file, its text, what the error says after "<file>: line N"): one row per shape of bad line.
BAD_LINES = [
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "4,1,7.5,50\n",
     "line 14: rating 7.5 is outside data.rating_range [0.5, 5]"),
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "4,1,-1,50\n", "line 14: rating -1.0 is outside data.rating_range"),
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "4,1,2.0,50,9\n", "line 14: 5 field(s), the header has 4"),
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "4,1,2.0\n", "line 14: 3 field(s), the header has 4"),
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "\n4,1,2.0,50\n", "line 14: 0 field(s), the header has 4"),
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "4,1,,50\n", "line 14: column 'rating' is empty"),
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "4,x1,2.0,50\n",
     "line 14: column 'movieId' must be a whole number, got 'x1'"),
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "4,99,2.0,50\n", "line 14: item 99 is not in the items file"),
    ("ratings.csv", RATINGS_OF_ACTIVE_USERS + "1,1,2.0,50\n",
     "line 14: duplicate (user_id, item_id) = (1, 1), first on line 2"),
    ("movies.csv", "movieId,title,genres\n1,Heat, The (1995),Action\n", "line 2: 4 field(s), the header has 3"),
    ("tags.csv", 'userId,movieId,tag,timestamp\n1,2,"dark, gritty",10\n1,2,dark,later\n',
     "line 3: column 'timestamp' must be a whole number, got 'later'"),
    ("tags.csv", "userId,movieId,tag,timestamp\n1,2,dark,10,11\n", "line 2: 5 field(s), the header has 4"),
    ("tags.csv", "userId,movieId,tag,timestamp\n1,2,dark,10\n1,3,,11\n", "line 3: column 'tag' is empty"),
    ("links.csv", "movieId,imdbId,tmdbId\n1,0112346,9087\ntwo,0113277,949\n",
     "line 3: column 'movieId' must be a whole number, got 'two'"),
    ("links.csv", "movieId,imdbId,tmdbId\n1,,9087\n", "line 2: column 'imdbId' is empty"),
    ("genome-scores.csv", "movieId,tagId,relevance\n1,1,0.5\n1,2,high\n",
     "line 3: column 'relevance' must be a number, got 'high'"),
    ("genome-scores.csv", "movieId,tagId,relevance\n1,1,0.5\n1,2,1.5\n",
     "line 3: relevance 1.5 is outside the genome's scale [0, 1]"),
    ("genome-tags.csv", "tagId,tag\n1,dark\n2\n", "line 3: 1 field(s), the header has 2"),
]


@pytest.mark.parametrize(
    "name, text, message", BAD_LINES, ids=[f"{n}:{m.split(': ', 1)[1][:30]}" for n, _, m in BAD_LINES]
)
def test_bad_line_names_file_and_line(tmp_path, name, text, message):
    folder = write_ml_latest(tmp_path / "ml")
    (folder / name).write_text(text)
    with pytest.raises(DataError) as err:
        prepare(tmp_path, source="ml-latest", path=folder, min_user_ratings=3)
    assert str(err.value).startswith(f"{folder / name}: {message}"), str(err.value)
    assert not list((tmp_path / "out").iterdir())  # nothing half-written


def test_rating_range_is_configurable(tmp_path):
    folder = write_ml_latest(tmp_path / "ml", ratings=RATINGS_OF_ACTIVE_USERS + "4,1,0.5,50\n")
    prepare(tmp_path, source="ml-latest", path=folder, min_user_ratings=3)  # 0.5 is on the default scale
    with pytest.raises(DataError, match=r"ratings.csv: line 14: rating 0.5 is outside data.rating_range \[1, 5\]"):
        prepare(tmp_path / "strict", source="ml-latest", path=folder, min_user_ratings=3, rating_range=[1, 5])
    with pytest.raises(ValidationError, match=r"data.rating_range must be \[low, high\]"):
        DataConfig(rating_range=[5, 1])


@pytest.mark.parametrize(
    "users, items", [([1, 1, 2], [7, 8, 7]), ([-1, 0, 5], [3, -2, 3]), ([2**62, 1, 2**62], [2**40, 1, 2**40 + 1])]
)
def test_repeated_pairs_found_with_any_ids(users, items):
    ratings = pl.DataFrame({"user_id": users, "item_id": items})
    assert not has_repeated_pairs(ratings)  # the integer key and the pair hash agree
    assert has_repeated_pairs(pl.concat([ratings, ratings.head(1)]))


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    folder = write_ml_latest(tmp_path / "ml")
    (folder / "tags.csv").write_bytes("userId,movieId,tag,timestamp\n1,2,Amélie,10\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"tags.csv: not UTF-8 text"):
        prepare(tmp_path, source="ml-latest", path=folder, min_user_ratings=3)


# ---------------------------------------------------------------- RecBole atomic datasets


def test_atomic_ml100k_gives_the_builtin_interactions(tmp_path):
    """The ml-100k files of the recbole wheel read as `data.source: atomic` give what the built-in
    loader gives: interactions (and so splits), items and users."""
    from tasks.data import ml100k_folder

    builtin, atomic = tmp_path / "builtin", tmp_path / "atomic"
    builtin.mkdir(), atomic.mkdir()
    prepare_data(builtin, data=DataConfig())
    prepare_data(atomic, data=DataConfig(source="atomic", path=ml100k_folder()))
    for name in ("interactions", "items", "users"):
        assert pl.read_parquet(atomic / f"{name}.parquet").equals(pl.read_parquet(builtin / f"{name}.parquet")), name
    builtin_kg, atomic_kg = (set(pl.read_parquet(f / "kg.parquet").iter_rows()) for f in (builtin, atomic))
    assert builtin_kg <= atomic_kg  # the atomic reader also keeps relations that are not Freebase's film ones


def write_atomic(folder: Path, name: str, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for suffix, text in files.items():
        (folder / f"{name}{suffix}").write_text(text)
    return folder


def test_atomic_tokens_without_ratings_or_timestamps(tmp_path):
    """Amazon-like item tokens are numbered in sorted order; no rating rates 1; no timestamp keeps
    the file's order; names, years and categories come from the .item fields; a KG with its .link."""
    inter = "user_id:token\titem_id:token\n" + "".join(
        f"u{u}\t{item}\n" for u in (1, 2) for item in ("B002", "B001", "B003", "B004"))
    item = ("item_id:token\ttitle:token_seq\tyear:token\tcategories:token_seq\n"
            "B001\tThe Gift\t1999\tBooks Fiction\nB002\tBig Sleep, The\t\tBooks\n"
            "B003\t\t2001\t\nB004\tDune\t1965\tBooks\n")
    link = "item_id:token\tentity_id:token\nB001\tm.1\nB004\tm.4\n"
    kg = ("head_id:token\trelation_id:token\ttail_id:token\n"
          "m.1\tbook.written_work.author\tm.9\nm.4\tbook.book.sequel\tm.1\n")
    folder = write_atomic(tmp_path / "books", "books", {".inter": inter, ".item": item, ".link": link, ".kg": kg})
    out = tmp_path / "out"
    out.mkdir()
    prepare_data(out, data=DataConfig(source="atomic", path=folder, min_user_ratings=3))
    interactions = pl.read_parquet(out / "interactions.parquet")
    assert set(interactions["rating"]) == {1.0}
    # Items B001..B004 are 1..4; each user's last line (B004) is test and the one before (B003) valid.
    assert interactions.filter(pl.col("split") == "test")["item_id"].to_list() == [4, 4]
    assert interactions.filter(pl.col("split") == "valid")["item_id"].to_list() == [3, 3]
    items = pl.read_parquet(out / "items.parquet")
    assert items.select("item_id", "title", "year", "token").rows() == [
        (1, "The Gift", 1999, "B001"), (2, "The Big Sleep", None, "B002"), (3, "item 3", 2001, "B003"),
        (4, "Dune", 1965, "B004")]
    assert items["genres"].to_list() == [["Books", "Fiction"], ["Books"], [], ["Books"]]
    assert sorted(pl.read_parquet(out / "users.parquet")["user_id"]) == [1, 2]  # u1, u2 numbered
    edges = set(pl.read_parquet(out / "kg.parquet").iter_rows())
    assert {("movie:1", "book.written_work.author", "author:m.9"), ("movie:4", "book.book.sequel", "sequel:m.1"),
            ("movie:1", "genre", "genre:Fiction")} <= edges


@pytest.mark.parametrize("files, message", [
    ({".inter": "user_id:token\titem_id:token\trating:float\n1\t2\t4\n1\t3\tgood\n"},
     r"x\.inter: line 3: column 'rating:float' must be a number, got 'good'"),
    ({".inter": "user_id:token\titem_id:token\trating:number\n1\t2\t4\n"},
     r"x\.inter: column 'rating:number': the header must name each field as name:type"),
    ({".inter": "user_id:token\trating:float\n1\t4\n"}, r"x\.inter: missing field\(s\) \['item_id'\]"),
    ({".inter": "user_id:token\titem_id:token\n1\t2\n1\t3\t5\n"}, r"x\.inter: line 3: 3 field\(s\), the header has 2"),
    ({".inter": "user_id:token\titem_id:token\n1\t\n"}, r"x\.inter: line 2: column 'item_id:token' is empty"),
    ({".inter": "user_id:token\titem_id:token\n1\t2\n", ".kg": "head_id:token\trelation_id:token\ttail_id:token\n"},
     r"x\.kg: a knowledge graph needs its \.link file"),
])
def test_bad_atomic_files_name_file_line_and_column(tmp_path, files, message):
    folder = write_atomic(tmp_path / "x", "x", files)
    with pytest.raises(DataError, match=message):
        prepare_data(tmp_path, data=DataConfig(source="atomic", path=folder))


def test_atomic_folder_needs_one_inter_file(tmp_path):
    with pytest.raises(DataError, match="exactly one .inter file, found none"):
        prepare_data(tmp_path, data=DataConfig(source="atomic", path=tmp_path))
    with pytest.raises(ValidationError, match="data.path is required when data.source is 'atomic'"):
        DataConfig(source="atomic")


# ---------------------------------------------------------------- IMDb enrichment


def write_imdb(folder: Path, principals: str | None = None) -> Path:
    """IMDb's three TSVs for the two linked movies of `write_ml_latest` (American President:
    tt0112346, Heat: tt0113277) and one title nobody rated."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "title.basics.tsv").write_text(
        "tconst\ttitleType\tprimaryTitle\tstartYear\tgenres\n"
        "tt0112346\tmovie\tThe American President\t1995\tComedy\n"
        "tt0113277\tmovie\tHeat\t1995\tCrime\ntt9999999\tmovie\tNobody's\t\\N\tDrama\n")
    (folder / "title.principals.tsv").write_text(principals if principals is not None else (
        "tconst\tordering\tnconst\tcategory\tjob\tcharacters\n"
        "tt0112346\t1\tnm0000175\tactor\t\\N\t[\"Andrew Shepherd\"]\n"
        "tt0112346\t2\tnm0001661\tdirector\t\\N\t\\N\n"
        "tt0112346\t3\tnm0001782\twriter\tscreenplay\t\\N\n"
        "tt0113277\t1\tnm0000199\tactor\t\\N\t[\"McCauley\"]\n"
        "tt0113277\t2\tnm0000520\tdirector\t\\N\t\\N\n"
        "tt0113277\t3\tnm0000634\tcomposer\t\\N\t\\N\n"
        "tt9999999\t1\tnm0000001\tactress\t\\N\t\\N\n"))
    (folder / "name.basics.tsv").write_text(
        "nconst\tprimaryName\tbirthYear\nnm0000175\tMichael Douglas\t1944\nnm0001661\tRob Reiner\t1947\n"
        "nm0001782\tAaron Sorkin\t1961\nnm0000199\tAl Pacino\t1940\nnm0000520\tMichael Mann\t1943\n"
        "nm0000634\tElliot Goldenthal\t1954\nnm0000001\tFred Astaire\t1899\n")
    return folder


def test_imdb_adds_directors_writers_and_actors_with_names(tmp_path):
    folder = write_ml_latest(tmp_path / "ml")
    imdb = write_imdb(tmp_path / "imdb")
    out = prepare(tmp_path, source="ml-latest", path=folder, min_user_ratings=3, imdb_path=imdb)
    edges = set(pl.read_parquet(out / "kg.parquet").iter_rows())
    assert {("movie:1", "actor", "actor:nm0000175"), ("movie:1", "directed_by", "director:nm0001661"),
            ("movie:1", "written_by", "writer:nm0001782"), ("movie:2", "actor", "actor:nm0000199"),
            ("movie:2", "directed_by", "director:nm0000520")} <= edges
    assert not any("nm0000634" in tail or "nm0000001" in tail for _, _, tail in edges)  # a composer; an unrated title
    names = dict(pl.read_parquet(out / "entities.parquet").iter_rows())
    assert names == {"actor:nm0000175": "Michael Douglas", "director:nm0001661": "Rob Reiner",
                     "writer:nm0001782": "Aaron Sorkin", "actor:nm0000199": "Al Pacino",
                     "director:nm0000520": "Michael Mann"}
    # The names reach the paths' sentences (tasks/paths.py reads entities.parquet).
    from tasks.paths import render_path
    steps = ["user:1", "rated", "movie:1", "directed_by", "director:nm0001661", "directed_by", "movie:2"]
    assert render_path(steps, {1: "The American President", 2: "Heat"}, 4.0, names) == (
        "You rated The American President 4/5; Heat shares the director Rob Reiner with it.")
    without = prepare(tmp_path / "plain", source="ml-latest", path=folder, min_user_ratings=3)
    assert not (without / "entities.parquet").exists()


def test_bad_imdb_files_are_named(tmp_path):
    folder = write_ml_latest(tmp_path / "ml")
    ragged = "tconst\tordering\tnconst\tcategory\ntt0112346\t1\tnm0000175\tactor\ntt0113277\t1\tnm0000199\n"
    with pytest.raises(DataError, match=r"title\.principals\.tsv: line 3: 3 field\(s\), the header has 4"):
        prepare(tmp_path, source="ml-latest", path=folder, imdb_path=write_imdb(tmp_path / "a", ragged))
    no_category = "tconst\tordering\tnconst\ntt0112346\t1\tnm0000175\n"
    with pytest.raises(DataError, match=r"title\.principals\.tsv: missing column\(s\) \['category'\]"):
        prepare(tmp_path, source="ml-latest", path=folder, imdb_path=write_imdb(tmp_path / "b", no_category))
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"title\.basics\.tsv: file not found"):
        prepare(tmp_path, source="ml-latest", path=folder, imdb_path=tmp_path / "c")
    with pytest.raises(ValidationError, match="needs data.source ml-latest"):
        DataConfig(imdb_path=tmp_path)


def test_leave_last_out_ties_keep_the_file_order():
    """Two last ratings in the same second: the later line of the file is the test item (RecBole's
    order), whatever the item ids; `tie_order="item_id"` keeps the old rule (highest id last)."""
    ratings = pl.DataFrame(
        {"user_id": [1, 1, 1, 1], "item_id": [9, 5, 2, 7], "rating": [3.0] * 4, "timestamp": [10, 20, 30, 30]}
    ).lazy()
    by_file = split_leave_last_out(ratings.with_row_index("_row")).collect()
    assert dict(by_file.select("item_id", "split").iter_rows()) == {9: "train", 5: "train", 2: "valid", 7: "test"}
    swapped = pl.concat([ratings.collect()[[0, 1, 3]], ratings.collect()[[2]]]).lazy()  # 7's line before 2's
    assert dict(split_leave_last_out(swapped).collect().select("item_id", "split").iter_rows())[2] == "test"
    by_id = split_leave_last_out(swapped, tie_order="item_id").collect()
    assert dict(by_id.select("item_id", "split").iter_rows())[7] == "test"


def test_prepare_data_breaks_ties_by_file_line(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{i},M{i} (1990),Drama\n" for i in range(1, 7))
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,6,4.0,1\n1,1,4.0,2\n1,5,4.0,3\n1,3,4.0,3\n1,2,4.0,3\n")
    prepare_data(tmp_path, data=DataConfig(source="ml-latest", path=folder, min_user_ratings=3))
    split = dict(pl.read_parquet(tmp_path / "interactions.parquet").select("item_id", "split").iter_rows())
    assert split[2] == "test" and split[3] == "valid" and split[5] == "train"
