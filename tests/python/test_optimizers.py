"""Optimizers, learning-rate schedules, label smoothing and gradient clipping, checked against
Keras: the same DNN from the same weights, trained full-batch (one step per epoch, so the order
of the examples does not matter), ends with the same weights. Bad combinations are refused,
naming the option."""
import os

import numpy as np
import pytest
from PIL import Image

from test_models import run_sql, safetensors

EPOCHS = 6
# Keras adds epsilon to the root of the uncorrected second moment, PyTorch and Quiver to the
# corrected one: Keras's is ~30x larger in the first steps, which matters for small gradients.
# A tiny epsilon takes that difference out.
EPSILON = 1e-12
DNN = "model_type = 'dnn_classifier', hidden_units = [16], dropout = 0"


@pytest.fixture(scope="module")
def faces(samples, tmp_path_factory):
    """The faces training images as Quiver's DNN sees them, their labels, the SQL that reads
    them, and a store holding start weights drawn by Quiver (an untrained model, `start`)."""
    folder = os.path.join(samples, "faces", "train")
    labels = sorted(os.listdir(folder))
    x, y = [], []
    for index, label in enumerate(labels):
        for name in sorted(os.listdir(os.path.join(folder, label))):
            pixels = np.asarray(Image.open(os.path.join(folder, label, name)).convert("L"))
            x.append(pixels.reshape(-1))
            y.append(index)
    # Quiver scales pixels by the f32 nearest 1/255.
    x = np.stack(x).astype(np.float32) * np.float32(1 / 255)
    store = tmp_path_factory.mktemp("optimizers")
    data = f"SELECT image_decode(content) AS image, label FROM read_images('{folder}/')"
    run_sql(store, f"CREATE MODEL start OPTIONS ({DNN}, epochs = 0, seed = 3) AS {data}")
    return x, np.array(y), data, store


def keras_trained(x, y, start, optimizer, smoothing=0.0, l2=0.0):
    """Keras's DNN from the weights `start`, after EPOCHS full-batch steps."""
    import tensorflow as tf
    keras = tf.keras
    regularizer = keras.regularizers.L2(l2) if l2 else None
    model = keras.Sequential([
        keras.layers.Input((x.shape[1],)),
        keras.layers.Dense(16, activation="relu", kernel_regularizer=regularizer,
                           bias_regularizer=regularizer),
        keras.layers.Dense(2, kernel_regularizer=regularizer, bias_regularizer=regularizer),
    ])
    model.set_weights([start["dense.0.weight"], start["dense.0.bias"],
                       start["output.weight"], start["output.bias"]])
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=smoothing))
    model.fit(x, keras.utils.to_categorical(y, 2), batch_size=len(x), epochs=EPOCHS,
              shuffle=False, verbose=0)
    k1, b1, k2, b2 = model.get_weights()
    return {"dense.0.weight": k1, "dense.0.bias": b1, "output.weight": k2, "output.bias": b2}


def quiver_trained(store, data, name, options):
    """Quiver's DNN from the weights of `start`, after EPOCHS full-batch steps."""
    start = store / "models" / "start" / "1" / "model.safetensors"
    run_sql(store, f"""CREATE MODEL {name} OPTIONS ({DNN}, epochs = {EPOCHS},
        batch_size = 1000, weights = '{start}', {options}) AS {data}""")
    return safetensors(store / "models" / name / "1" / "model.safetensors")


@pytest.mark.parametrize("case", ["adamw_cosine_warmup_smoothing_clip", "sgd_nesterov_l2",
                                  "adam_step_smoothing"])
def test_training_steps_match_keras(faces, case):
    import tensorflow as tf
    keras = tf.keras
    x, y, data, store = faces
    lr = 0.01
    if case == "adamw_cosine_warmup_smoothing_clip":
        options = ("optimizer = 'adamw', weight_decay = 0.05, lr_schedule = 'cosine', "
                   "warmup_epochs = 2, label_smoothing = 0.1, gradient_clip_norm = 0.05, "
                   f"adam_epsilon = {EPSILON}")
        # Keras's cosine decay with warm-up: 0 at step 0, the peak after 2 steps, then half a
        # cosine over the 4 steps left.
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=EPOCHS - 2, warmup_target=lr, warmup_steps=2)
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.05, epsilon=EPSILON,
                                           global_clipnorm=0.05)
        expected = dict(smoothing=0.1)
    elif case == "sgd_nesterov_l2":
        # PyTorch's SGD adds weight_decay * w to the gradients: Keras's L2(weight_decay / 2).
        options = "optimizer = 'sgd', momentum = 0.9, nesterov = true, weight_decay = 0.02"
        optimizer = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
        expected = dict(l2=0.01)
    else:
        # One step per epoch: 'step' decays after steps 1 and 3 (Keras's boundaries are
        # inclusive).
        options = ("optimizer = 'adam', lr_schedule = 'step', lr_step_epochs = 2, "
                   f"lr_gamma = 0.3, label_smoothing = 0.2, adam_epsilon = {EPSILON}")
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            [1, 3], [lr, lr * 0.3, lr * 0.09])
        optimizer = keras.optimizers.Adam(schedule, epsilon=EPSILON)
        expected = dict(smoothing=0.2)
    start = safetensors(store / "models" / "start" / "1" / "model.safetensors")
    ours = quiver_trained(store, data, case, f"learning_rate = {lr}, {options}")
    theirs = keras_trained(x, y, start, optimizer, **expected)
    for name in start:
        moved = np.abs(theirs[name] - start[name]).max()
        assert moved > 1e-4, f"{case}: Keras left {name} (almost) where it started"
        # Within 2e-5 (0.2% of a step at this rate): in Keras, leaving out any one option of
        # the first case moves some tensor by 1.7e-4 (weight_decay) to 0.047 (smoothing).
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=2e-5,
                                   err_msg=f"{case}: {name}")
    worst = max(np.abs(ours[n] - theirs[n]).max() for n in start)
    print(f"{case}: weights within {worst:.1e} of Keras's after {EPOCHS} steps "
          f"(largest move {max(np.abs(theirs[n] - start[n]).max() for n in start):.4f})")


def test_bad_optimizer_options_are_refused(faces):
    _, _, data, store = faces
    for options, message in [
        ("nesterov = true", "nesterov = true needs optimizer = 'sgd' with momentum > 0"),
        ("lr_schedule = 'step'", "lr_schedule = 'step' needs lr_step_epochs"),
        ("lr_step_epochs = 2", "lr_step_epochs applies to lr_schedule = 'step', not 'constant'"),
        ("warmup_epochs = 6", "warmup_epochs = 6 must end before the last epoch (epochs = 6)"),
        ("lr_schedule = 'linear'", "lr_schedule"),
        ("label_smoothing = 1", "label_smoothing must be in [0, 1), not 1"),
        ("gradient_clip_norm = 0", "gradient_clip_norm must be positive, not 0"),
        ("weight_decay = -1", "weight_decay must be at least 0, not -1"),
    ]:
        _, proc = run_sql(store, f"CREATE MODEL bad OPTIONS ({DNN}, epochs = {EPOCHS}, "
                                 f"{options}) AS {data}", check=False)
        assert proc.returncode != 0 and message in proc.stderr, (options, proc.stderr)
