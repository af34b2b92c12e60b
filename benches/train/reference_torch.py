"""PyTorch on a GPU, the reference for Quiver's CUDA training throughput: the same architectures,
data, batch size and optimizer as benches/train/gpu.sh gives Quiver.

    python reference_torch.py IMAGE_DIR --model dnn|cnn --epochs N --batch-size B [--test DIR]

Reads the PNG folder (label/*.png) with Pillow, scales to [0, 1], keeps it on the GPU and trains
with Adam (lr 0.001), shuffled each epoch. Prints JSON: images/s of each epoch, the training
accuracy of the last epoch and, with --test, the accuracy on that folder.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn

from reference import load  # the same PNG loader as the Keras reference


def tensors(loaded):
    """The loader's NHWC arrays as NCHW tensors."""
    x, y, classes = loaded
    return torch.tensor(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(y), classes


def model_for(kind, shape, classes):
    if kind == "dnn":
        layers, width = [nn.Flatten()], int(np.prod(shape))
        for units in (512, 256, 128):
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(0.2)]
            width = units
        return nn.Sequential(*layers, nn.Linear(width, classes))
    layers, channels, (h, w) = [], shape[0], shape[1:]
    for filters in (32, 64):
        layers += [nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels, h, w = filters, h // 2, w // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.2), nn.Linear(channels * h * w, 128), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(128, classes))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("--model", choices=["dnn", "cnn"], required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--test")
    args = ap.parse_args()
    torch.manual_seed(42)
    device = torch.device("cuda")
    x, y, classes = tensors(load(args.images))
    x, y = x.to(device), y.to(device)
    model = model_for(args.model, x.shape[1:], classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    rates, accuracy = [], 0.0
    for _ in range(args.epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), device=device)
        correct = torch.zeros((), device=device)
        for i in range(0, len(x), args.batch_size):
            idx = order[i:i + args.batch_size]
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += (logits.argmax(1) == y[idx]).sum()
        accuracy = correct.item() / len(x)
        torch.cuda.synchronize()
        rates.append(len(x) / (time.perf_counter() - start))
    result = {"images": len(x), "images_per_second": rates, "accuracy": accuracy}
    if args.test:
        tx, ty, _ = tensors(load(args.test))
        model.eval()
        with torch.no_grad():
            predicted = torch.cat([model(tx[i:i + 1024].to(device)).argmax(1).cpu() for i in range(0, len(tx), 1024)])
        result["test_accuracy"] = (predicted == ty).float().mean().item()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
