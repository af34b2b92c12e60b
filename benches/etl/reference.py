"""The reference pipeline a user would write without Quiver: Pillow + TensorFlow's
TFRecordWriter, parallelised with multiprocessing over the same cores.

    python reference.py IMAGE_DIR OUT_DIR --workers N [--draft]

Each worker takes every N-th file (sorted), decodes with Pillow, centre-crops the largest
square, resizes to 200x200 (BILINEAR, antialiased like Quiver), encodes JPEG quality 90 and
writes tf.train.Examples (path, label, image, image/height, image/width, image/channels) to its
own shard. With --draft, Pillow's `Image.draft()` lets libjpeg-turbo decode at the smallest DCT
scale that still covers 200 px, as Quiver does. Prints JSON: images, seconds and a per-stage breakdown (seconds of worker time).
"""
import argparse
import io
import json
import os
import time
from multiprocessing import Pool

EXTS = (".jpg", ".jpeg", ".png")


def work(args):
    index, files, out, workers, draft = args
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    from PIL import Image
    stages = {"read": 0.0, "decode": 0.0, "resize": 0.0, "encode": 0.0, "write": 0.0}
    path_out = os.path.join(out, f"part-{index:05d}-of-{workers:05d}.tfrecord")
    with tf.io.TFRecordWriter(path_out) as writer:
        for path in files:
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                data = f.read()
            t1 = time.perf_counter()
            img = Image.open(io.BytesIO(data))
            if draft:
                w, h = img.size
                s = min(w, h)
                img.draft("RGB", (-(-200 * w // s), -(-200 * h // s)))
            img = img.convert("RGB")
            img.load()
            t2 = time.perf_counter()
            w, h = img.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.resize((200, 200), Image.BILINEAR, box=(left, top, left + s, top + s))
            t3 = time.perf_counter()
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            t4 = time.perf_counter()
            feature = {
                "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
                "label": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[os.path.basename(os.path.dirname(path)).encode()])),
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
                "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[200])),
                "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[200])),
                "image/channels": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            t5 = time.perf_counter()
            for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                stages[k] += dt
    return stages


def warm(_):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow  # noqa: F401  (imported once per worker before timing)
    import PIL.Image  # noqa: F401
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("images")
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--draft", action="store_true", help="decode JPEGs at a reduced DCT scale")
    args = ap.parse_args()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(args.images) for f in fs
                   if f.lower().endswith(EXTS))
    os.makedirs(args.out, exist_ok=True)
    with Pool(args.workers) as pool:
        pool.map(warm, range(args.workers))
        start = time.perf_counter()
        results = pool.map(work, [(i, files[i::args.workers], args.out, args.workers, args.draft)
                                    for i in range(args.workers)])
        seconds = time.perf_counter() - start
    stages = {k: round(sum(r[k] for r in results), 3) for k in results[0]}
    print(json.dumps({"images": len(files), "seconds": round(seconds, 3), "stages": stages}))


if __name__ == "__main__":
    main()
