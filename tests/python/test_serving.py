"""`quiver serve` against TensorFlow Serving's own Python client (tensorflow-serving-api) and
curl: Predict / Classify / GetModelMetadata / GetModelStatus over gRPC and the REST API give
the same predictions as `predict()` in SQL; bad requests get clear errors; a new version is
swapped in under load without a failed request; mutual TLS refuses clients without a
certificate from the cluster's CA; prediction logs land in the store and SQL reads them;
Prometheus metrics at /metrics count requests, latency and batch sizes."""
import base64
import json
import os
import shutil
import signal
import subprocess
import threading

import grpc
import numpy as np
import pytest
from PIL import Image

from conftest import (QUIVER, fault_env, metric, parse_address, parse_metrics, run, spawn,
                      start_prometheus, stop_group, wait_for)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow.core.example import example_pb2, feature_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2, get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
    predict_pb2, prediction_service_pb2_grpc)

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def client_bin():
    """examples/serving_client, built beside the other examples."""
    return os.path.join(os.path.dirname(os.environ["QUIVER_EXAMPLE_BIN"]), "serving_client")


def run_sql(store, sql):
    proc = run([QUIVER, "--store", str(store), "sql", "--format", "json", sql], timeout=900)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def train(store, fashion, replace=False, epochs=2):
    run_sql(store, f"""CREATE {'OR REPLACE ' if replace else ''}MODEL fashion OPTIONS (
        model_type = 'dnn_classifier', hidden_units = [128], epochs = {epochs},
        learning_rate = 0.002, batch_size = 64, seed = 7)
        AS SELECT image_decode(content) AS image, label FROM read_images('{fashion}/train/')""")


class Server:
    """`quiver serve` on ports it chose itself (port 0), read from its first log line."""
    count = 0

    def __init__(self, store, *extra, tls=None, env=None, owner="test"):
        Server.count += 1
        self.log = open(os.path.join(store, f"serve-{Server.count}.log"), "w+")
        self.proc = spawn(
            [QUIVER, "--store", str(store), "serve", "--model", f"{store}/models/fashion",
             "--grpc-port", "0", "--rest-port", "0",
             "--poll-seconds", "0.3", "--log-flush-seconds", "0.5", *extra],
            owner=owner, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.tls = tls
        wait_for(lambda: "quiver serve: ready" in self.output(), "the server to be ready",
                 timeout=120, proc=self.proc, context=self.output)
        out = self.output()
        self.grpc_port = int(parse_address(out, r"gRPC on ([0-9.]+:\d+)").rsplit(":", 1)[1])
        self.rest_port = int(parse_address(out, r"REST on https?://([0-9.]+:\d+)").rsplit(":", 1)[1])

    def output(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def channel(self, cert=None):
        target = f"127.0.0.1:{self.grpc_port}"
        if self.tls is None:
            return grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
        ca = open(os.path.join(self.tls, "ca.pem"), "rb").read()
        key = chain = None
        if cert:
            key, chain = (open(cert + ".key", "rb").read(), open(cert + ".pem", "rb").read())
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)
        return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")])

    def stub(self, cert=None):
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel(cert))

    def stop(self):
        code = stop_group(self.proc, timeout=60)
        assert code == 0, self.output()


def curl(server, method, path, body=None, extra=(), raw=None):
    """The status and JSON reply of a request with JSON `body` (or the text `raw`)."""
    scheme = "https" if server.tls else "http"
    cmd = ["curl", "-sS", "-X", method, "-w", "\n%{http_code}", *extra,
           f"{scheme}://localhost:{server.rest_port}{path}"]
    data = raw if raw is not None else json.dumps(body) if body is not None else None
    if data is not None:
        cmd[4:4] = ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    proc = run(cmd, input=data, timeout=60)
    if proc.returncode != 0:
        return None, proc
    text, code = proc.stdout.rsplit("\n", 1)
    return int(code), json.loads(text)


def string_tensor(values):
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values)
    t.tensor_shape.dim.add(size=len(values))
    return t


def float_tensor(array):
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                               tensor_content=np.ascontiguousarray(array, np.float32).tobytes())
    for d in array.shape:
        t.tensor_shape.dim.add(size=d)
    return t


def predict_request(tensor, name="fashion", version=None, key="image"):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    req.inputs[key].CopyFrom(tensor)
    return req


@pytest.fixture(scope="module")
def served(samples, tmp_path_factory):
    store = tmp_path_factory.mktemp("serving")
    fashion = os.path.join(samples, "fashion")
    train(store, fashion)
    test = os.path.join(fashion, "test")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(test) for f in fs if f.endswith(".png"))
    images = [open(f, "rb").read() for f in files]
    truth = [os.path.basename(os.path.dirname(f)) for f in files]
    rows = run_sql(store, f"""SELECT path, predict('fashion', image_decode(content)) AS p
                              FROM read_images('{test}/') ORDER BY path""")
    sql = {r["path"].removeprefix("file://"): r["p"] for r in rows}
    sql = [sql[f] for f in files]
    server = Server(store, owner="fixture")
    yield {"store": store, "fashion": fashion, "files": files, "images": images, "truth": truth,
           "sql": sql, "server": server}
    if server.proc.poll() is None:
        server.stop()


def test_grpc_predict_and_metadata_match_sql(served):
    stub = served["server"].stub()
    resp = stub.Predict(predict_request(string_tensor(served["images"])), timeout=60)
    labels = [v.decode() for v in resp.outputs["label"].string_val]
    probs = np.array(resp.outputs["probability"].float_val)
    assert resp.model_spec.version.value == 1
    assert labels == [p["label"] for p in served["sql"]]
    np.testing.assert_allclose(probs, [p["probability"] for p in served["sql"]], rtol=1e-5, atol=1e-6)
    full = np.array(resp.outputs["probabilities"].float_val).reshape(len(labels), 10)
    np.testing.assert_allclose(full.sum(axis=1), 1.0, atol=1e-4)
    accuracy = np.mean(np.array(labels) == np.array(served["truth"]))
    print(f"gRPC accuracy on {len(labels)} Fashion-MNIST test images: {accuracy:.3f}")
    assert accuracy > 0.6
    # The Rust client (examples/serving_client.rs) measures the same accuracy.
    proc = run([client_bin(), "accuracy", "--grpc", f"http://127.0.0.1:{served['server'].grpc_port}",
                "--model", "fashion", "--images", os.path.join(served["fashion"], "test"),
                "--batch", "64"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"accuracy {accuracy:.4f} on {len(labels)} images"), proc.stdout

    # Several MB in one request: 2,000 images as float32 pixels (6.3 MB).
    many = np.concatenate([np.stack([np.asarray(Image.open(f)) for f in served["files"]])] * 5)
    resp = stub.Predict(predict_request(float_tensor(many[..., None])), timeout=120)
    assert [v.decode() for v in resp.outputs["label"].string_val] == labels * 5

    # The same images as a float tensor of pixel values, [N, 28, 28, 1].
    pixels = np.stack([np.asarray(Image.open(f)) for f in served["files"]])[..., None]
    resp = stub.Predict(predict_request(float_tensor(pixels)), timeout=60)
    assert [v.decode() for v in resp.outputs["label"].string_val] == labels
    # Typed float_val lists, output_filter.
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=pixels[:3].ravel().tolist())
    for d in (3, 28 * 28):
        t.tensor_shape.dim.add(size=d)
    req = predict_request(t)
    req.output_filter.append("class_id")
    resp = stub.Predict(req, timeout=60)
    assert list(resp.outputs) == ["class_id"] and len(resp.outputs["class_id"].int64_val) == 3

    meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "fashion"}, metadata_field=["signature_def"]), timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sigs)
    sig = sigs.signature_def["serving_default"]
    assert sig.inputs["image"].dtype == types_pb2.DT_STRING
    assert sig.outputs["probabilities"].tensor_shape.dim[1].size == 10
    assert sig.method_name == "tensorflow/serving/predict"

    status = model_service_pb2_grpc.ModelServiceStub(served["server"].channel()).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "fashion"}), timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE

    examples = [example_pb2.Example(features=feature_pb2.Features(feature={
        "image": feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[img]))}))
        for img in served["images"][:5]]
    req = classification_pb2.ClassificationRequest(model_spec={"name": "fashion"})
    req.input.example_list.examples.extend(examples)
    result = stub.Classify(req, timeout=30).result.classifications
    assert [c.classes[0].label for c in result] == labels[:5]
    assert abs(result[0].classes[0].score - probs[0]) < 1e-5


def test_rest_predict_status_and_metadata(served):
    server = served["server"]
    b64 = [{"b64": base64.b64encode(img).decode()} for img in served["images"][:20]]
    code, body = curl(server, "POST", "/v1/models/fashion:predict", {"instances": b64})
    assert code == 200, body
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in served["sql"][:20]]
    code, body = curl(server, "POST", "/v1/models/fashion/versions/1:predict",
                      {"signature_name": "serving_default", "inputs": {"image": b64[:3]}})
    assert code == 200 and body["outputs"]["label"] == [p["label"] for p in served["sql"][:3]]
    pixels = np.asarray(Image.open(served["files"][0])).tolist()
    code, body = curl(server, "POST", "/v1/models/fashion:predict", {"instances": [pixels]})
    assert code == 200 and body["predictions"][0]["label"] == served["sql"][0]["label"]
    code, body = curl(server, "POST", "/v1/models/fashion:classify",
                      {"examples": [{"image": b64[0]}]})
    assert code == 200 and body["results"][0][0][0] == served["sql"][0]["label"]
    code, body = curl(server, "GET", "/v1/models/fashion")
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    code, body = curl(server, "GET", "/v1/models/fashion/metadata")
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["image"]["dtype"] == "DT_STRING"
    assert body["quiver"]["labels"][0] == "ankle_boot"
    code, body = curl(server, "GET", "/healthz")
    assert code == 200 and body["status"] == "ok"


def test_bad_requests_get_clear_errors(served):
    stub = served["server"].stub()
    png = served["images"][0]

    def grpc_error(req, method="Predict"):
        with pytest.raises(grpc.RpcError) as e:
            getattr(stub, method)(req, timeout=30)
        return e.value.code(), e.value.details()

    code, msg = grpc_error(predict_request(string_tensor([png]), name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "model 'nope' is not served" in msg
    code, msg = grpc_error(predict_request(string_tensor([png]), version=9))
    assert code == grpc.StatusCode.NOT_FOUND and "no version 9" in msg
    code, msg = grpc_error(predict_request(string_tensor([png, b"not an image"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "example 1: undecodable image" in msg
    code, msg = grpc_error(predict_request(float_tensor(np.zeros((2, 27, 28, 1)))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape [2, 27, 28, 1] does not fit" in msg
    code, msg = grpc_error(predict_request(tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, bool_val=[True])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DT_BOOL is not accepted" in msg
    code, msg = grpc_error(predict_request(string_tensor([png]), key="pixels"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "one input named 'image', not pixels" in msg
    req = predict_request(string_tensor([png]))
    req.model_spec.signature_name = "other"
    code, msg = grpc_error(req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no signature 'other'" in msg

    server = served["server"]
    for path, body, status, text in [
        ("/v1/models/nope:predict", {"instances": [1]}, 404, "model 'nope' is not served"),
        ("/v1/models/fashion/versions/9:predict", {"instances": [1]}, 404, "no version 9"),
        ("/v1/models/fashion:predict", {"instances": [{"b64": "bm9wZQ=="}]}, 400, "undecodable image"),
        ("/v1/models/fashion:predict", {"instances": [[1, 2, 3]]}, 400, "shape [1, 3] does not fit"),
        ("/v1/models/fashion:predict", {"instances": ["text"]}, 400, "{\"b64\""),
        ("/v1/models/fashion:predict", {"rows": []}, 400, "needs 'instances'"),
        ("/v1/models/fashion:explain", {"instances": [1]}, 404, ":predict or :classify"),
    ]:
        code, reply = curl(server, "POST", path, body)
        assert code == status and text in reply["error"], (path, code, reply)
    # A body that is not JSON is refused before it is parsed (and logged, see below).
    code, reply = curl(server, "POST", "/v1/models/fashion:predict", raw='{"instances": [')
    assert code == 400 and "not valid JSON" in reply["error"], reply


def test_oversize_requests_are_refused_and_logged(served, tmp_path):
    # A store of its own, so that its prediction log holds this test's requests only.
    store = tmp_path / "store"
    shutil.copytree(os.path.join(served["store"], "models"), store / "models")
    server = Server(store, "--max-request-bytes", "100000")
    try:
        big = np.zeros((40, 28, 28, 1), np.float32)  # 125 KB
        with pytest.raises(grpc.RpcError) as e:
            server.stub().Predict(predict_request(float_tensor(big)), timeout=30)
        # tonic's answer: OUT_OF_RANGE "decoded message length too large: found N bytes, the
        # limit is: 100000 bytes".
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE, e.value.details()
        assert "limit is: 100000 bytes" in e.value.details()
        code, body = curl(server, "POST", "/v1/models/fashion:predict",
                          {"instances": big.tolist()})
        assert code == 413 and "100000 bytes" in body["error"]
        # Under the limit still works.
        resp = server.stub().Predict(predict_request(float_tensor(big[:10])), timeout=30)
        assert len(resp.outputs["label"].string_val) == 10
    finally:
        server.stop()  # flushes its log
    # Both refusals are in the prediction log: the REST one under the model it named, the gRPC
    # one, whose message was never decoded, among the requests for models not served.
    rows = run_sql(store, f"""
        CREATE EXTERNAL TABLE served STORED AS JSON LOCATION '{store}/serving/fashion/logs/';
        CREATE EXTERNAL TABLE unknown STORED AS JSON LOCATION '{store}/serving/_unknown/logs/';
        SELECT model, protocol, method, status, error FROM served UNION ALL
        SELECT model, protocol, method, status, error FROM unknown ORDER BY protocol, status""")
    assert [(r["model"], r["protocol"], r["method"], r["status"]) for r in rows] == [
        ("fashion", "grpc", "predict", "OK"), ("", "grpc", "predict", "OUT_OF_RANGE"),
        ("fashion", "rest", "predict", "RESOURCE_EXHAUSTED")], rows
    assert "limit is: 100000 bytes" in rows[1]["error"], rows[1]
    assert "100000 bytes" in rows[2]["error"], rows[2]


def peak_rss_mb(pid):
    """The most memory the process `pid` has held (VmHWM), in MB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(90)  # 9 s measured
def test_a_large_rest_request_runs_in_bounded_memory(served):
    """A 50 MB REST request of small images is decoded and run in passes of 256 examples, and
    its answer is written without a JSON tree: the server's memory stays a small multiple of
    the request (it was 3.9 GB for this request when the whole request ran in one pass)."""
    server = Server(served["store"], "--no-prediction-log")
    try:
        one = '{"b64": "' + base64.b64encode(served["images"][0]).decode() + '"}'
        n = (50 << 20) // (len(one) + 1)
        body = '{"instances": [' + ",".join([one] * n) + "]}"
        before = peak_rss_mb(server.proc.pid)
        code, reply = curl(server, "POST", "/v1/models/fashion:predict", raw=body)
        assert code == 200, reply
        labels = {p["label"] for p in reply["predictions"]}
        assert len(reply["predictions"]) == n and labels == {served["sql"][0]["label"]}
        peak = peak_rss_mb(server.proc.pid)
        print(f"{n} images in {len(body) >> 20} MB: peak RSS {before:.0f} MB before, {peak:.0f} MB after")
        assert peak - before < 8 * len(body) / 2**20, (before, peak)
    finally:
        server.stop()


def scrape(server):
    """The server's /metrics, parsed."""
    scheme = "https" if server.tls else "http"
    proc = run(["curl", "-sS", "-i", f"{scheme}://localhost:{server.rest_port}/metrics"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    head, text = proc.stdout.replace("\r\n", "\n").split("\n\n", 1)
    assert "content-type: text/plain; version=0.0.4" in head.lower(), head
    return parse_metrics(text)


def test_prometheus_metrics_count_requests_latency_and_batches(served):
    server = served["server"]
    before = scrape(server)
    b64 = [{"b64": base64.b64encode(img).decode()} for img in served["images"][:5]]
    for _ in range(3):
        code, body = curl(server, "POST", "/v1/models/fashion:predict", {"instances": b64})
        assert code == 200, body
    stub = server.stub()
    stub.Predict(predict_request(string_tensor(served["images"][:2])), timeout=30)
    code, _ = curl(server, "POST", "/v1/models/nope:predict", {"instances": [1]})
    assert code == 404
    code, _ = curl(server, "POST", "/v1/models/fashion:predict", {"instances": [[1, 2, 3]]})
    assert code == 400
    after = scrape(server)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("quiver_serve_requests_total", model="fashion", code="OK") == 4
    assert delta("quiver_serve_requests_total", model="fashion", code="INVALID_ARGUMENT") == 1
    # A name that is not served is counted under one label, so clients cannot grow the series.
    assert delta("quiver_serve_requests_total", model="_unknown", code="NOT_FOUND") == 1
    assert not any(v == "nope" for _, pairs in after for _, v in pairs)
    assert delta("quiver_serve_request_duration_seconds_count", model="fashion") == 5
    assert delta("quiver_serve_request_duration_seconds_sum", model="fashion") > 0
    # Without batching each request is one forward pass: three of 5 rows, one of 2.
    assert delta("quiver_serve_batch_size_count", model="fashion") == 4
    assert delta("quiver_serve_batch_size_sum", model="fashion") == 17
    assert delta("quiver_serve_batch_size_bucket", model="fashion", le="4") == 1
    assert metric(after, "process_resident_memory_bytes") > 0
    # The prometheus crate counts CPU time in whole seconds.
    assert ("process_cpu_seconds_total", frozenset()) in after


def test_a_prometheus_server_scrapes_the_serving_metrics(served, tmp_path):
    server = served["server"]
    proc, query = start_prometheus(tmp_path, [f"127.0.0.1:{server.rest_port}"])
    b64 = [{"b64": base64.b64encode(img).decode()} for img in served["images"][:3]]
    for _ in range(2):
        code, body = curl(server, "POST", "/v1/models/fashion:predict", {"instances": b64})
        assert code == 200, body

    def value(expr):
        result = query(expr)
        return float(result[0]["value"][1]) if result else None

    def scraped():
        return (value('up{job="quiver"}') == 1
                and (value('sum(quiver_serve_requests_total{model="fashion",code="OK"})') or 0) > 0)
    wait_for(scraped, "Prometheus to scrape the server's requests", timeout=60, proc=proc)
    median = value('histogram_quantile(0.5, sum by (le) '
                   '(quiver_serve_request_duration_seconds_bucket{model="fashion"}))')
    assert median is not None and 0 < median < 60, median
    assert value('quiver_serve_batch_size_count{model="fashion"}') > 0
    assert value('process_resident_memory_bytes{job="quiver"}') > 0
    stop_group(proc, timeout=30)


def test_new_version_is_swapped_in_under_load_and_logged(served, tmp_path):
    polls = tmp_path / "polls.txt"
    server = Server(served["store"], "--batching", "--max-batch-size", "16",
                    env=fault_env(f"serve_poll=trace:{polls}"))
    stub = server.stub()
    req = predict_request(string_tensor(served["images"][:2]))
    seen, failures, stop = [], [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                seen.append(stub.Predict(req, timeout=30).model_spec.version.value)
            except grpc.RpcError as e:  # must not happen
                failures.append(e.details())

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) >= 20, "20 answers of version 1", timeout=120)
        train(served["store"], served["fashion"], replace=True, epochs=1)
        wait_for(lambda: seen and seen[-1] == 2, "answers of version 2", timeout=120,
                 context=server.output)
        swapped = len(seen)
        wait_for(lambda: len(seen) >= swapped + 20, "20 more answers", timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a client thread hangs past its 30 s deadline"
    assert not failures, failures[:3]
    assert seen[0] == 1 and seen[-1] == 2, (seen[:3], seen[-3:])
    assert "version 2 loaded and serving" in server.output()
    # The old version stays reachable when asked for.
    assert stub.Predict(predict_request(string_tensor([served["images"][0]]), version=1),
                        timeout=30).model_spec.version.value == 1
    # A version that cannot be loaded is reported once and the newest good one keeps serving,
    # through several polls (the server traces each one at a fault point).
    broken = os.path.join(served["store"], "models", "fashion", "3")
    os.makedirs(broken)
    with open(os.path.join(broken, "model.json"), "w") as f:
        f.write("{not json")
    wait_for(lambda: "version 3 failed to load" in server.output(), "the failed load reported",
             context=server.output)
    after = len(open(polls).read().splitlines())
    wait_for(lambda: len(open(polls).read().splitlines()) >= after + 3, "3 more polls")
    assert server.output().count("version 3 failed to load") == 1, server.output()
    assert stub.Predict(req, timeout=30).model_spec.version.value == 2
    server.stop()
    served["server"].stop()  # flushes its log too
    shutil.rmtree(broken)

    logs = os.path.join(served["store"], "serving", "fashion", "logs")
    rows = run_sql(served["store"], f"""
        CREATE EXTERNAL TABLE plog STORED AS JSON LOCATION '{logs}/';
        SELECT protocol, method, status, version, count(*) AS requests, sum(rows) AS examples
        FROM plog GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4""")
    by = {(r["protocol"], r["method"], r["status"], r.get("version")): r for r in rows}  # NULLs are left out
    ok_v1 = by[("grpc", "predict", "OK", 1)]["requests"]
    ok_v2 = by[("grpc", "predict", "OK", 2)]["requests"]
    assert ok_v1 + ok_v2 >= len(seen) + 1 and ok_v2 > 0
    assert by[("grpc", "predict", "INVALID_ARGUMENT", 1)]["requests"] >= 4
    assert by[("grpc", "predict", "NOT_FOUND", None)]["requests"] >= 1  # version 9
    # Requests refused before their body was parsed are logged with their status.
    assert by[("rest", "predict", "INVALID_ARGUMENT", None)]["requests"] >= 1
    # Requests for models not served go to one folder of their own, whatever the name asked.
    assert not os.path.exists(os.path.join(served["store"], "serving", "nope"))
    unknown = run_sql(served["store"], f"""
        CREATE EXTERNAL TABLE unknown STORED AS JSON
        LOCATION '{served["store"]}/serving/_unknown/logs/';
        SELECT model, protocol, status, count(*) AS requests FROM unknown
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")
    assert [(r["model"], r["protocol"], r["status"]) for r in unknown] == [
        ("nope", "grpc", "NOT_FOUND"), ("nope", "rest", "NOT_FOUND")], unknown
    assert by[("rest", "classify", "OK", 1)]["examples"] == 1
    stats = run_sql(served["store"], f"""
        CREATE EXTERNAL TABLE plog STORED AS JSON LOCATION '{logs}/';
        SELECT input['dtype'] AS dtype, avg(input['mean']) AS mean, max(latency_ms) AS worst
        FROM plog WHERE status = 'OK' GROUP BY 1 ORDER BY 1""")
    assert {r["dtype"] for r in stats} >= {"encoded_image", "float32", "json"}
    assert all(0.0 < r["mean"] < 1.0 for r in stats), stats


def test_mutual_tls(served, tmp_path):
    certs, other = tmp_path / "certs", tmp_path / "other"
    for d in (certs, other):
        run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), str(d)], check=True)
    server = Server(served["store"], "--tls-cert", str(certs / "server.pem"), "--tls-key",
                    str(certs / "server.key"), "--client-ca", str(certs / "ca.pem"),
                    "--no-prediction-log", tls=str(certs))
    req = predict_request(string_tensor([served["images"][0]]), version=1)
    try:
        resp = server.stub(cert=str(certs / "client")).Predict(req, timeout=30)
        assert resp.outputs["label"].string_val[0].decode() == served["sql"][0]["label"]
        for cert in (None, str(other / "client")):
            with pytest.raises(grpc.RpcError) as e:
                server.stub(cert=cert).Predict(req, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        proc = run([client_bin(), "accuracy", "--grpc", f"https://127.0.0.1:{server.grpc_port}",
                    "--model", "fashion", "--images", os.path.join(served["fashion"], "test"),
                    "--ca", str(certs / "ca.pem"), "--cert", str(certs / "client.pem"),
                    "--key", str(certs / "client.key")], timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("accuracy "), proc.stderr
        tls = ["--cacert", str(certs / "ca.pem")]
        code, body = curl(server, "GET", "/v1/models/fashion", extra=[
            *tls, "--cert", str(certs / "client.pem"), "--key", str(certs / "client.key")])
        assert code == 200, body
        for extra in ([], ["--cert", str(other / "client.pem"), "--key", str(other / "client.key")]):
            code, proc = curl(server, "GET", "/v1/models/fashion", extra=[*tls, *extra])
            assert code is None and proc.returncode != 0, proc
    finally:
        server.stop()


def test_shutdown_finishes_requests_in_flight(served, tmp_path):
    # The request pauses (a fault point) in the server as its forward pass starts: SIGTERM
    # arrives while it is in flight, then it is let go.
    paused = tmp_path / "paused"
    server = Server(served["store"], "--no-prediction-log",
                    env=fault_env(f"serve_infer=pause:{paused}"))
    result = {}

    def call():
        result["resp"] = server.stub().Predict(predict_request(string_tensor(served["images"][:3])),
                                               timeout=60)

    t = threading.Thread(target=call)
    t.start()
    wait_for(paused.exists, "the request to be in flight", proc=server.proc)
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "finishing in-flight requests" in server.output(), "the shutdown to start",
             proc=server.proc, context=server.output)
    paused.unlink()
    t.join(timeout=90)
    assert not t.is_alive(), "the request in flight hangs past its 60 s deadline"
    assert server.proc.wait(timeout=60) == 0
    assert len(result["resp"].outputs["label"].string_val) == 3

