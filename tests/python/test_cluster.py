"""Cluster mode on 127.0.0.1: a `quiver driver` and two `quiver executor` processes. The .slt
suite runs on the cluster with the same expected results as on the embedded engine, a
distributed hot-dog-style ETL writes TFRecords that TensorFlow reads, and a cluster under mutual
TLS refuses clients and executors without a certificate from its CA."""
import glob
import json
import os
import ssl
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import QUIVER, free_port


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def readyz(port, certs=None):
    """The driver's /readyz text (over mutual TLS with the client certificate in `certs`)."""
    if certs is None:
        url, context = f"http://127.0.0.1:{port}/readyz", None
    else:
        url = f"https://127.0.0.1:{port}/readyz"
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        context.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:
            return r.read().decode()
    except Exception as e:  # not up yet, or 503 while executors join
        return str(e)


def wait_ready(port, executors, proc, log, certs=None, timeout=90):
    """Waits until the driver at `port` has `executors` registered."""
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("driver exited: " + open(log).read()[-3000:])
        last = readyz(port, certs)
        if f"ready: {executors} executors" in last:
            return
        time.sleep(0.3)
    raise RuntimeError(f"cluster not ready ({last}): " + open(log).read()[-3000:])


def make_certs(folder):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), str(folder)], check=True,
                   capture_output=True)
    return folder


def node_tls(certs):
    """The flags of a driver or executor under mutual TLS."""
    return ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
            "--tls-ca", str(certs / "ca.pem"), "--mutual-tls"]


def client_tls(certs, ca=None):
    """The flags of a client with the certificate in `certs`, trusting `ca`."""
    return ["--tls-ca", str(ca or certs / "ca.pem"), "--tls-cert", str(certs / "client.pem"),
            "--tls-key", str(certs / "client.key")]


class Cluster:
    def __init__(self, root, executors=2, slots=2, certs=None, flags=()):
        self.root = root
        self.flags = list(flags)
        self.store = str(root / "store")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.certs = certs
        self.tls = node_tls(certs) if certs else []
        self.procs = []
        self.logs = []
        driver_log = self.spawn("driver", ["driver", "--listen", self.address, *self.tls])
        for i in range(executors):
            self.spawn(f"executor{i}", ["executor", "--driver", self.address, "--slots", str(slots),
                                        "--work-dir", str(root / f"work{i}"), *self.tls])
        wait_ready(self.port, executors, self.procs[0], driver_log, certs)

    def spawn(self, name, args):
        log = self.root / f"{name}.log"
        proc = subprocess.Popen([QUIVER, "--store", self.store, *self.flags, *args],
                                stdout=open(log, "w"),
                                stderr=subprocess.STDOUT, env={**os.environ, "QUIVER_LOG": "info"})
        self.procs.append(proc)
        self.logs.append(log)
        return log

    def sql(self, sql, check=True, tls=None):
        if tls is None:
            tls = client_tls(self.certs) if self.certs else []
        proc = subprocess.run([QUIVER, "--store", self.store, "sql", "--cluster", self.address,
                               "--format", "json", *tls, sql],
                              capture_output=True, text=True, timeout=600)
        if check:
            assert proc.returncode == 0, proc.stderr + self.tail()
        return proc

    def tail(self):
        return "".join(f"\n--- {log.name}\n" + open(log).read()[-2000:] for log in self.logs)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


def rows(proc):
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_slt_suite_runs_on_the_cluster_with_the_same_results(cluster):
    slt = os.environ.get("QUIVER_SLT_BIN")
    if not slt:
        pytest.fail("QUIVER_SLT_BIN must name the sqllogictests binary (scripts/test.sh sets it)")
    proc = subprocess.run([slt], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "QUIVER_SLT_CLUSTER": cluster.address},
                          cwd=os.path.join(os.path.dirname(__file__), "..", "..", "sql"))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:] + cluster.tail()
    assert f"running on the cluster at {cluster.address}" in proc.stdout
    assert " 0 failed" in proc.stdout


def test_distributed_etl_writes_tfrecords_that_tensorflow_reads(cluster, samples, tmp_path):
    src = os.path.join(samples, "photos", "train")
    out = tmp_path / "shards"
    query = (f"SELECT label, path, image_resize(image_center_crop(image_decode(content)), 64, 64) AS image "
             f"FROM read_images('{src}/')")
    proc = cluster.sql(f"COPY ({query}) TO '{out}/' STORED AS TFRECORD OPTIONS (image_format 'raw')")
    files = sorted(p for p in glob.glob(os.path.join(src, "*", "*")) if p.lower().endswith((".jpg", ".png")))
    assert rows(proc) == [{"count": len(files)}]
    shards = sorted(glob.glob(str(out / "part-*")))
    assert shards
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shards)]
    assert len(examples) == len(files)
    by_path = {e.features.feature["path"].bytes_list.value[0].decode(): e for e in examples}
    assert set(by_path) == {"file://" + p for p in files}
    # The same query on the embedded engine gives the same pixels.
    local = tmp_path / "local"
    subprocess.run([QUIVER, "--store", str(tmp_path / "lstore"), "sql",
                    f"COPY ({query}) TO '{local}/' STORED AS TFRECORD OPTIONS (image_format 'raw')"],
                   check=True, capture_output=True, timeout=600)
    for r in tf.data.TFRecordDataset(sorted(glob.glob(str(local / "part-*")))):
        e = tf.train.Example.FromString(r.numpy())
        ours = by_path[e.features.feature["path"].bytes_list.value[0].decode()]
        assert ours.features.feature["label"] == e.features.feature["label"]
        a = np.frombuffer(ours.features.feature["image"].bytes_list.value[0], np.uint8)
        b = np.frombuffer(e.features.feature["image"].bytes_list.value[0], np.uint8)
        assert a.shape == (64 * 64 * 3,) and np.array_equal(a, b)


def test_queries_spread_over_both_executors(cluster, samples):
    src = os.path.join(samples, "photos", "train")
    proc = cluster.sql(f"SELECT label, count(*) AS n, sum(image_width(content)) AS w "
                       f"FROM read_images('{src}/') GROUP BY label ORDER BY label")
    got = rows(proc)
    files = [p for p in glob.glob(os.path.join(src, "*", "*")) if p.lower().endswith((".jpg", ".png"))]
    assert len(got) == 8 and sum(r["n"] for r in got) == len(files)
    ran = [open(log).read().count("Received task") for log in cluster.logs[1:]]
    assert all(n > 0 for n in ran), (ran, cluster.tail())


def test_unreachable_driver_is_named(tmp_path):
    port = free_port()
    proc = subprocess.run([QUIVER, "--store", str(tmp_path), "sql", "--cluster", f"127.0.0.1:{port}",
                           "SELECT 1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"127.0.0.1:{port}" in proc.stderr, proc.stderr


def test_bad_cluster_options_are_named(tmp_path):
    proc = subprocess.run([QUIVER, "executor", "--driver", "127.0.0.1:1", "--device", "tpu"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--device 'tpu'" in proc.stderr, proc.stderr
    conf = tmp_path / "cluster.toml"
    conf.write_text('[executor]\nslotz = 3\n')
    proc = subprocess.run([QUIVER, "--config", str(conf), "executor"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "slotz" in proc.stderr and "cluster.toml" in proc.stderr, proc.stderr
    proc = subprocess.run([QUIVER, "driver"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--listen" in proc.stderr, proc.stderr


def test_mutual_tls_refuses_clients_and_executors_without_the_cluster_ca(tmp_path, samples):
    certs, other = make_certs(tmp_path / "certs"), make_certs(tmp_path / "other")
    cluster = Cluster(tmp_path, certs=certs)
    try:
        # A shuffled GROUP BY: client to driver, executors to driver, executor to executor and
        # client to executor all run over mutual TLS.
        src = os.path.join(samples, "photos", "train")
        got = rows(cluster.sql(f"SELECT label, count(*) AS n FROM read_images('{src}/') "
                               f"GROUP BY label ORDER BY label"))
        files = [p for p in glob.glob(os.path.join(src, "*", "*"))
                 if p.lower().endswith((".jpg", ".png"))]
        assert len(got) == 8 and sum(r["n"] for r in got) == len(files)
        ran = [open(log).read().count("Received task") for log in cluster.logs[1:]]
        assert all(n > 0 for n in ran), (ran, cluster.tail())
        refused = {
            "no certificate": ["--tls-ca", str(certs / "ca.pem")],
            "another CA's certificate": client_tls(other, ca=certs / "ca.pem"),
            "plain TCP": [],
        }
        for why, flags in refused.items():
            proc = cluster.sql("SELECT 1", check=False, tls=flags)
            assert proc.returncode != 0, why
            assert "cannot talk to the driver at http" in proc.stderr and cluster.address in proc.stderr, \
                (why, proc.stderr)
        # Executors without a certificate from the cluster's CA never join.
        for name, flags in [("plain", []), ("other", node_tls(other))]:
            cluster.spawn(f"intruder-{name}", ["executor", "--driver", cluster.address,
                                               "--work-dir", str(tmp_path / name), *flags])
        time.sleep(4)
        for log in cluster.logs[-2:]:
            assert "failed" in open(log).read().lower(), open(log).read()[-2000:]
        status = readyz(cluster.port, certs)
        assert status.startswith("ready: 2 executors") and status.count("/cpu") == 2, status
        # /readyz refuses a client without a certificate too.
        assert "ready" not in readyz(cluster.port, None)
    finally:
        cluster.stop()


def test_a_killed_executor_s_tasks_run_again_elsewhere(tmp_path, samples):
    cluster = Cluster(tmp_path)
    try:
        src = os.path.join(samples, "photos", "train")
        one = (f"SELECT label, image_resize(image_decode(content), 400, 400) AS im "
               f"FROM read_images('{src}/')")
        copies = 12  # about 8 s of work on the two executors
        query = (f"SELECT label, count(*) AS n, sum(image_width(im)) AS w "
                 f"FROM ({' UNION ALL '.join([one] * copies)}) GROUP BY label ORDER BY label")
        client = subprocess.Popen([QUIVER, "--store", cluster.store, "sql", "--cluster",
                                   cluster.address, "--format", "json", query],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        log = cluster.logs[2]
        deadline = time.time() + 60
        while "Received task" not in open(log).read() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        victim = cluster.procs[2]
        victim.kill()  # SIGKILL mid-query
        out, err = client.communicate(timeout=300)
        assert client.returncode == 0, err + cluster.tail()
        got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        files = [p for p in glob.glob(os.path.join(src, "*", "*"))
                 if p.lower().endswith((".jpg", ".png"))]
        assert sum(r["n"] for r in got) == copies * len(files), got
        assert all(r["w"] == 400 * r["n"] for r in got), got
        driver = open(cluster.logs[0]).read()
        assert "on lost Executor" in driver and "heartbeat timed out" in driver, cluster.tail()
    finally:
        cluster.stop()


def test_experiment_trials_run_on_executors_and_move_when_one_is_killed(tmp_path, samples):
    """A 4-trial experiment across 2 executors (one slot each): the driver's coordinator places
    the trials, the client sees the live log, and the trial whose executor is SIGKILLed resumes
    from its last checkpoint on the other executor."""
    cluster = Cluster(tmp_path, slots=1)
    train = os.path.join(samples, "fashion", "train")
    test = os.path.join(samples, "fashion", "test")
    sql = f"""CREATE EXPERIMENT lr OPTIONS (model_type = 'dnn_classifier',
                learning_rate = [0.001, 0.002, 0.003, 0.004], hidden_units = [64], epochs = 4,
                batch_size = 64, max_parallel_trials = 2,
                validation_query = 'SELECT image_decode(content) AS image, label
                                    FROM read_images(''{test}/'')')
              AS SELECT image_decode(content) AS image, label FROM read_images('{train}/')"""
    try:
        client = subprocess.Popen([QUIVER, "--store", cluster.store, "sql", "--cluster",
                                   cluster.address, "--format", "json", sql],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        trials = tmp_path / "store" / "experiments" / "lr" / "trials"
        victim_log = cluster.logs[2]
        deadline = time.time() + 600
        victim_trial = None
        # Kill executor 1 once its trial has a checkpoint but no result.
        while victim_trial is None:
            assert client.poll() is None, client.stderr.read() + cluster.tail()
            assert time.time() < deadline, cluster.tail()
            for line in open(victim_log).read().splitlines():
                if ": trial-" in line and " starts on " in line:
                    t = "trial-" + line.split("trial-")[1].split()[0]
                    if (list((trials / t).glob("checkpoints/*/state.json"))
                            and not (trials / t / "result.json").exists()):
                        victim_trial = t
            time.sleep(0.05)
        cluster.procs[2].kill()
        out, err = client.communicate(timeout=900)
        assert client.returncode == 0, err + cluster.tail()
        got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(got) == 4 and all(r["status"] == "completed" for r in got), (got, err)
        # The live log reached the client, naming the lost executor.
        assert "lost while training " + victim_trial in err, err
        log = open(trials / victim_trial / "log.txt").read()
        assert "resuming" in log and "after epoch" in log, log
        executors = [line for line in log.splitlines() if "trains on executor" in line]
        assert len({line.split("trains on executor ")[1].split()[0] for line in executors}) == 2, log
        acc = EventAccumulator(str(trials / victim_trial))
        acc.Reload()
        assert [e.step for e in acc.Scalars("epoch_loss")] == [1, 2, 3, 4]
        # Both executors trained trials.
        assert "starts on" in open(cluster.logs[1]).read()
    finally:
        cluster.stop()


def test_a_restarted_driver_resumes_the_experiment_from_the_store(tmp_path, samples):
    """SIGKILL the driver in the middle of an experiment: the executors join the restarted
    driver on their own, and running the statement again keeps the finished trials and resumes
    the others from their checkpoints, with each epoch in TensorBoard once."""
    cluster = Cluster(tmp_path, slots=1)
    train = os.path.join(samples, "fashion", "train")
    sql = f"""CREATE EXPERIMENT lr OPTIONS (model_type = 'dnn_classifier',
                learning_rate = [0.001, 0.002, 0.003, 0.004], hidden_units = [64], epochs = 4,
                batch_size = 64, max_parallel_trials = 2)
              AS SELECT image_decode(content) AS image, label FROM read_images('{train}/')"""
    trials = tmp_path / "store" / "experiments" / "lr" / "trials"
    try:
        client = subprocess.Popen([QUIVER, "--store", cluster.store, "sql", "--cluster",
                                   cluster.address, sql],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 600
        while not list(trials.glob("*/checkpoints/*/state.json")):
            assert client.poll() is None and time.time() < deadline, cluster.tail()
            time.sleep(0.05)
        cluster.procs[0].kill()
        client.wait(timeout=60)
        assert client.returncode != 0 and cluster.address in client.stderr.read()
        log = cluster.root / "driver-again.log"
        cluster.procs[0] = subprocess.Popen(
            [QUIVER, "--store", cluster.store, "driver", "--listen", cluster.address],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ, "QUIVER_LOG": "info"})
        cluster.logs[0] = log
        wait_ready(cluster.port, 2, cluster.procs[0], log)
        proc = cluster.sql(sql)
        got = rows(proc)
        assert len(got) == 4 and all(r["status"] == "completed" for r in got), (got, proc.stderr)
        logs = [open(t / "log.txt").read() for t in sorted(trials.glob("trial-*"))]
        assert any("resuming" in text for text in logs), logs
        for t in sorted(trials.glob("trial-*")):
            acc = EventAccumulator(str(t))
            acc.Reload()
            assert [e.step for e in acc.Scalars("epoch_loss")] == [1, 2, 3, 4], t
    finally:
        cluster.stop()


def fashion_query(samples, split):
    folder = os.path.join(samples, "fashion", split)
    return f"SELECT image_decode(content) AS image, label FROM read_images('{folder}/')"


def metrics(store, model):
    path = os.path.join(store, "training", model, "v1", "metrics.jsonl")
    return [json.loads(line) for line in open(path)]


def test_two_data_parallel_workers_train_the_model_one_worker_does(tmp_path, samples):
    """CREATE MODEL ... workers = 2 trains on a gang of two executors, each on half of every
    batch with the gradients all-reduced over the ring. With the same global batch, seed, data
    order (the shuffle depends on the partition count, so both use 2) and SGD, it takes the steps
    one worker takes on the embedded engine: the same losses up to float summation order, and
    the same test accuracy."""
    cluster = Cluster(tmp_path, slots=1, flags=["--partitions", "2"])
    embedded = [QUIVER, "--store", str(tmp_path / "embedded"), "--partitions", "2", "sql",
                "--format", "json"]
    options = ("model_type = 'dnn_classifier', hidden_units = [128, 64], dropout = 0.0, "
               "optimizer = 'sgd', learning_rate = 0.05, epochs = 3, batch_size = 64, seed = 7")
    train = fashion_query(samples, "train")
    evaluate = "SELECT accuracy FROM ml_evaluate('{}', '{}')".format(
        "{}", fashion_query(samples, "test").replace("'", "''"))
    try:
        subprocess.run([*embedded, f"CREATE MODEL one OPTIONS ({options}) AS {train}"],
                       check=True, capture_output=True, timeout=600)
        proc = cluster.sql(f"CREATE MODEL two OPTIONS ({options}, workers = 2) AS {train}")
        two = rows(proc)
        assert two[0]["model"] == "two" and two[0]["version"] == 1 and two[0]["epochs"] == 3, two
        # Each executor trained one worker of the gang, and the client saw the live log.
        assert "2 workers on" in proc.stderr and "epoch 3/3" in proc.stderr, proc.stderr
        ranks = {line.split("worker ")[1].split()[0]
                 for log in cluster.logs[1:] for line in open(log).read().splitlines()
                 if ": worker " in line and " starts on " in line}
        assert ranks == {"0", "1"}, cluster.tail()
        m1 = metrics(str(tmp_path / "embedded"), "one")
        m2 = metrics(cluster.store, "two")
        assert [m["examples"] for m in m1] == [m["examples"] for m in m2] == [2000] * 3
        for a, b in zip(m1, m2):
            assert abs(a["loss"] - b["loss"]) < 1e-3 * a["loss"], (m1, m2)
        one = subprocess.run([*embedded, evaluate.format("one")], capture_output=True,
                             text=True, timeout=600)
        accuracy = [rows(one)[0]["accuracy"], rows(cluster.sql(evaluate.format("two")))[0]["accuracy"]]
        assert accuracy[0] > 0.6 and abs(accuracy[0] - accuracy[1]) <= 0.01, accuracy
        # A global batch that does not split evenly is named; so is workers = 2 without a cluster.
        proc = cluster.sql(f"CREATE MODEL three OPTIONS ({options}, workers = 2, batch_size = 65) "
                           f"AS {train}", check=False)
        assert proc.returncode != 0 and "multiple of workers = 2" in proc.stderr, proc.stderr
        proc = subprocess.run([*embedded, f"CREATE MODEL three OPTIONS ({options}, workers = 2) "
                               f"AS {train}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "run the statement on a cluster" in proc.stderr, proc.stderr
    finally:
        cluster.stop()


def test_a_gang_restarts_from_its_checkpoint_when_a_worker_is_killed(tmp_path, samples):
    """SIGKILL the executor of data-parallel worker 0 (the one that writes checkpoints) in the
    middle of epoch 2: every worker stops, the gang starts again on the executors left and
    resumes from epoch 1's checkpoint; each epoch is once in metrics and TensorBoard."""
    cluster = Cluster(tmp_path, executors=3, slots=1)
    sql = (f"CREATE MODEL dp OPTIONS (model_type = 'dnn_classifier', hidden_units = [256, 128], "
           f"epochs = 4, batch_size = 32, workers = 2) AS {fashion_query(samples, 'train')}")
    run = tmp_path / "store" / "training" / "dp" / "v1"
    try:
        client = subprocess.Popen([QUIVER, "--store", cluster.store, "sql", "--cluster",
                                   cluster.address, "--format", "json", sql],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 600
        while not (run / "checkpoints" / "epoch-0001" / "state.json").exists():
            assert client.poll() is None, client.stderr.read() + cluster.tail()
            assert time.time() < deadline, cluster.tail()
            time.sleep(0.02)
        victim = next(i for i, log in enumerate(cluster.logs)
                      if i > 0 and ": worker 0 starts on" in open(log).read())
        assert not (run / "checkpoints" / "epoch-0002").exists()
        cluster.procs[victim].kill()
        out, err = client.communicate(timeout=900)
        assert client.returncode == 0, err + cluster.tail()
        got = rows(subprocess.CompletedProcess([], 0, out, err))
        assert got[0]["epochs"] == 4, got
        assert "the gang restarts from the last checkpoint" in err, err
        # The cause names the loss: the coordinator's (the executor was lost) or, when the ring
        # breaks first, worker 1's (its send to worker 0, the killed one, failed).
        assert "lost while training" in err or "sending to worker 0" in err, err
        assert "resuming" in err and "after epoch 1" in err, err
        # The restarted gang ran on the two executors left.
        survivors = [log for i, log in enumerate(cluster.logs) if i not in (0, victim)]
        assert all(open(log).read().count(" starts on ") >= 1 for log in survivors)
        assert [m["epoch"] for m in metrics(cluster.store, "dp")] == [1, 2, 3, 4]
        acc = EventAccumulator(str(run))
        acc.Reload()
        assert [e.step for e in acc.Scalars("epoch_loss")] == [1, 2, 3, 4]
        evaluated = rows(cluster.sql(f"SELECT accuracy FROM ml_evaluate('dp', "
                                     f"'{fashion_query(samples, 'test').replace(chr(39), chr(39) * 2)}')"))
        assert evaluated[0]["accuracy"] > 0.6, evaluated
    finally:
        cluster.stop()
