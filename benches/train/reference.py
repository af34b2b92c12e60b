"""Keras on the CPU, the reference for Quiver's training throughput: the same architectures,
data, batch size and optimizer as benches/train/run.sh gives Quiver.

    python reference.py IMAGE_DIR --model dnn|cnn --epochs N --threads T [--test DIR]
        [--hidden 512,256,128] [--seeds 42] [--augment]

Reads the same PNG folder (split/label/*.png) with Pillow, scales to [0, 1], and trains with
model.fit (Adam, lr 0.001, batch 64, shuffled), once per seed; --augment puts Keras's
preprocessing layers in front (the augmentation benches/train/run.sh --augment gives Quiver). Prints a line of JSON per seed: the seconds taken to load the
training folder, images/s and seconds of each epoch, the accuracy of the last epoch on the training data and, with --test, the accuracy on that
folder after each epoch (evaluated outside the timed part).
"""
import argparse
import json
import os
import time

import numpy as np
from PIL import Image


def load(folder):
    """Images of split/label/*.png as floats in [0, 1] `[n, h, w, 1]`, labels, class count."""
    labels = sorted(os.listdir(folder))
    xs, ys = [], []
    for i, label in enumerate(labels):
        for name in sorted(os.listdir(os.path.join(folder, label))):
            xs.append(np.asarray(Image.open(os.path.join(folder, label, name)), dtype=np.float32) / 255.0)
            ys.append(i)
    return np.stack(xs)[..., None], np.array(ys), len(labels)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("--model", choices=["dnn", "cnn"], required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--test")
    ap.add_argument("--hidden", default="512,256,128", help="the DNN's hidden layer sizes")
    ap.add_argument("--seeds", default="42", help="a run per seed, e.g. 1,2,3")
    ap.add_argument("--augment", action="store_true",
                    help="horizontal flips, zoom in to half the area, 10 degree rotations, "
                         "brightness and contrast jitter 0.2")
    args = ap.parse_args()
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    started = time.perf_counter()
    x, y, classes = load(args.images)
    load_seconds = time.perf_counter() - started
    test = load(args.test) if args.test else None
    hidden = [int(u) for u in args.hidden.split(",")]
    for seed in (int(s) for s in args.seeds.split(",")):
        tf.keras.utils.set_random_seed(seed)
        print(json.dumps({"seed": seed, **fit(args, x, y, classes, test, hidden), "load_seconds": load_seconds}),
              flush=True)


def fit(args, x, y, classes, test, hidden):
    import tensorflow as tf
    layers = tf.keras.layers
    augment = [layers.RandomFlip("horizontal"), layers.RandomZoom((-0.3, 0.0)),
               layers.RandomRotation(10 / 360), layers.RandomBrightness(0.2, value_range=(0, 1)),
               layers.RandomContrast(0.2)] if args.augment else []
    if args.model == "dnn":
        model = tf.keras.Sequential([layers.Input(x.shape[1:])] + augment + [layers.Flatten()]
                                    + [l for u in hidden for l in (layers.Dense(u, "relu"), layers.Dropout(0.2))]
                                    + [layers.Dense(classes)])
    else:
        model = tf.keras.Sequential([layers.Input(x.shape[1:])] + augment
                                    + [l for f in (32, 64) for l in (layers.Conv2D(f, 3, padding="same", activation="relu"), layers.MaxPooling2D(2))]
                                    + [layers.Flatten(), layers.Dropout(0.2), layers.Dense(128, "relu"), layers.Dropout(0.2), layers.Dense(classes)])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.001),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class Timer(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.t)
            rates.append(len(x) / seconds[-1])
            if test:
                test_accuracy.append(float(self.model.evaluate(test[0], test[1], batch_size=256, verbose=0)[1]))

    rates, seconds, test_accuracy = [], [], []
    history = model.fit(x, y, batch_size=64, epochs=args.epochs, shuffle=True, verbose=0, callbacks=[Timer()])
    return {"images": len(x), "images_per_second": rates, "seconds": seconds,
            "accuracy": history.history["accuracy"][-1], "test_accuracy": test_accuracy}


if __name__ == "__main__":
    main()
