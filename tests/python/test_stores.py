"""The whole ETL against a real S3-compatible server (SeaweedFS), memory:// and file://."""
import glob
import os

import numpy as np
import tensorflow as tf

from conftest import quiver


def etl_sql(src, dst, opts="image_format 'png'"):
    return (f"COPY (SELECT path, label, image_resize(image_center_crop(image_decode(content)), 32, 32) AS image "
            f"FROM read_images('{src}')) TO '{dst}' STORED AS TFRECORD OPTIONS ({opts})")


def upload_folder(s3, local, prefix):
    names = []
    for path in glob.glob(os.path.join(local, "**", "*"), recursive=True):
        if os.path.isfile(path):
            key = prefix + os.path.relpath(path, local)
            s3["client"].upload_file(path, s3["bucket"], key)
            names.append(key)
    return names


def test_etl_on_s3_matches_file(samples, tmp_path, s3):
    local = os.path.join(samples, "photos", "test")
    keys = upload_folder(s3, local, "photos/test/")
    b = s3["bucket"]
    rows = quiver(etl_sql(f"s3://{b}/photos/test/", f"s3://{b}/tfrecords/test/", "compression 'gzip'"), env=s3["env"])
    assert rows == [{"count": len(keys)}]
    listed = s3["client"].list_objects_v2(Bucket=b, Prefix="tfrecords/test/")["Contents"]
    shards = sorted(o["Key"] for o in listed)
    assert shards and all(k.endswith(".tfrecord.gz") for k in shards), shards
    assert not any("_temporary" in k for k in shards), "staging objects left behind"
    examples = []
    for key in shards:
        path = tmp_path / os.path.basename(key)
        s3["client"].download_file(b, key, str(path))
        examples += [tf.train.Example.FromString(r.numpy())
                     for r in tf.data.TFRecordDataset([str(path)], compression_type="GZIP")]
    assert len(examples) == len(keys)

    # The same ETL on file:// gives the same images, label for label.
    out = tmp_path / "file_out"
    quiver(etl_sql(f"{local}/", f"file://{out}/"))
    local_examples = [tf.train.Example.FromString(r.numpy())
                      for r in tf.data.TFRecordDataset(sorted(glob.glob(str(out / "part-*"))))]

    def by_rel(exs, marker):
        result = {}
        for e in exs:
            path = e.features.feature["path"].bytes_list.value[0].decode()
            image = tf.io.decode_png(e.features.feature["image"].bytes_list.value[0]).numpy()
            result[path.split(marker, 1)[1]] = (e.features.feature["label"].bytes_list.value[0], image)
        return result

    s3_rows, file_rows = by_rel(examples, "photos/test/"), by_rel(local_examples, "photos/test/")
    assert s3_rows.keys() == file_rows.keys()
    for rel in s3_rows:
        assert s3_rows[rel][0] == file_rows[rel][0]
        np.testing.assert_array_equal(s3_rows[rel][1], file_rows[rel][1])

    # Read back from S3 with SQL.
    rows = quiver(f"CREATE EXTERNAL TABLE t STORED AS TFRECORD LOCATION 's3://{b}/tfrecords/test/'; "
                  "SELECT count(*) AS n FROM t", env=s3["env"])
    assert rows == [{"n": len(keys)}]


def test_memory_store_round_trip(samples):
    src = os.path.join(samples, "photos", "test")
    n = len([p for p in glob.glob(os.path.join(src, "*", "*"))])
    rows = quiver(etl_sql(f"{src}/", "memory://scratch/out/") + "; "
                  "CREATE EXTERNAL TABLE t STORED AS TFRECORD LOCATION 'memory://scratch/out/'; "
                  "SELECT count(*) AS n, count(DISTINCT label) AS labels FROM t")
    # The COPY's row count, then the query's row.
    assert rows == [{"count": n}, {"n": n, "labels": 8}]


def test_missing_bucket_is_a_clear_error(s3):
    proc = quiver("SELECT count(*) FROM read_images('s3://no-such-bucket-here/photos/')", env=s3["env"], check=False)
    assert proc.returncode != 0
    assert "no-such-bucket-here" in proc.stderr and "cannot list" in proc.stderr, proc.stderr


def test_unreachable_store_fails_fast_with_its_address():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    proc = quiver("SELECT count(*) FROM read_images('s3://bucket/photos/')", env=env, check=False)
    assert proc.returncode != 0
    assert "s3://bucket/photos/" in proc.stderr, proc.stderr
