"""The feature-statistics benchmark's data and its reference: Fashion-MNIST's 60,000 training
images as a CSV table (label name + 784 pixel columns), and pandas/numpy computing the same
statistics as feature_stats() (describe, zeros, 10-bucket histograms, distinct and top values).

    python reference.py make OUT.csv
    python reference.py measure OUT.csv      # prints seconds (read + statistics)
"""
import gzip
import json
import os
import sys
import time

import numpy as np
import pandas as pd

FASHION = os.environ.get("QUIVER_FASHION_DIR", "/usr/share/datasets/fashion-mnist")
CLASSES = ["t_shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle_boot"]


def make(out):
    with gzip.open(os.path.join(FASHION, "train-images-idx3-ubyte.gz")) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(os.path.join(FASHION, "train-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    frame = pd.DataFrame(pixels, columns=[f"p{i}" for i in range(784)])
    frame.insert(0, "label", [CLASSES[i] for i in labels])
    frame.to_csv(out + ".tmp", index=False)
    os.replace(out + ".tmp", out)


def measure(path):
    started = time.perf_counter()
    frame = pd.read_csv(path)
    numeric = frame.select_dtypes("number")
    described = numeric.describe()
    zeros = (numeric == 0).sum()
    histograms = {c: np.histogram(numeric[c].dropna(), bins=10) for c in numeric.columns}
    counts = frame["label"].value_counts()
    distinct = frame["label"].nunique()
    seconds = time.perf_counter() - started
    assert len(described.columns) == 784 and len(histograms) == 784 and distinct == 10
    assert int(zeros.sum()) > 0 and counts.iloc[0] == 6000
    print(json.dumps({"seconds": seconds, "rows": len(frame)}))


if __name__ == "__main__":
    {"make": make, "measure": measure}[sys.argv[1]](sys.argv[2])
