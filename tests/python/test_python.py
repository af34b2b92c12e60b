"""The Python package `quiver` (python/, built by cargo; scripts/env.sh puts it on PYTHONPATH):
SQL and DataFrames in the test process itself, their rows compared cell by cell with what the
CLI gives for the same statements, through pyarrow, pandas, Polars and the Arrow C stream
interface; errors as Python exceptions naming what is wrong; Ctrl-C cancelling a query."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import quiver
from conftest import QUIVER, fashion_query, json_rows, run, spawn, stop_group


def cli_rows(store, statement):
    """What `quiver sql --format json` prints for `statement`, as dicts."""
    proc = run([QUIVER, "--store", str(store), "sql", "--format", "json", statement], timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json_rows(proc.stdout)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return quiver.Session(store=str(tmp_path_factory.mktemp("python")), batch_size=64)


def photos_query(samples):
    folder = os.path.join(samples, "photos", "train")
    return (f"SELECT path, label, image_width(content) AS width, image_height(content) AS height "
            f"FROM read_images('{folder}/') ORDER BY path")


def test_sql_results_equal_the_cli_s_through_arrow_pandas_and_polars(session, samples):
    query = photos_query(samples)
    want = cli_rows(session.store.removeprefix("file://"), query)
    assert len(want) > 100
    df = session.sql(query)
    assert df.columns == ["path", "label", "width", "height"]
    table = df.to_arrow()
    assert isinstance(table, pa.Table) and table.schema == df.schema
    assert table.to_pylist() == want
    assert df.to_pandas().to_dict("records") == want
    assert df.to_polars().to_dicts() == want
    # Readers of the Arrow C stream interface take the DataFrame itself.
    assert pa.table(df).to_pylist() == want
    assert pl.DataFrame(df).to_dicts() == want
    assert pa.RecordBatchReader.from_stream(df).read_all().to_pylist() == want
    assert df.count() == len(want)


def test_iteration_streams_batches_and_transformations_are_sql_expressions(session, samples):
    df = session.sql(photos_query(samples))
    batches = list(df)
    # batch_size = 64: the rows come in several batches, as the engine makes them.
    assert len(batches) > 1 and all(isinstance(b, pa.RecordBatch) for b in batches)
    assert pa.Table.from_batches(batches).to_pylist() == df.to_arrow().to_pylist()
    wide = (df.filter("width > height").select("label", "width - height AS extra")
            .limit(5).to_pandas())
    want = pd.DataFrame([(r["label"], r["width"] - r["height"]) for r in df.to_arrow().to_pylist()
                         if r["width"] > r["height"]][:5], columns=["label", "extra"])
    pd.testing.assert_frame_equal(wide, want, check_dtype=False)
    shown = repr(df.select("label").limit(3))
    assert "| label" in shown and "3 rows" in shown


def test_statements_of_every_kind_run_from_python(session, samples, tmp_path):
    train = fashion_query(samples, "train")
    out = tmp_path / "shards"
    session.sql(f"""
        CREATE VIEW fashion AS {train};
        COPY (SELECT image, label FROM fashion) TO '{out}/' STORED AS TFRECORD;
        CREATE MODEL shoes OPTIONS (model_type = 'dnn_classifier', hidden_units = [16],
            epochs = 1, seed = 3) AS SELECT image, label FROM fashion""").collect()
    assert any(".tfrecord" in name for name in os.listdir(out)), os.listdir(out)
    models = session.sql("SELECT name, version, epochs FROM models()").to_arrow().to_pylist()
    assert models == [{"name": "shoes", "version": 1, "epochs": 1}]
    # The CLI on the same store sees the same registry.
    assert cli_rows(session.store.removeprefix("file://"),
                    "SELECT name, version, epochs FROM models()") == models


def test_images_are_read_sampled_and_reproducibly(session, samples):
    folder = os.path.join(samples, "photos", "train")
    every = session.read_images(folder + "/")
    assert every.columns[:3] == ["path", "label", "content"]
    # The same sample each time (the partitions' batches may arrive in any order).
    some, again = (sorted(session.read_images(folder + "/", sample=0.25, seed=1).select("path")
                          .to_arrow().column("path").to_pylist()) for _ in range(2))
    assert some == again and 0 < len(some) < every.count()


def test_errors_are_exceptions_naming_what_is_wrong(session, tmp_path):
    with pytest.raises(quiver.SqlError, match="table 'datafusion.public.nope' not found"):
        session.sql("SELECT * FROM nope")
    with pytest.raises(quiver.SqlError, match="image_resize"):
        session.sql("SELECT image_resize(1, 2) AS x").to_arrow()
    with pytest.raises(quiver.QuiverError, match="no statement"):
        session.sql("  ")
    with pytest.raises(quiver.SqlError, match="nope"):
        session.sql("SELECT 1 AS one").filter("nope > 1")
    missing = tmp_path / "missing"
    with pytest.raises(quiver.QuiverError, match=str(missing)):
        session.sql(f"SELECT * FROM read_images('{missing}/')").to_arrow()
    assert issubclass(quiver.SqlError, quiver.QuiverError)
    assert issubclass(quiver.QuiverError, Exception)


def test_ctrl_c_cancels_a_running_query(samples, tmp_path):
    """A slow query in another Python process: SIGINT raises KeyboardInterrupt within seconds,
    and the process ends."""
    folder = os.path.join(samples, "photos", "train")
    one = f"SELECT image_resize(image_decode(content), 1200, 1200) AS im FROM read_images('{folder}/')"
    script = textwrap.dedent(f"""
        import sys, quiver
        session = quiver.Session(store={str(tmp_path)!r}, target_partitions=1)
        print("running", flush=True)
        try:
            session.sql("SELECT sum(image_width(im)) FROM ({' UNION ALL '.join([one] * 200)})").to_arrow()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        print("finished", flush=True)
    """)
    proc = spawn([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3 and "interrupted" in out, (out, err)
    finally:
        stop_group(proc)
