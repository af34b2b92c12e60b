"""COPY ... STORED AS TFRECORD that fails leaves its destination exactly as it was: a bad image
among good ones, 20 times in a row on a local folder and on a real S3 server (SeaweedFS); an
injected store failure after a shard is staged, 5 times on a local folder; a cancelled (Ctrl-C)
statement, 3 times; a destination store that cannot be reached. (The same on a memory:// store
is a unit test in sql/src/write.rs.) A failed COPY removes only its own staging folder, never
that of another COPY to the same destination that is still running. A COPY killed with SIGKILL
leaves only its staging folder, which readers skip and a later commit removes once it is stale. Errors name the file behind
undecodable bytes whatever the query's shape, skipped images are listed, and broken TFRecord
files are named with the byte offset of the damage."""
import os
import shutil
import signal
import time

import pytest
import tensorflow as tf

from conftest import QUIVER, fault_env, finish, json_rows, listing, run, spawn_logged, wait_for

RUNS = 20


@pytest.fixture(scope="module")
def images(samples, fixtures, tmp_path_factory):
    """200 real Fashion-MNIST PNGs in 10 class folders, and a truncated JPEG in the middle."""
    root = tmp_path_factory.mktemp("images")
    train = os.path.join(samples, "fashion", "train")
    for label in sorted(os.listdir(train))[:10]:
        os.makedirs(root / label)
        for name in sorted(os.listdir(os.path.join(train, label)))[:20]:
            shutil.copy(os.path.join(train, label, name), root / label / name)
    middle = sorted(os.listdir(root))[5]
    bad = root / middle / "m_truncated.jpg"
    shutil.copy(os.path.join(fixtures, "bad", "broken", "truncated.jpg"), bad)
    return {"root": str(root), "bad": str(bad)}


def copy_sql(src, out, decode="image_decode(content)"):
    return (f"COPY (SELECT label, {decode} AS image FROM read_images('{src}/')) "
            f"TO '{out}' STORED AS TFRECORD")


def quiver_file(store, sql, env=None, partitions=4):
    return run([QUIVER, "--store", str(store), "--partitions", str(partitions), "sql",
                "--format", "json", sql], env=env)


def test_failed_copies_leave_a_local_destination_as_it_was(images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("not ours")
    before = listing(out)
    for i in range(RUNS):
        proc = quiver_file(tmp_path, copy_sql(images["root"], f"{out}/"))
        assert proc.returncode != 0, proc.stdout
        assert f"'file://{images['bad']}'" in proc.stderr, proc.stderr
        assert listing(out) == before, (i, listing(out))
    # A store that fails after a shard is staged (an injected failure): the same.
    for i in range(5):
        proc = quiver_file(tmp_path, copy_sql(images["root"], f"{out}/", "image_decode(content, 'null')"),
                           env=fault_env("tfrecord_write@*/00002=error"))
        assert proc.returncode != 0 and "fault injected at tfrecord_write" in proc.stderr, proc.stderr
        assert listing(out) == before, (i, listing(out))


def test_failed_copies_leave_an_s3_destination_as_it_was(images, s3):
    env = {**os.environ, **s3["env"]}
    client, bucket = s3["client"], s3["bucket"]
    client.put_object(Bucket=bucket, Key="copyfail/out/notes.txt", Body=b"not ours")

    def keys():
        got = client.list_objects_v2(Bucket=bucket, Prefix="copyfail/").get("Contents", [])
        return sorted(o["Key"] for o in got)
    before = keys()
    out = f"s3://{bucket}/copyfail/out/"
    for i in range(RUNS):
        proc = run([QUIVER, "--store", f"s3://{bucket}/copyfail-store/", "--partitions", "4",
                    "sql", copy_sql(images["root"], out)], env=env)
        assert proc.returncode != 0 and f"'file://{images['bad']}'" in proc.stderr, proc.stderr
        assert keys() == before, (i, keys())
    # The same COPY without the bad image writes its shards there, and TensorFlow reads them.
    os.rename(images["bad"], images["bad"] + ".aside")
    try:
        proc = run([QUIVER, "--store", f"s3://{bucket}/copyfail-store/", "--partitions", "4",
                    "sql", "--format", "json", copy_sql(images["root"], out)], env=env)
        assert proc.returncode == 0, proc.stderr
        assert json_rows(proc.stdout) == [{"count": 200}]
        shards = [k for k in keys() if "/part-" in k]
        assert len(shards) == 4 and len(keys()) == len(before) + 4, keys()
    finally:
        os.rename(images["bad"] + ".aside", images["bad"])


def test_a_copy_to_an_unreachable_store_fails_fast_and_leaves_nothing(images, tmp_path):
    """Nothing listens at the S3 endpoint: the statement fails within the store's retry limit
    (20 s) with the destination in its error, and the local store it ran in is left empty."""
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y"}
    store = tmp_path / "store"
    store.mkdir()
    proc = run([QUIVER, "--store", str(store), "--partitions", "4", "sql",
                copy_sql(images["root"], "s3://bucket/out/", "image_decode(content, 'null')")],
               env=env, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "s3://bucket/out/" in proc.stderr and "127.0.0.1:9" in proc.stderr, proc.stderr
    assert listing(store) == [], listing(store)


def test_a_cancelled_copy_leaves_the_destination_as_it_was(images, tmp_path):
    """Ctrl-C while partition 1's shard is staged (a fault point holds it there): the
    statement fails as cancelled and everything it staged is removed."""
    out = tmp_path / "out"
    good = tmp_path / "good"
    shutil.copytree(images["root"], good)
    os.remove(good / os.path.relpath(images["bad"], images["root"]))
    for i in range(3):
        paused = tmp_path / f"paused-{i}"
        proc = spawn_logged([QUIVER, "--store", str(tmp_path), "--partitions", "4", "sql",
                             copy_sql(good, f"{out}/")], tmp_path, f"copy-{i}",
                            env=fault_env(f"tfrecord_write@*/00001=pause:{paused}"))
        wait_for(paused.exists, "partition 1's shard to be staged", proc=proc)
        assert any("_temporary" in f for f in listing(out)), listing(out)
        proc.send_signal(signal.SIGINT)
        _, err = finish(proc, timeout=120)
        assert proc.returncode != 0 and "cancelled" in err, err
        assert listing(out) == [], listing(out)


def test_a_failed_copy_leaves_another_running_copy_to_the_destination_alone(images, tmp_path):
    """Two COPYs to one destination: the first is held with a shard staged (a fault point) while
    the second, with the bad image, fails and aborts. The abort removes only its own staging
    folder; the first write then commits all 200 rows, and TensorFlow reads them."""
    good = tmp_path / "good"
    shutil.copytree(images["root"], good)
    os.remove(good / os.path.relpath(images["bad"], images["root"]))
    out = tmp_path / "out"
    paused = tmp_path / "paused"
    first = spawn_logged([QUIVER, "--store", str(tmp_path), "--partitions", "4", "sql", "--format",
                          "json", copy_sql(good, f"{out}/")], tmp_path, "first",
                         env=fault_env(f"tfrecord_write@*/00001=pause:{paused}"))
    wait_for(paused.exists, "the first write's partition 1 to be staged", proc=first)
    held = listing(out)
    assert held and all(f.startswith("_temporary/") for f in held), held
    second = quiver_file(tmp_path, copy_sql(images["root"], f"{out}/"))
    assert second.returncode != 0 and f"'file://{images['bad']}'" in second.stderr, second.stderr
    # The first write's staged shards are all still there (its other writers may add more, and
    # a writer that finishes its shard removes its `.alive` heartbeat, so those are not compared).
    staged = {f for f in held if f.endswith(".tfrecord")}
    assert staged and staged <= set(listing(out)), (held, listing(out))
    os.remove(paused)
    outs, err = finish(first, timeout=120)
    assert first.returncode == 0, err
    assert json_rows(outs) == [{"count": 200}]
    shards = listing(out)
    assert len(shards) == 4 and all(f.startswith("part-") for f in shards), shards
    assert sum(1 for _ in tf.data.TFRecordDataset([str(out / f) for f in shards])) == 200


def test_a_killed_copy_leaves_only_its_staging_folder(images, tmp_path):
    """SIGKILL (a fault point) once partition 0's shard is staged: only `_temporary/` is left,
    and readers do not see it. A commit to the destination leaves such a folder while it is
    fresh (it may be a write that still runs elsewhere) and removes it once nothing in it
    changed for 10 minutes (its writers would have refreshed their heartbeats)."""
    good = tmp_path / "good"
    shutil.copytree(images["root"], good)
    os.remove(good / os.path.relpath(images["bad"], images["root"]))
    out = tmp_path / "out"
    proc = quiver_file(tmp_path, copy_sql(good, f"{out}/"),
                       env=fault_env("tfrecord_write@*/00000=kill"))
    assert proc.returncode == -9, proc.stderr
    left = listing(out)
    assert left and all(f.startswith("_temporary/") for f in left), left
    staged = tmp_path / "staged"
    shutil.copytree(out / "_temporary", staged)
    [killed] = os.listdir(staged)
    # The same staged folder twice more: once as it is, once as if written 11 minutes ago.
    shutil.copytree(staged / killed, out / "_temporary" / f"{killed}0")
    stale = f"{killed}1"
    shutil.copytree(staged / killed, out / "_temporary" / stale)
    long_ago = time.time() - 660
    for f in listing(out / "_temporary" / stale):
        os.utime(out / "_temporary" / stale / f, (long_ago, long_ago))
    fresh = [f for f in listing(out) if stale not in f]
    proc = quiver_file(tmp_path, copy_sql(good, f"{out}/"))
    assert proc.returncode == 0, proc.stderr
    assert json_rows(proc.stdout) == [{"count": 200}]
    shards = [f for f in listing(out) if f.startswith("part-")]
    assert len(shards) == 4 and sorted(set(listing(out)) - set(shards)) == fresh, listing(out)
    shutil.rmtree(out / "_temporary")
    # Put the killed write's staged shards back: readers skip them.
    shutil.copytree(staged, out / "_temporary")
    rows = json_rows(quiver_file(tmp_path, f"CREATE EXTERNAL TABLE t STORED AS TFRECORD "
                                           f"LOCATION '{out}/'; SELECT count(*) AS n FROM t").stdout)
    assert rows == [{"n": 200}], rows
    shards = sorted(str(out / f) for f in listing(out) if f.startswith("part-"))
    assert sum(1 for _ in tf.data.TFRecordDataset(shards)) == 200
    # read_images skips staged files too, and so do Parquet tables.
    photos = tmp_path / "photos"
    shutil.copytree(os.path.join(images["root"], sorted(os.listdir(images["root"]))[0]),
                    photos / "a")
    shutil.copytree(photos / "a", photos / "_temporary" / "123-4-5" / "a")
    rows = json_rows(quiver_file(tmp_path, f"SELECT count(*) AS n FROM read_images('{photos}/')").stdout)
    assert rows == [{"n": 20}], rows
    parquet = tmp_path / "parquet"
    proc = quiver_file(tmp_path, f"COPY (SELECT label FROM read_images('{photos}/')) "
                                 f"TO '{parquet}/' STORED AS PARQUET")
    assert proc.returncode == 0, proc.stderr
    shard = sorted(f for f in os.listdir(parquet) if f.endswith(".parquet"))[0]
    os.makedirs(parquet / "_temporary" / "1-2-3")
    shutil.copy(parquet / shard, parquet / "_temporary" / "1-2-3" / shard)
    rows = json_rows(quiver_file(tmp_path, f"CREATE EXTERNAL TABLE p STORED AS PARQUET "
                                           f"LOCATION '{parquet}/'; SELECT count(*) AS n FROM p").stdout)
    assert rows == [{"n": 20}], rows


@pytest.mark.parametrize("shape, sql", [
    ("projection", "SELECT label, image_decode(content) FROM read_images('{src}/')"),
    ("filter", "SELECT label FROM read_images('{src}/') WHERE image_width(image_decode(content)) > 0"),
    ("fused resize", "SELECT image_resize(image_center_crop(image_decode(content)), 8, 8) "
                     "FROM read_images('{src}/')"),
    ("aggregate", "SELECT count(image_decode(content)) FROM read_images('{src}/')"),
    ("join", "SELECT i.label, image_decode(i.content) FROM read_images('{src}/') i "
             "JOIN (SELECT DISTINCT label FROM read_images('{src}/')) l ON i.label = l.label"),
    ("subquery without path", "WITH imgs AS (SELECT label, content FROM read_images('{src}/')) "
                              "SELECT label, image_decode(content) AS im FROM imgs WHERE label <> ''"),
    ("union", "SELECT image_decode(content) FROM (SELECT content FROM read_images('{src}/') "
              "WHERE label < 'm' UNION ALL SELECT content FROM read_images('{src}/') "
              "WHERE label >= 'm')"),
    ("grouped by the bytes", "SELECT count(image_decode(content)) FROM "
                             "(SELECT content FROM read_images('{src}/') GROUP BY content)"),
    ("copy", "COPY (SELECT label, image_decode(content) AS image FROM read_images('{src}/')) "
             "TO '{out}/' STORED AS TFRECORD"),
])
def test_decode_errors_name_the_file(images, tmp_path, shape, sql):
    proc = quiver_file(tmp_path, sql.format(src=images["root"], out=tmp_path / "out"))
    assert proc.returncode != 0, shape
    assert f"image_decode failed on 'file://{images['bad']}'" in proc.stderr \
        or f"image_decode_resize failed on 'file://{images['bad']}'" in proc.stderr, (shape, proc.stderr)
    assert "cannot decode image (4449 bytes" in proc.stderr, proc.stderr


def test_skipped_images_are_listed_with_their_files(images, tmp_path):
    out = tmp_path / "out"
    proc = quiver_file(tmp_path, copy_sql(images["root"], f"{out}/", "image_decode(content, 'null')"))
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 undecodable images" in proc.stderr, proc.stderr
    assert f"skipped file://{images['bad']}: cannot decode image (4449 bytes" in proc.stderr, proc.stderr


def test_broken_tfrecords_name_the_file_and_offset(images, tmp_path):
    good = tmp_path / "good"
    shutil.copytree(images["root"], good)
    os.remove(good / os.path.relpath(images["bad"], images["root"]))
    out = tmp_path / "out"
    proc = quiver_file(tmp_path, copy_sql(good, f"{out}/"), partitions=1)
    assert proc.returncode == 0, proc.stderr
    [shard] = [out / f for f in listing(out)]
    data = bytearray(shard.read_bytes())
    first = int.from_bytes(data[0:8], "little")
    second = 16 + first
    for damage, what in [("truncate", "truncated record"), ("flip", "data CRC mismatch")]:
        broken = tmp_path / damage / "data.tfrecord"
        os.makedirs(broken.parent)
        if damage == "truncate":
            broken.write_bytes(bytes(data[:second + 100]))
        else:
            flipped = bytearray(data)
            flipped[second + 20] ^= 0x10
            broken.write_bytes(bytes(flipped))
        with pytest.raises(tf.errors.DataLossError):
            list(tf.data.TFRecordDataset([str(broken)]))
        proc = quiver_file(tmp_path, f"CREATE EXTERNAL TABLE t STORED AS TFRECORD "
                                     f"LOCATION '{broken.parent}/'; SELECT count(*) FROM t")
        err = proc.stderr
        assert proc.returncode != 0, damage
        assert f"TFRecord file '{broken}'" in err and f"byte offset {second}" in err and what in err, err
        assert "configuration error" not in err, err
