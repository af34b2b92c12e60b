"""Assemble Quiver's sample image folders from real photos and real images shipped offline.

    python sample_data.py OUT_DIR [--photos-per-label N] [--fashion-per-class N]

Creates, under OUT_DIR:
  photos/{train,test}/<subject>/*.jpg   crops of scikit-image's real colour photographs
                                         (astronaut, cat, coffee, rocket, motorcycle, ...)
  fashion/{train,test}/<class>/*.png    Fashion-MNIST images (Debian's dataset-fashion-mnist)
  faces/{train,test}/{face,non_face}/*.png  scikit-image's lfw_subset (100 real faces, 100
                                         non-faces, 25x25 grey), a two-class photo set

The layout is the hot-dog layout (split/label/file); no hot-dog photos can be downloaded
here, so the labels are the photos' subjects. Deterministic for a given seed; idempotent.
"""
import argparse
import gzip
import os
import sys

import numpy as np
from PIL import Image

FASHION_DIR = os.environ.get("QUIVER_FASHION_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t_shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
PHOTOS = {  # subject -> scikit-image data files (real photographs)
    "astronaut": ["astronaut.png"],
    "cat": ["chelsea.png"],
    "coffee": ["coffee.png"],
    "rocket": ["rocket.jpg"],
    "motorcycle": ["motorcycle_left.png", "motorcycle_right.png"],
    "retina": ["retina.jpg"],
    "hubble": ["hubble_deep_field.jpg"],
    "cells": ["ihc.png"],
}


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def photos(out, per_label, rng):
    import skimage
    data_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    for subject, files in PHOTOS.items():
        sources = [np.asarray(Image.open(os.path.join(data_dir, f)).convert("RGB")) for f in files]
        for split, count in (("train", per_label), ("test", max(2, per_label // 4))):
            folder = os.path.join(out, "photos", split, subject)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                src = sources[i % len(sources)]
                h, w = src.shape[:2]
                scale = rng.uniform(0.6, 1.0)
                ch, cw = int(h * scale), int(w * scale * rng.uniform(0.8, 1.2))
                cw = min(cw, w)
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                crop = src[y:y + ch, x:x + cw]
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                img = Image.fromarray(np.ascontiguousarray(crop))
                # Camera-sized: upscale small sources so the pipeline sees realistic photos.
                if max(img.size) < 640:
                    f = 640 / max(img.size)
                    img = img.resize((round(img.size[0] * f), round(img.size[1] * f)), Image.BICUBIC)
                img.save(os.path.join(folder, f"{subject}_{split}_{i:04d}.jpg"), quality=90)


def fashion(out, per_class):
    for split, prefix, count in (("train", "train", per_class), ("test", "t10k", max(2, per_class // 5))):
        images = idx(os.path.join(FASHION_DIR, f"{prefix}-images-idx3-ubyte.gz"))
        labels = idx(os.path.join(FASHION_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
        seen = [0] * 10
        for i, (img, label) in enumerate(zip(images, labels)):
            if seen[label] >= count:
                if min(seen) >= count:
                    break
                continue
            seen[label] += 1
            folder = os.path.join(out, "fashion", split, FASHION_CLASSES[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img).save(os.path.join(folder, f"{split}_{i:05d}.png"))


def faces(out, rng):
    from skimage import data
    images = data.lfw_subset()  # the first 100 are faces, the last 100 are not
    order = rng.permutation(len(images))
    for rank, i in enumerate(order):
        split = "test" if rank % 5 == 0 else "train"
        label = "face" if i < 100 else "non_face"
        folder = os.path.join(out, "faces", split, label)
        os.makedirs(folder, exist_ok=True)
        Image.fromarray((images[i] * 255).round().astype(np.uint8)).save(os.path.join(folder, f"{i:03d}.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--photos-per-label", type=int, default=40)
    ap.add_argument("--fashion-per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    stamp = os.path.join(args.out, f".sample-v2-{args.photos_per_label}-{args.fashion_per_class}-{args.seed}")
    if os.path.exists(stamp):
        return
    rng = np.random.default_rng(args.seed)
    photos(args.out, args.photos_per_label, rng)
    fashion(args.out, args.fashion_per_class)
    faces(args.out, np.random.default_rng(args.seed))
    open(stamp, "w").close()
    print(f"sample data ready in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
