"""feature_stats() against pandas and Pillow on real data: mlxtend's Auto MPG table (392 real
cars) with missing values, and Fashion-MNIST PNGs train versus test."""
import glob
import gzip
import os

import mlxtend
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial.distance import jensenshannon

from conftest import quiver

NUMERIC = ["cylinders", "displacement", "horsepower", "weight", "acceleration", "model_year",
           "origin", "mpg"]
COLUMNS = NUMERIC[:-1] + ["car_name", "mpg"]


@pytest.fixture(scope="module")
def cars(tmp_path_factory):
    """The Auto MPG table with values removed at fixed rows (the bundled copy has none missing),
    as a CSV file and as the pandas frame it must agree with."""
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "autompg.csv.gz")
    with gzip.open(path, "rt") as f:
        df = pd.read_csv(f, header=None, names=COLUMNS)
    df = df[NUMERIC[:-1] + ["mpg", "car_name"]]
    df.loc[df.index % 7 == 3, "horsepower"] = np.nan
    df.loc[df.index % 11 == 5, "car_name"] = None
    df.loc[df.index % 13 == 0, "mpg"] = np.nan
    out = tmp_path_factory.mktemp("cars") / "cars.csv"
    df.to_csv(out, index=False)
    return str(out), df


def table(csv, name="cars"):
    return (f"CREATE EXTERNAL TABLE {name} STORED AS CSV LOCATION '{csv}' "
            "OPTIONS ('format.has_header' 'true');")


def by_feature(rows, dataset=None):
    return {r["feature"]: r for r in rows if dataset is None or r["dataset"] == dataset}


def np_histogram(values, lo, hi):
    counts, _ = np.histogram(values, bins=10, range=(lo, hi))
    return counts.tolist()


def test_numeric_and_string_statistics_match_pandas(cars):
    csv, df = cars
    rows = by_feature(quiver(table(csv) + "SELECT * FROM feature_stats('cars')"))
    assert list(rows) == list(df.columns)
    described = df.describe()
    for column in NUMERIC:
        r, d = rows[column], described[column]
        values = df[column].dropna().to_numpy(dtype=float)
        assert r["kind"] == "numeric"
        assert r["count"] == int(d["count"])
        assert r["missing"] == int(df[column].isna().sum())
        assert r["missing_pct"] == pytest.approx(100 * df[column].isna().mean())
        for ours, theirs in [("mean", "mean"), ("std", "std"), ("min", "min"), ("p25", "25%"),
                             ("median", "50%"), ("p75", "75%"), ("max", "max")]:
            assert r[ours] == pytest.approx(d[theirs], rel=1e-12), (column, ours)
        assert r["zeros"] == int((values == 0).sum())
        assert [h["count"] for h in r["histogram"]] == np_histogram(values, d["min"], d["max"])
        assert r["histogram"][0]["low"] == d["min"] and r["histogram"][-1]["high"] == d["max"]
    assert rows["horsepower"]["missing"] == 56 and rows["mpg"]["missing"] == 31

    name = rows["car_name"]
    counts = df["car_name"].value_counts()
    assert name["kind"] == "categorical"
    assert name["count"] == int(df["car_name"].notna().sum())
    assert name["missing"] == int(df["car_name"].isna().sum()) == 36
    assert name["distinct"] == df["car_name"].nunique()
    top = name["top_values"]
    assert [t["count"] for t in top] == counts.head(10).tolist()
    for t in top:
        assert counts[t["value"]] == t["count"]
    assert "histogram" not in name and "mean" not in name


def test_two_tables_side_by_side_with_distances(cars):
    csv, df = cars
    sql = (table(csv) + "SELECT * FROM feature_stats((SELECT * FROM cars WHERE origin = 1), "
           "(SELECT * FROM cars WHERE origin <> 1))")
    rows = quiver(sql)
    usa, other = df[df.origin == 1], df[df.origin != 1]
    assert [r["feature"] for r in rows[:4]] == ["cylinders"] * 2 + ["displacement"] * 2
    left, right = by_feature(rows, "query 1"), by_feature(rows, "query 2")
    for column in ["cylinders", "displacement", "horsepower", "weight", "mpg"]:
        a, b = usa[column].dropna().to_numpy(float), other[column].dropna().to_numpy(float)
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        ha, hb = np_histogram(a, lo, hi), np_histogram(b, lo, hi)
        assert [h["count"] for h in left[column]["histogram"]] == ha
        assert [h["count"] for h in right[column]["histogram"]] == hb
        expected = jensenshannon(ha, hb, base=2)
        assert left[column]["distance"] == pytest.approx(expected, abs=1e-12)
        assert right[column]["distance"] == left[column]["distance"]
        assert left[column]["mean"] == pytest.approx(a.mean(), rel=1e-12)
        assert right[column]["mean"] == pytest.approx(b.mean(), rel=1e-12)
    # American cars are heavier with more cylinders: the distributions differ clearly.
    assert left["cylinders"]["distance"] > 0.3
    names = sorted(set(usa.car_name.dropna()) | set(other.car_name.dropna()))
    p = [int((usa.car_name == n).sum()) for n in names]
    q = [int((other.car_name == n).sum()) for n in names]
    assert left["car_name"]["distance"] == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    # A feature only the second table has still gets its row.
    rows = quiver(table(csv) + "SELECT feature, dataset, distance FROM feature_stats("
                  "(SELECT mpg FROM cars), (SELECT mpg, weight FROM cars))")
    assert [(r["feature"], r["dataset"]) for r in rows] == [
        ("mpg", "query 1"), ("mpg", "query 2"), ("weight", "query 2")]
    assert rows[0]["distance"] == 0.0 and "distance" not in rows[2]


def pillow_stats(folder):
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.png"))):
        pixels = np.asarray(Image.open(path))
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        rows.append({"label": os.path.basename(os.path.dirname(path)),
                     "width": pixels.shape[1], "height": pixels.shape[0],
                     "channels": channels, "brightness": pixels.mean()})
    return pd.DataFrame(rows)


def test_image_statistics_train_versus_test_match_pillow(samples):
    train, test = (os.path.join(samples, "fashion", s) for s in ("train", "test"))
    query = "(SELECT label, image_decode(content) AS image FROM read_images('{}'))"
    rows = quiver(f"SELECT * FROM feature_stats({query.format(train)}, {query.format(test)})")
    for dataset, folder in [("query 1", train), ("query 2", test)]:
        ours, ref = by_feature(rows, dataset), pillow_stats(folder)
        for stat in ["width", "height", "channels", "brightness"]:
            r, d = ours[f"image.{stat}"], ref[stat].describe()
            assert r["kind"] == "image" and r["count"] == len(ref) and r["missing"] == 0
            for key, theirs in [("mean", "mean"), ("min", "min"), ("median", "50%"),
                                ("max", "max")]:
                assert r[key] == pytest.approx(d[theirs], rel=1e-9), (stat, key)
            if d["std"] > 0:
                assert r["std"] == pytest.approx(d["std"], rel=1e-9)
        assert ours["image.width"]["min"] == ours["image.width"]["max"] == 28
        label = ours["label"]
        assert label["distinct"] == 10
        assert sorted((t["value"], t["count"]) for t in label["top_values"]) == sorted(
            ref.label.value_counts().items())
    a, b = pillow_stats(train).brightness, pillow_stats(test).brightness
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    expected = jensenshannon(np_histogram(a, lo, hi), np_histogram(b, lo, hi), base=2)
    brightness = by_feature(rows, "query 1")["image.brightness"]
    assert brightness["distance"] == pytest.approx(expected, abs=1e-9)
    # Train and test are drawn from the same distribution: the distance stays small.
    assert brightness["distance"] < 0.2
    assert by_feature(rows, "query 1")["label"]["distance"] == 0.0


def test_bad_arguments_name_the_problem(cars):
    csv, _ = cars
    proc = quiver("SELECT * FROM feature_stats('no_such_table')", check=False)
    assert proc.returncode != 0 and "'no_such_table'" in proc.stderr
    proc = quiver("SELECT * FROM feature_stats()", check=False)
    assert "expected 1 or 2 arguments" in proc.stderr
    proc = quiver(table(csv) + "SELECT * FROM feature_stats((SELECT nope FROM cars))",
                  check=False)
    assert proc.returncode != 0 and "nope" in proc.stderr
