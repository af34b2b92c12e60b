"""Quiver's ResNet against an independent implementation: the same network built as an ONNX graph
(torchvision's layout: a 7x7 stride-2 stem, 3x3 max pooling, basic blocks or v1.5 bottlenecks,
1x1 projection shortcuts, global average pooling, `fc`) and run by onnxruntime. The weights are
made here, named as torchvision's state dict names them (num_batches_tracked included) and
saved with safetensors; Quiver loads the file as it is and must give the same logits within
1e-4 (relative) in inference mode (running averages) and training mode (batch statistics), and
the running averages torch would keep after that training-mode pass."""
import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

from conftest import QUIVER, run

EXAMPLE = os.path.join(os.path.dirname(QUIVER), "examples", "resnet_logits")
MOMENTUM = 0.1


class Builder:
    """Builds the ONNX graph and the torchvision-named weights of one ResNet together."""

    def __init__(self, rng, training):
        self.rng, self.training = rng, training
        self.nodes, self.inits, self.weights = [], [], {}
        self.norms = []  # (torchvision name, elements per channel, ONNX batch mean/var outputs)
        self.count = 0

    def name(self):
        self.count += 1
        return f"t{self.count}"

    def tensor(self, name, array):
        self.weights[name] = array
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def conv(self, x, prefix, cin, cout, k, stride, hw):
        w = self.rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        out = self.name()
        p = k // 2
        self.nodes.append(helper.make_node("Conv", [x, self.tensor(prefix + ".weight", w)], [out],
                                           kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[p, p, p, p]))
        h, w_ = hw
        return out, ((h + 2 * p - k) // stride + 1, (w_ + 2 * p - k) // stride + 1)

    def bn(self, x, prefix, c, hw, batch):
        r = self.rng
        params = [self.tensor(prefix + ".weight", r.uniform(0.5, 1.5, c).astype(np.float32)),
                  self.tensor(prefix + ".bias", r.normal(0, 0.1, c).astype(np.float32)),
                  self.tensor(prefix + ".running_mean", r.normal(0, 0.1, c).astype(np.float32)),
                  self.tensor(prefix + ".running_var", r.uniform(0.5, 1.5, c).astype(np.float32))]
        self.weights[prefix + ".num_batches_tracked"] = np.array(0, dtype=np.int64)
        out = self.name()
        if self.training:
            # ONNX's momentum weighs the old value; its running variance is the biased one.
            mean, var = self.name(), self.name()
            self.nodes.append(helper.make_node("BatchNormalization", [x] + params,
                                               [out, mean, var], epsilon=1e-5,
                                               momentum=1 - MOMENTUM, training_mode=1))
            self.norms.append((prefix, batch * hw[0] * hw[1], mean, var))
        else:
            self.nodes.append(helper.make_node("BatchNormalization", [x] + params, [out],
                                               epsilon=1e-5))
        return out

    def op(self, kind, inputs, **attrs):
        out = self.name()
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out


def resnet(depth, channels, classes, size, batch, training, seed):
    """The ONNX model (input "x", output "logits", then each norm's running mean and variance
    in training mode), its weights by torchvision name, and the norms (name, count, outputs)."""
    blocks, bottleneck = {18: ([2, 2, 2, 2], False), 34: ([3, 4, 6, 3], False),
                          50: ([3, 4, 6, 3], True)}[depth]
    g = Builder(np.random.default_rng(seed), training)
    hw = (size, size)
    x, hw = g.conv("x", "conv1", channels, 64, 7, 2, hw)
    x = g.op("Relu", [g.bn(x, "bn1", 64, hw, batch)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    hw = ((hw[0] - 1) // 2 + 1, (hw[1] - 1) // 2 + 1)
    expansion = 4 if bottleneck else 1
    inputs = 64
    for stage, (width, count) in enumerate(zip([64, 128, 256, 512], blocks)):
        for i in range(count):
            p = f"layer{stage + 1}.{i}"
            stride = 2 if stage > 0 and i == 0 else 1
            outputs = width * expansion
            if bottleneck:
                y, _ = g.conv(x, p + ".conv1", inputs, width, 1, 1, hw)
                y = g.op("Relu", [g.bn(y, p + ".bn1", width, hw, batch)])
                y, out_hw = g.conv(y, p + ".conv2", width, width, 3, stride, hw)
                y = g.op("Relu", [g.bn(y, p + ".bn2", width, out_hw, batch)])
                y, _ = g.conv(y, p + ".conv3", width, outputs, 1, 1, out_hw)
                y = g.bn(y, p + ".bn3", outputs, out_hw, batch)
            else:
                y, out_hw = g.conv(x, p + ".conv1", inputs, width, 3, stride, hw)
                y = g.op("Relu", [g.bn(y, p + ".bn1", width, out_hw, batch)])
                y, _ = g.conv(y, p + ".conv2", width, width, 3, 1, out_hw)
                y = g.bn(y, p + ".bn2", width, out_hw, batch)
            shortcut = x
            if stride != 1 or inputs != outputs:
                shortcut, _ = g.conv(x, p + ".downsample.0", inputs, outputs, 1, stride, hw)
                shortcut = g.bn(shortcut, p + ".downsample.1", outputs, out_hw, batch)
            x = g.op("Relu", [g.op("Add", [y, shortcut])])
            inputs, hw = outputs, out_hw
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    fc_w = g.rng.normal(0, 1 / np.sqrt(inputs), (classes, inputs)).astype(np.float32)
    fc_b = g.rng.normal(0, 0.1, classes).astype(np.float32)
    g.nodes.append(helper.make_node("Gemm", [x, g.tensor("fc.weight", fc_w),
                                             g.tensor("fc.bias", fc_b)], ["logits"], transB=1))
    outputs = ["logits"] + [o for _, _, mean, var in g.norms for o in (mean, var)]
    graph = helper.make_graph(
        g.nodes, f"resnet{depth}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    return model, g.weights, g.norms


def relative(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("depth,channels,size,batch", [(18, 3, 64, 4), (50, 3, 96, 4),
                                                       (18, 1, 32, 8)])
def test_resnet_logits_match_onnxruntime_in_both_modes(depth, channels, size, batch, tmp_path):
    classes = 5
    images = np.random.default_rng(7).uniform(0, 1, (batch, channels, size, size))
    images = images.astype(np.float32)
    outputs = {}
    for mode in ("inference", "training"):
        model, weights, norms = resnet(depth, channels, classes, size, batch,
                                       mode == "training", seed=depth)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        outputs[mode] = session.run(None, {"x": images})
    weights_path, images_path = tmp_path / "resnet.safetensors", tmp_path / "images.f32"
    save_file(weights, str(weights_path))
    images.tofile(images_path)
    proc = run([EXAMPLE, str(depth), str(classes), str(weights_path), str(images_path),
                str(batch), str(channels), str(size), str(size)], timeout=600)
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)
    # Measured: ~1e-6 in inference mode; in training mode f32 rounding grows through the
    # batch statistics of 50 layers to 6e-5 (ResNet-50) and 8e-6 (ResNet-18).
    for mode in ("inference", "training"):
        difference = relative(ours[mode], outputs[mode][0])
        assert difference < 1e-4, (mode, difference)
    # Training mode must differ from inference mode, or the comparison shows nothing.
    assert relative(outputs["training"][0], outputs["inference"][0]) > 0.01
    # Running averages as torch updates them: ONNX's mean, and the unbiased batch variance.
    running = ours["running"]
    assert len(running) == 2 * len(norms)
    for i, (name, count, _, _) in enumerate(norms):
        old_var = weights[name + ".running_var"]
        onnx_mean, onnx_var = outputs["training"][1 + 2 * i], outputs["training"][2 + 2 * i]
        batch_var = (onnx_var - (1 - MOMENTUM) * old_var) / MOMENTUM
        torch_var = (1 - MOMENTUM) * old_var + MOMENTUM * batch_var * count / (count - 1)
        assert relative(running[name + ".running_mean"], onnx_mean) < 1e-4, name
        assert relative(running[name + ".running_var"], torch_var) < 1e-4, name


def test_resnet_weights_with_a_wrong_shape_or_a_missing_tensor_are_refused(tmp_path):
    _, weights, _ = resnet(18, 3, 5, 32, 1, False, seed=1)
    weights["layer2.0.conv1.weight"] = weights["layer2.0.conv1.weight"][:, :32]
    del weights["layer3.1.bn2.running_var"]
    weights_path, images_path = tmp_path / "resnet.safetensors", tmp_path / "images.f32"
    save_file(weights, str(weights_path))
    np.zeros((1, 3, 32, 32), np.float32).tofile(images_path)
    proc = run([EXAMPLE, "18", "5", str(weights_path), str(images_path), "1", "3", "32", "32"],
               timeout=300)
    assert proc.returncode != 0
    assert ("tensor 'layer2.0.conv1.weight' has shape [128, 32, 3, 3] in the file, the model "
            "needs [128, 64, 3, 3]") in proc.stderr, proc.stderr
    assert "missing tensors layer3.1.bn2.running_var" in proc.stderr, proc.stderr


def test_resnet_trains_through_sql_and_infers_with_running_averages(samples, tmp_path):
    """CREATE MODEL with model_type = 'resnet_classifier' on the faces folder (32 px): the
    validation accuracy climbs once the running averages settle, ml_evaluate and predict()
    (both in inference mode) agree, and the registered weights are torchvision's tensors with
    the running averages that training kept."""
    from safetensors.numpy import load_file
    faces = os.path.join(samples, "faces")
    query = ("SELECT image_resize(image_decode(content), 32, 32) AS image, label "
             "FROM read_images('{}')")
    test = query.format(f"{faces}/test/")
    proc = run([QUIVER, "--store", str(tmp_path), "sql", "--format", "json", f"""
        CREATE MODEL faces OPTIONS (model_type = 'resnet_classifier', depth = 18, epochs = 8,
          batch_size = 16, seed = 7, validation_query = '{test.replace("'", "''")}')
        AS {query.format(f"{faces}/train/")};
        SELECT accuracy FROM ml_evaluate('faces', '{test.replace("'", "''")}') LIMIT 1;
        SELECT avg(CASE WHEN predict('faces', image)['label'] = label THEN 1.0 ELSE 0.0 END)
          AS acc FROM ({test})"""], timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows[0]["val_accuracy"] >= 0.85, (rows, proc.stderr)
    assert rows[1]["accuracy"] == rows[0]["val_accuracy"], rows
    assert abs(rows[2]["acc"] - rows[1]["accuracy"]) < 1e-9, rows
    model = json.load(open(tmp_path / "models" / "faces" / "1" / "model.json"))
    assert model["architecture"] == {"type": "resnet_classifier", "depth": 18}, model
    weights = load_file(str(tmp_path / "models" / "faces" / "1" / "model.safetensors"))
    assert len(weights) == 102 and weights["fc.weight"].shape == (2, 512)
    assert weights["conv1.weight"].shape == (64, 1, 7, 7)  # the faces are grey
    assert not np.allclose(weights["layer4.1.bn2.running_var"], 1.0)


def onnx_probabilities(model, images):
    """onnxruntime's softmax of `model`'s logits for `images`."""
    logits = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, {"x": images})[0]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    return expected / expected.sum(1, keepdims=True)


def test_weights_made_elsewhere_are_imported_with_epochs_0_and_predict_like_onnxruntime(
        samples, tmp_path):
    """weights = '<safetensors in torchvision's layout>' with epochs = 0 registers the weights
    unchanged: predict() on the faces (25x25 grey PNGs, scaled to [0, 1]) gives onnxruntime's
    label and probabilities (the whole vector) for the same network. A file for 5 classes keeps its backbone and gets a new
    2-class head; a file that is not there is named."""
    from PIL import Image
    from safetensors.numpy import load_file
    faces = os.path.join(samples, "faces", "test")
    files = sorted(os.path.join(faces, label, f) for label in os.listdir(faces)
                   for f in os.listdir(os.path.join(faces, label)))
    images = np.stack([np.asarray(Image.open(f), np.float32)[None] / 255.0 for f in files])
    model, weights, _ = resnet(18, 1, 2, 25, len(files), False, seed=5)
    expected = onnx_probabilities(model, images)
    save_file(weights, str(tmp_path / "two.safetensors"))
    _, five, _ = resnet(18, 1, 5, 25, 1, False, seed=5)
    save_file(five, str(tmp_path / "five.safetensors"))
    query = f"SELECT image_decode(content) AS image, label, path FROM read_images('{faces}/')"
    store = tmp_path / "store"

    def sql(text, check=True):
        proc = run([QUIVER, "--store", str(store), "sql", "--format", "json", text], timeout=600)
        assert proc.returncode == 0 or not check, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], proc

    rows, _ = sql(f"""
        CREATE MODEL imported OPTIONS (model_type = 'resnet_classifier', depth = 18,
          input_column = 'image', weights = '{tmp_path}/two.safetensors', epochs = 0)
        AS SELECT image, label FROM ({query});
        SELECT path, predict('imported', image)['label'] AS label,
          predict('imported', image)['probability'] AS probability,
          predict('imported', image)['probabilities'] AS probabilities FROM ({query})""")
    assert rows[0]["version"] == 1 and rows[0]["epochs"] == 0, rows[0]
    got = {r["path"].rsplit("/", 2)[-2] + "/" + r["path"].rsplit("/", 1)[-1]: r for r in rows[1:]}
    labels = ["face", "non_face"]
    for i, f in enumerate(files):
        row = got[f.rsplit("/", 2)[-2] + "/" + f.rsplit("/", 1)[-1]]
        assert row["label"] == labels[int(expected[i].argmax())], (f, row, expected[i])
        assert abs(row["probability"] - expected[i].max()) < 1e-4, (f, row, expected[i])
        # The whole vector, in the order of the model's label map.
        assert np.abs(np.array(row["probabilities"]) - expected[i]).max() < 1e-4, (f, row)
    card = json.load(open(store / "models" / "imported" / "1" / "model.json"))
    assert card["training"]["weights"] == f"{tmp_path}/two.safetensors", card["training"]

    rows, proc = sql(f"""
        CREATE MODEL headless OPTIONS (model_type = 'resnet_classifier', depth = 18,
          input_column = 'image', weights = '{tmp_path}/five.safetensors', epochs = 0)
        AS SELECT image, label FROM ({query})""")
    assert "with a new head (fc.weight, fc.bias) for 2 classes" in proc.stderr, proc.stderr
    saved = load_file(str(store / "models" / "headless" / "1" / "model.safetensors"))
    assert saved["fc.weight"].shape == (2, 512)
    assert np.array_equal(saved["layer3.1.conv2.weight"], five["layer3.1.conv2.weight"])

    _, proc = sql(f"""
        CREATE MODEL missing OPTIONS (model_type = 'resnet_classifier',
          weights = '{tmp_path}/nowhere.safetensors', epochs = 0)
        AS SELECT image, label FROM ({query})""", check=False)
    assert proc.returncode != 0
    assert f"weights '{tmp_path}/nowhere.safetensors' cannot be read" in proc.stderr, proc.stderr


def test_frozen_tensors_keep_their_weights_until_unfrozen(samples, tmp_path):
    """Fine-tuning a ResNet-18 from a registered one: freeze = 'backbone' trains the head alone
    (every other tensor, running averages included, stays as it started: frozen batch norms
    normalise with their running averages); a list freezes those modules; unfreeze_at_epoch
    trains everything from that epoch; a module the network lacks is refused."""
    from safetensors.numpy import load_file
    faces = os.path.join(samples, "faces")
    data = (f"SELECT image_resize(image_decode(content), 32, 32) AS image, label "
            f"FROM read_images('{faces}/train/')")
    resnet = "model_type = 'resnet_classifier', depth = 18, batch_size = 16, seed = 3"

    def create(name, options, check=True):
        proc = run([QUIVER, "--store", str(tmp_path), "sql", "--format", "json",
                    f"CREATE MODEL {name} OPTIONS ({resnet}, {options}) AS {data}"], timeout=600)
        assert (proc.returncode == 0) == check, proc.stderr
        return proc

    def weights(name):
        return load_file(str(tmp_path / "models" / name / "1" / "model.safetensors"))

    create("base", "epochs = 1")
    base = weights("base")
    create("head_only", "epochs = 1, warm_start = 'base', freeze = 'backbone'")
    tuned = weights("head_only")
    changed = sorted(k for k in base if not np.array_equal(base[k], tuned[k]))
    assert changed == ["fc.bias", "fc.weight"], changed

    proc = create("early", "epochs = 1, warm_start = 'base', freeze = ['conv1', 'bn1', 'layer1']")
    assert "epoch 1: 15 tensors of conv1, bn1, layer1 frozen" in proc.stderr, proc.stderr
    tuned = weights("early")
    kept = {k for k in base if np.array_equal(base[k], tuned[k])}
    early = {k for k in base if k.split(".")[0] in ("conv1", "bn1", "layer1")}
    assert early <= kept, sorted(early - kept)
    assert "layer2.0.conv1.weight" not in kept and "layer4.1.bn2.running_var" not in kept

    proc = create("two_phase", "epochs = 2, warm_start = 'base', freeze = 'backbone', "
                               "unfreeze_at_epoch = 2")
    assert "epoch 2: 60 tensors of backbone train from now on" in proc.stderr, proc.stderr
    assert not np.array_equal(weights("two_phase")["conv1.weight"], base["conv1.weight"])

    proc = create("bad", "freeze = ['layer9']", check=False)
    assert ("freeze names 'layer9', which is no module of the model (its modules: conv1, bn1, "
            "layer1, layer2, layer3, layer4, fc)") in proc.stderr, proc.stderr
    proc = create("bad", "unfreeze_at_epoch = 2", check=False)
    assert "unfreeze_at_epoch = 2 has nothing to unfreeze: set freeze too" in proc.stderr
    proc = create("bad", "freeze = 'all'", check=False)
    assert ("freeze must be 'backbone', 'none' or a list of module names such as ['conv1', "
            "'layer1'], not 'all'") in proc.stderr, proc.stderr


def test_imagenet_normalization_reaches_predict_like_onnxruntime(samples, tmp_path):
    """input_normalization = 'imagenet' normalises 3-channel inputs with torchvision's channel
    statistics: imported weights predict the photos as onnxruntime does on inputs normalised by
    NumPy; grey images are refused."""
    from PIL import Image
    from safetensors.numpy import load_file
    photos = os.path.join(samples, "photos", "test")
    folder = tmp_path / "photos"
    files = []
    for label in ("cat", "coffee", "rocket"):
        os.makedirs(folder / label)
        for name in sorted(os.listdir(os.path.join(photos, label)))[:3]:
            image = Image.open(os.path.join(photos, label, name)).convert("RGB").resize((32, 32))
            files.append(folder / label / (name + ".png"))
            image.save(files[-1])
    pixels = np.stack([np.asarray(Image.open(f), np.float32) / 255.0 for f in files])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images = ((pixels - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    model, weights, _ = resnet(18, 3, 3, 32, len(files), False, seed=9)
    expected = onnx_probabilities(model, images)
    save_file(weights, str(tmp_path / "w.safetensors"))
    query = f"SELECT image_decode(content) AS image, label, path FROM read_images('{folder}/')"
    proc = run([QUIVER, "--store", str(tmp_path / "store"), "sql", "--format", "json", f"""
        CREATE MODEL normalised OPTIONS (model_type = 'resnet_classifier', depth = 18,
          input_column = 'image', weights = '{tmp_path}/w.safetensors', epochs = 0,
          input_normalization = 'imagenet')
        AS SELECT image, label FROM ({query});
        SELECT path, predict('normalised', image)['probabilities'] AS probabilities
        FROM ({query})"""], timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    got = {r["path"].rsplit("/", 1)[-1]: np.array(r["probabilities"]) for r in rows[1:]}
    for i, f in enumerate(files):
        assert np.abs(got[f.name] - expected[i]).max() < 1e-4, (f, got[f.name], expected[i])
    card = json.load(open(tmp_path / "store" / "models" / "normalised" / "1" / "model.json"))
    assert card["input"]["normalize"] == {"mean": [0.485, 0.456, 0.406],
                                          "std": [0.229, 0.224, 0.225]}, card["input"]
    faces = os.path.join(samples, "faces", "train")
    proc = run([QUIVER, "--store", str(tmp_path / "store"), "sql", f"""
        CREATE MODEL grey OPTIONS (model_type = 'resnet_classifier',
          input_normalization = 'imagenet')
        AS SELECT image_decode(content) AS image, label FROM read_images('{faces}')"""],
               timeout=600)
    assert ("input_normalization = 'imagenet' needs 3-channel images; input column 'image' has "
            "shape [25, 25, 1]") in proc.stderr, proc.stderr
