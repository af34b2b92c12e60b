"""Augmentation: `image_augment` in SQL against Pillow and NumPy on real photos, and training
with the `augment_*` options of CREATE MODEL."""
import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import QUIVER, quiver, run


def augmented(fixtures, options, seeds=(1,), name="cat_0.jpg"):
    """The photo `name` of the fixtures, decoded, and `image_augment` of it with each seed."""
    columns = ", ".join(
        f"encode(image_encode(image_augment(image_decode(content), '{json.dumps(options)}', "
        f"{seed}), 'png'), 'base64') AS s{seed}" for seed in seeds)
    rows = quiver(f"SELECT encode(image_encode(image_decode(content), 'png'), 'base64') AS "
                  f"original, {columns} FROM read_images('{fixtures}/photos/') "
                  f"WHERE path LIKE '%/{name}'")
    assert len(rows) == 1, rows
    # DataFusion's base64 leaves out the padding.
    png = lambda text: np.asarray(Image.open(io.BytesIO(base64.b64decode(text + "=" * (-len(text) % 4)))))
    return png(rows[0]["original"]), [png(rows[0][f"s{seed}"]) for seed in seeds]


@pytest.mark.parametrize("option, enhancer", [("augment_brightness", ImageEnhance.Brightness),
                                              ("augment_contrast", ImageEnhance.Contrast),
                                              ("augment_saturation", ImageEnhance.Color)])
@pytest.mark.parametrize("factor", [0.4, 1.7])
def test_colour_factors_match_pillow_s_image_enhance(fixtures, option, enhancer, factor):
    original, [ours] = augmented(fixtures, {option: [factor, factor]})
    theirs = np.asarray(enhancer(Image.fromarray(original)).enhance(factor))
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    # Pillow truncates where we round, and its luma differs from ITU-R 601-2 rounding by 1 for
    # one colour in 2,000.
    assert diff.max() <= 2 and diff.mean() < 0.6, (diff.max(), diff.mean())
    assert np.abs(ours.astype(int) - original.astype(int)).mean() > 5, "nothing changed"


def test_rotation_matches_pillow_s_bilinear_rotate(fixtures):
    original, [ours] = augmented(fixtures, {"augment_rotation": [15, 15]})
    theirs = np.asarray(Image.fromarray(original).rotate(15, resample=Image.BILINEAR))
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    # Pixels along the border differ in how much black they blend in.
    assert diff.mean() < 1.0 and (diff > 8).mean() < 0.01, (diff.mean(), (diff > 8).mean())
    assert (ours[0, 0] == 0).all() and (ours[-1, -1] == 0).all(), "the corners are black"


def test_flips_and_shifts_move_whole_pixels(fixtures):
    original, outs = augmented(fixtures, {"augment_flip": "horizontal"}, seeds=range(1, 9))
    mirrored = [np.array_equal(o, original[:, ::-1]) for o in outs]
    kept = [np.array_equal(o, original) for o in outs]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    original, [shifted] = augmented(fixtures, {"augment_translate": [0.25, 0.25]})
    h, w = original.shape[:2]
    dy, dx = round(0.25 * h), round(0.25 * w)
    expected = np.zeros_like(original)
    expected[dy:, dx:] = original[:h - dy, :w - dx]
    assert np.array_equal(shifted, expected)


def test_the_same_seed_gives_the_same_image(fixtures):
    options = {"augment_crop": [0.3, 1.0], "augment_flip": "both", "augment_rotation": 20,
               "augment_brightness": 0.3, "augment_contrast": 0.3, "augment_saturation": 0.3}
    original, [a, b] = augmented(fixtures, options, seeds=(5, 6))
    _, [again] = augmented(fixtures, options, seeds=(5,))
    assert np.array_equal(a, again)
    assert not np.array_equal(a, b)
    assert a.shape == original.shape


def test_bad_augment_options_name_the_option(fixtures, samples, tmp_path):
    proc = quiver(f"SELECT image_augment(image_decode(content), '{{\"augment_zoom\": 2}}', 1) "
                  f"FROM read_images('{fixtures}/photos/')", check=False)
    assert proc.returncode != 0
    assert ("image_augment failed on row 0 of a batch: unknown option 'augment_zoom' (known: "
            "augment_flip, augment_crop,") in proc.stderr, proc.stderr
    proc = quiver(f"SELECT image_augment(image_decode(content), 'flip', 1) "
                  f"FROM read_images('{fixtures}/photos/')", check=False)
    assert "the options are not JSON" in proc.stderr, proc.stderr
    faces = os.path.join(samples, "faces", "train")
    proc = quiver(f"CREATE MODEL m OPTIONS (model_type = 'cnn_classifier', augment_rotation = [30, 10]) AS SELECT "
                  f"image_decode(content) AS image, label FROM read_images('{faces}')", check=False)
    assert ("augment_rotation must be a number (x: [-x, x]) or [min, max] within [-180, 180] "
            "with min <= max, not [30, 10]") in proc.stderr, proc.stderr
    proc = quiver("CREATE MODEL m OPTIONS (model_type = 'dnn_classifier', augment_flip = 'horizontal') AS "
                  "SELECT * FROM (VALUES ([1.0, 2.0], 'a'), ([3.0, 4.0], 'b')) AS t(x, label)",
                  check=False)
    assert ("the augment_* options augment images, and input column 'x' is a tensor"
            in proc.stderr), proc.stderr


def test_a_model_trains_on_augmented_images_and_records_how(samples, tmp_path):
    """The faces (25 px, grey) with flips, small rotations and brightness jitter: the model
    still learns them, two runs with the same seed end with the same weights, and model.json
    records the augmentation."""
    from safetensors.numpy import load_file
    faces = os.path.join(samples, "faces")
    query = "SELECT image_decode(content) AS image, label FROM read_images('{}')"
    test = query.format(f"{faces}/test/").replace("'", "''")

    def train(store):
        proc = run([QUIVER, "--store", str(store), "sql", "--format", "json", f"""
            CREATE MODEL faces OPTIONS (model_type = 'cnn_classifier', epochs = 4, seed = 3,
              augment_flip = 'horizontal', augment_rotation = 10, augment_brightness = 0.2,
              validation_query = '{test}')
            AS {query.format(f"{faces}/train/")}"""], timeout=600)
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        return rows, load_file(str(store / "models" / "faces" / "1" / "model.safetensors"))

    rows, weights = train(tmp_path / "a")
    assert rows[-1]["val_accuracy"] >= 0.85, rows
    _, again = train(tmp_path / "b")
    assert weights.keys() == again.keys()
    assert all(np.array_equal(weights[k], again[k]) for k in weights)
    # The first 16 images of epoch 1 as the model saw them: a 4x4 grid of 25 px faces 2 px
    # apart, and the same images as TensorBoard image summaries.
    run_dir = tmp_path / "a" / "training" / "faces" / "v1"
    grid = np.asarray(Image.open(run_dir / "augmentations.png"))
    assert grid.shape == (4 * 27 - 2, 4 * 27 - 2), grid.shape
    import tensorflow as tf
    [events] = [f for f in os.listdir(run_dir) if f.endswith(".augmentations")]
    images = {v.tag: v.image for e in tf.compat.v1.train.summary_iterator(str(run_dir / events))
              for v in e.summary.value if v.HasField("image")}
    assert sorted(images) == sorted(f"augmentations/image/{i}" for i in range(16)), images.keys()
    for i in range(16):
        tile = grid[i // 4 * 27:i // 4 * 27 + 25, i % 4 * 27:i % 4 * 27 + 25]
        shown = tf.io.decode_png(images[f"augmentations/image/{i}"].encoded_image_string).numpy()
        assert np.array_equal(shown[:, :, 0], tile), i
    model = json.load(open(tmp_path / "a" / "models" / "faces" / "1" / "model.json"))
    assert model["training"]["augment"] == {
        "flip_horizontal": True, "flip_vertical": False, "crop": None, "rotation": [-10.0, 10.0],
        "translate": None, "brightness": [0.8, 1.2], "contrast": None, "saturation": None,
    }, model["training"]
