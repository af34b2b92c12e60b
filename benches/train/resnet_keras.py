"""Keras's side of benches/train/resnet.sh: torchvision's ResNet-18 built in Keras (no conv
biases, batch norm with epsilon 1e-5 and torch's momentum, explicit zero padding as torch pads),
timed on random images like Quiver's train_step example: training steps (Adam 1e-3, softmax
cross-entropy) and inference batches, after warm-up. Prints one JSON line."""
import argparse
import json
import os
import time


def resnet18(side, channels, classes):
    from tensorflow import keras
    from tensorflow.keras import layers

    def norm(x):
        return layers.BatchNormalization(epsilon=1e-5, momentum=0.9)(x)

    def conv(x, filters, k, stride):
        if k > 1:
            x = layers.ZeroPadding2D(k // 2)(x)
        return layers.Conv2D(filters, k, stride, use_bias=False)(x)

    inputs = keras.Input((side, side, channels))
    x = layers.ReLU()(norm(conv(inputs, 64, 7, 2)))
    x = layers.MaxPooling2D(3, 2)(layers.ZeroPadding2D(1)(x))
    width_in = 64
    for stage, width in enumerate([64, 128, 256, 512]):
        for i in range(2):
            stride = 2 if stage > 0 and i == 0 else 1
            y = layers.ReLU()(norm(conv(x, width, 3, stride)))
            y = norm(conv(y, width, 3, 1))
            shortcut = x
            if stride != 1 or width_in != width:
                shortcut = norm(conv(x, width, 1, stride))
            x = layers.ReLU()(layers.Add()([y, shortcut]))
            width_in = width
    outputs = layers.Dense(classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    model = resnet18(a.side, a.channels, 10)
    model.compile(tf.keras.optimizers.Adam(1e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(7)
    x = rng.random((a.batch, a.side, a.side, a.channels), dtype=np.float32)
    y = rng.integers(0, 10, a.batch)
    warmup = 3
    for _ in range(warmup):
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(a.steps):
        model.train_on_batch(x, y)
    train = a.steps * a.batch / (time.perf_counter() - started)
    infer = tf.function(lambda t: model(t, training=False))
    for _ in range(warmup):
        infer(x).numpy()
    started = time.perf_counter()
    for _ in range(a.steps):
        infer(x).numpy()
    inference = a.steps * a.batch / (time.perf_counter() - started)
    print(json.dumps({"train_images_per_second": train,
                      "inference_images_per_second": inference}))


if __name__ == "__main__":
    main()
