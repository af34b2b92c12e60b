"""The Python reference for benches/serving: what a user would run without Quiver or TF Serving
binaries (not installable offline) — a grpcio PredictionService and a threaded REST server
around the same Keras model (a tf.function forward pass), decoding PNGs with Pillow.

    python reference_server.py --grpc-port P --rest-port Q --hidden 128 --classes 10
"""
import argparse
import base64
import io
import json
import os
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--grpc-port", type=int, required=True)
p.add_argument("--rest-port", type=int, required=True)
p.add_argument("--hidden", type=int, nargs="+", default=[128])
p.add_argument("--conv", type=int, nargs="*", default=[], help="conv filters (CNN: 3x3 conv + 2x2 max-pool each)")
p.add_argument("--classes", type=int, default=10)
p.add_argument("--threads", type=int, default=os.cpu_count())
args = p.parse_args()
tf.config.threading.set_intra_op_parallelism_threads(args.threads)
tf.config.threading.set_inter_op_parallelism_threads(args.threads)

layers = [tf.keras.Input((28, 28, 1))]
for f in args.conv:
    layers += [tf.keras.layers.Conv2D(f, 3, padding="same", activation="relu"), tf.keras.layers.MaxPooling2D()]
layers += [tf.keras.layers.Flatten()]
layers += [tf.keras.layers.Dense(h, activation="relu") for h in args.hidden]
layers += [tf.keras.layers.Dense(args.classes)]
model = tf.keras.Sequential(layers)
labels = np.array([f"class_{i}" for i in range(args.classes)])


@tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
def forward(x):
    return tf.nn.softmax(model(x, training=False))


def infer(encoded):
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)), np.float32) / 255.0 for b in encoded])
    probs = forward(x[..., None]).numpy()
    best = probs.argmax(axis=1)
    return labels[best], probs[np.arange(len(best)), best]


class Predictor(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request, context):
        names, scores = infer(list(request.inputs["image"].string_val))
        resp = predict_pb2.PredictResponse()
        resp.model_spec.CopyFrom(request.model_spec)
        out = resp.outputs["label"]
        out.dtype = 7
        out.tensor_shape.dim.add(size=len(names))
        out.string_val.extend(n.encode() for n in names)
        return resp


class Rest(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        names, scores = infer([base64.b64decode(i["b64"]) for i in body["instances"]])
        out = json.dumps({"predictions": [{"label": n, "probability": float(s)}
                                          for n, s in zip(names, scores)]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


forward(np.zeros((1, 28, 28, 1), np.float32))  # trace once before serving
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictor(), server)
server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
server.start()
rest = ThreadingHTTPServer(("127.0.0.1", args.rest_port), Rest)
threading.Thread(target=rest.serve_forever, daemon=True).start()
print("reference server ready", flush=True)
server.wait_for_termination()
