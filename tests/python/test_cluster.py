"""Cluster mode on 127.0.0.1: a `quiver driver` and two `quiver executor` processes. The .slt
suite runs on the cluster with the same expected results as on the embedded engine, a
distributed hot-dog-style ETL writes TFRecords that TensorFlow reads, and a cluster under mutual
TLS refuses clients and executors without a certificate from its CA."""
import glob
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import (QUIVER, browse, cells, fashion_query, fault_env, finish, first_line,
                      kill_group, listing, metric, parse_address, parse_metrics, run, spawn,
                      spawn_logged, start_prometheus, stop_group, wait_for)


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def readyz(address, certs=None, path="/readyz"):
    """The text of the driver's /readyz, or of another of its HTTP paths (over mutual TLS with
    the client certificate in `certs`)."""
    if certs is None:
        url, context = f"http://{address}{path}", None
    else:
        url = f"https://{address}{path}"
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        context.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return r.read().decode()
    except Exception as e:  # 503 while executors join
        return str(e)


def make_certs(folder):
    run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), str(folder)], check=True)
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
    """A driver on a port it chose itself (it prints the address first on stdout) and
    `executors` executors; `faults[i]` arms fault points in executor i (see conftest.fault_env)."""

    def __init__(self, root, executors=2, slots=2, certs=None, flags=(), faults=None, owner="test"):
        self.root = root
        self.flags = list(flags)
        self.store = str(root / "store")
        self.certs = certs
        self.tls = node_tls(certs) if certs else []
        self.owner = owner
        self.procs = []
        self.logs = []
        self.start_driver("127.0.0.1:0")
        faults = faults or {}
        for i in range(executors):
            self.spawn(f"executor{i}", ["executor", "--driver", self.address, "--slots", str(slots),
                                        "--work-dir", str(root / f"work{i}"), *self.tls],
                       env=fault_env(*faults[i]) if i in faults else None)
        self.wait_ready(executors)

    def start_driver(self, listen, env=None, name="driver"):
        """Starts the driver (again, on the same address after a kill) as process 0."""
        proc = spawn_logged([QUIVER, "--store", self.store, *self.flags, "driver", "--listen",
                             listen, *self.tls], self.root, name, owner=self.owner,
                            env={**(env or os.environ), "QUIVER_LOG": "info"})
        log = pathlib.Path(proc.quiver_logs[1])
        line = first_line(proc)
        assert line.startswith("quiver driver listening on "), line + open(log).read()
        self.address = line.rsplit(" ", 1)[1]
        if self.procs:
            self.procs[0], self.logs[0] = proc, log
        else:
            self.procs.append(proc)
            self.logs.append(log)

    def wait_ready(self, executors, timeout=120):
        """Waits until the driver has `executors` live executors registered."""
        wait_for(lambda: f"ready: {executors} executors" in readyz(self.address, self.certs),
                 f"{executors} executors at the driver", timeout=timeout, proc=self.procs[0],
                 context=self.tail)

    def spawn(self, name, args, env=None):
        log = self.root / f"{name}.log"
        proc = spawn([QUIVER, "--store", self.store, *self.flags, *args], owner=self.owner,
                     stdout=open(log, "w"), stderr=subprocess.STDOUT,
                     env={**(env or os.environ), "QUIVER_LOG": "info"})
        self.procs.append(proc)
        self.logs.append(log)
        return log

    def sql(self, sql, check=True, tls=None):
        if tls is None:
            tls = client_tls(self.certs) if self.certs else []
        proc = run([QUIVER, "--store", self.store, "sql", "--cluster", self.address,
                    "--format", "json", *tls, sql])
        if check:
            assert proc.returncode == 0, proc.stderr + self.tail()
        return proc

    def tail(self):
        return "".join(f"\n--- {log.name}\n" + open(log).read()[-2000:] for log in self.logs)

    def stop(self):
        for p in self.procs:
            kill_group(p, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_group(p)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"), owner="fixture")
    yield c
    c.stop()


def rows(proc):
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def image_files(folder):
    return sorted(p for p in glob.glob(os.path.join(folder, "*", "*"))
                  if p.lower().endswith((".jpg", ".png")))


def test_slt_suite_runs_on_the_cluster_with_the_same_results(cluster):
    slt = os.environ.get("QUIVER_SLT_BIN")
    if not slt:
        pytest.fail("QUIVER_SLT_BIN must name the sqllogictests binary (scripts/test.sh sets it)")
    proc = run([slt], timeout=900, env={**os.environ, "QUIVER_SLT_CLUSTER": cluster.address},
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
    files = image_files(src)
    assert rows(proc) == [{"count": len(files)}]
    shards = sorted(glob.glob(str(out / "part-*")))
    assert shards
    # Nothing but the shards: the staging folder is gone.
    assert sorted(os.listdir(out)) == sorted(os.path.basename(s) for s in shards), os.listdir(out)
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shards)]
    assert len(examples) == len(files)
    by_path = {e.features.feature["path"].bytes_list.value[0].decode(): e for e in examples}
    assert set(by_path) == {"file://" + p for p in files}
    # The same query on the embedded engine gives the same pixels.
    local = tmp_path / "local"
    run([QUIVER, "--store", str(tmp_path / "lstore"), "sql",
         f"COPY ({query}) TO '{local}/' STORED AS TFRECORD OPTIONS (image_format 'raw')"], check=True)
    for r in tf.data.TFRecordDataset(sorted(glob.glob(str(local / "part-*")))):
        e = tf.train.Example.FromString(r.numpy())
        ours = by_path[e.features.feature["path"].bytes_list.value[0].decode()]
        assert ours.features.feature["label"] == e.features.feature["label"]
        a = np.frombuffer(ours.features.feature["image"].bytes_list.value[0], np.uint8)
        b = np.frombuffer(e.features.feature["image"].bytes_list.value[0], np.uint8)
        assert a.shape == (64 * 64 * 3,) and np.array_equal(a, b)


def test_a_failed_distributed_copy_names_the_file_and_leaves_nothing(cluster, samples, fixtures,
                                                                     tmp_path):
    """A bad image among good ones: the writers on both executors stop, the staged shards are
    removed (the client has the driver abort the write on every executor), and the error names
    the file, as on the embedded engine."""
    src = tmp_path / "images"
    shutil.copytree(os.path.join(samples, "photos", "train"), src)
    bad = src / sorted(os.listdir(src))[3] / "m_truncated.jpg"
    shutil.copy(os.path.join(fixtures, "bad", "broken", "truncated.jpg"), bad)
    out = tmp_path / "out"
    for _ in range(3):
        proc = cluster.sql(f"COPY (SELECT label, image_resize(image_decode(content), 200, 200) AS image "
                           f"FROM read_images('{src}/')) TO '{out}/' STORED AS TFRECORD", check=False)
        assert proc.returncode != 0, proc.stdout
        assert f"'file://{bad}'" in proc.stderr, proc.stderr + cluster.tail()
        assert listing(out) == [], listing(out)


def test_skipped_images_on_executors_are_listed_by_the_client(cluster, samples, fixtures, tmp_path):
    """image_decode(..., 'null') on the executors: the client lists every skipped file with its
    reason, once per statement (a second run lists them again, not twice)."""
    src = tmp_path / "images"
    shutil.copytree(os.path.join(samples, "photos", "train"), src)
    folders = sorted(os.listdir(src))
    bad = [src / folders[1] / "m_truncated.jpg", src / folders[-2] / "m_not_an_image.jpg"]
    shutil.copy(os.path.join(fixtures, "bad", "broken", "truncated.jpg"), bad[0])
    shutil.copy(os.path.join(fixtures, "bad", "broken", "not_an_image.jpg"), bad[1])
    for attempt in range(2):
        out = tmp_path / f"out{attempt}"
        proc = cluster.sql(f"COPY (SELECT label, image_decode(content, 'null') AS image "
                           f"FROM read_images('{src}/')) TO '{out}/' STORED AS TFRECORD")
        assert rows(proc) == [{"count": len(image_files(src))}], proc.stdout
        assert "skipped 2 undecodable images" in proc.stderr, proc.stderr + cluster.tail()
        for b in bad:
            assert proc.stderr.count(f"skipped file://{b}: cannot decode image") == 1, proc.stderr


def test_queries_spread_over_both_executors(cluster, samples):
    src = os.path.join(samples, "photos", "train")
    proc = cluster.sql(f"SELECT label, count(*) AS n, sum(image_width(content)) AS w "
                       f"FROM read_images('{src}/') GROUP BY label ORDER BY label")
    got = rows(proc)
    assert len(got) == 8 and sum(r["n"] for r in got) == len(image_files(src))
    ran = [open(log).read().count("Received task") for log in cluster.logs[1:]]
    assert all(n > 0 for n in ran), (ran, cluster.tail())


def scrape(address):
    """The /metrics of a driver or an executor's trainer port, parsed."""
    return parse_metrics(readyz(address, path="/metrics"))


def trainers(cluster):
    """Each executor's trainer address, the one it advertises to the driver, from its log."""
    return [parse_address(open(log).read(), r"executor trainer on ([0-9.]+:\d+)")
            for log in cluster.logs[1:]]


def test_the_driver_counts_jobs_and_tasks_for_prometheus(cluster, samples):
    before = scrape(cluster.address)
    src = os.path.join(samples, "photos", "test")
    for _ in range(2):
        cluster.sql(f"SELECT count(*) AS n FROM read_images('{src}/')")
    cluster.sql("SELECT * FROM no_such_table", check=False)
    after = scrape(cluster.address)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)
    assert delta("quiver_jobs_total", state="completed") == 2, (before, after)
    assert delta("quiver_jobs_total", state="submitted") == 2, (before, after)
    # A statement refused at planning is no job.
    assert delta("quiver_jobs_total", state="failed") == 0, (before, after)
    assert delta("quiver_job_duration_seconds_count") == 2
    assert delta("quiver_job_duration_seconds_sum") > 0
    # Each job's tasks (its scan's partitions and the final aggregate) finished on executors.
    tasks = delta("quiver_tasks_total", state="succeeded")
    assert tasks >= 4 and tasks % 2 == 0, (before, after)
    assert delta("quiver_task_duration_seconds_count", state="succeeded") == tasks
    assert delta("quiver_tasks_total", state="failed") == 0
    assert after[("quiver_pending_tasks", frozenset())] == 0
    assert after[("process_resident_memory_bytes", frozenset())] > 0


def test_a_prometheus_server_scrapes_the_driver_and_the_executors(cluster, samples, tmp_path):
    # Each executor serves /metrics on its trainer port, which the driver lists for
    # Prometheus's HTTP service discovery.
    executors = trainers(cluster)
    assert len(executors) == 2
    groups = json.loads(readyz(cluster.address, path="/sd/executors"))
    assert sorted(t for g in groups for t in g["targets"]) == sorted(executors), groups
    assert all(g["labels"]["device"] == "cpu" and g["labels"]["executor"] for g in groups), groups
    proc, query = start_prometheus(tmp_path, [cluster.address],
                                   discover=f"http://{cluster.address}/sd/executors")
    src = os.path.join(samples, "photos", "test")
    cluster.sql(f"SELECT label, count(*) AS n FROM read_images('{src}/') GROUP BY label")

    def value(expr):
        result = query(expr)
        return float(result[0]["value"][1]) if result else 0.0
    wait_for(lambda: value('quiver_tasks_total{job="quiver",state="succeeded"}') > 0,
             "Prometheus to scrape the driver's task counts", timeout=60, proc=proc)
    assert value('quiver_jobs_total{state="completed"}') > 0
    assert value("sum(quiver_task_duration_seconds_count)") > 0
    wait_for(lambda: value('count(up{job="discovered"} == 1)') == 2,
             "both discovered executors up", timeout=60, proc=proc)
    assert value('up{job="quiver"}') == 1
    for executor in executors:
        assert value(f'process_resident_memory_bytes{{job="discovered",instance="{executor}",'
                     f'device="cpu"}}') > 0
    stop_group(proc, timeout=30)


def test_cluster_scans_read_images_in_chunks_and_keep_their_order(tmp_path, samples):
    """An executor's scan keeps the planned file order (preserve_order survives the plan's
    encoding): rows come back in the embedded engine's order, and each partition's files are
    read in chunks (the executors trace every chunk read at the read_images fault point)."""
    trace = tmp_path / "reads.txt"
    cluster = Cluster(tmp_path, flags=["--partitions", "2"],
                      faults={i: [f"read_images=trace:{trace}"] for i in range(2)})
    try:
        src = os.path.join(samples, "fashion", "test")
        files = image_files(src)
        got = [r["path"] for r in rows(cluster.sql(f"SELECT path FROM read_images('{src}/')"))]
        assert sorted(got) == ["file://" + f for f in files]
        # Each of the 2 partitions (contiguous runs of the sorted files) comes back in order,
        # whichever comes first: at most one place where the order goes back.
        descents = sum(1 for a, b in zip(got, got[1:]) if b < a)
        assert descents <= 1, descents
        # Only `path` is read: no chunk reads at all. With the images' bytes, a few per partition.
        assert not trace.exists()
        total = rows(cluster.sql(f"SELECT sum(image_width(content)) AS n FROM read_images('{src}/')"))
        assert total[0]["n"] == 28 * len(files)
        reads = open(trace).read().splitlines()
        assert 0 < len(reads) < len(files) / 2, (len(reads), len(files))
    finally:
        cluster.stop()


def test_unreachable_driver_is_named(tmp_path):
    # A port this test holds, bound but not listening: connections to it are refused, and
    # nothing else can take it while the test runs.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        proc = run([QUIVER, "--store", str(tmp_path), "sql", "--cluster", f"127.0.0.1:{port}",
                    "SELECT 1"], timeout=120)
    assert proc.returncode != 0
    assert f"127.0.0.1:{port}" in proc.stderr, proc.stderr


def test_bad_cluster_options_are_named(tmp_path):
    proc = run([QUIVER, "executor", "--driver", "127.0.0.1:1", "--device", "tpu"], timeout=60)
    assert proc.returncode != 0 and "--device 'tpu'" in proc.stderr, proc.stderr
    conf = tmp_path / "cluster.toml"
    conf.write_text('[executor]\nslotz = 3\n')
    proc = run([QUIVER, "--config", str(conf), "executor"], timeout=60)
    assert proc.returncode != 0 and "slotz" in proc.stderr and "cluster.toml" in proc.stderr, proc.stderr
    proc = run([QUIVER, "driver"], timeout=60)
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
        assert len(got) == 8 and sum(r["n"] for r in got) == len(image_files(src))
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
        # Executors without a certificate from the cluster's CA never join: each says once
        # that the handshake failed and what to check, and backs off instead of retrying fast.
        for name, flags in [("plain", []), ("other", node_tls(other))]:
            cluster.spawn(f"intruder-{name}", ["executor", "--driver", cluster.address,
                                               "--work-dir", str(tmp_path / name), *flags])
        intruders = cluster.logs[-2:]
        for log in intruders:
            wait_for(lambda: "retrying in" in open(log).read(), f"{log.name} to give up once",
                     timeout=120, context=lambda: open(log).read()[-2000:])
        plain, foreign = (open(log).read() for log in intruders)
        assert "TLS" in plain and "--tls" in plain, plain[-2000:]
        assert "certificate" in foreign and "http://" not in foreign, foreign[-2000:]
        status = readyz(cluster.address, certs)
        assert status.startswith("ready: 2 executors") and status.count("/cpu") == 2, status
        # /readyz and /metrics refuse a client without a certificate too.
        assert "ready" not in readyz(cluster.address, None)
        assert "quiver_jobs_total" in readyz(cluster.address, certs, "/metrics")
        assert "quiver_jobs_total" not in readyz(cluster.address, None, "/metrics")
        # So does the console on the driver's port.
        queries = readyz(cluster.address, certs, "/queries")
        assert "completed" in queries and "<h1>Queries</h1>" in queries, queries
        assert "<h1>" not in readyz(cluster.address, None, "/queries")
    finally:
        cluster.stop()


@pytest.mark.timeout(180)  # 23 s measured, 20 s of it Ballista's heartbeat timeout
def test_a_killed_executor_s_tasks_run_again_elsewhere(tmp_path, samples):
    """Executor 1 SIGKILLs itself (a fault point) when it starts reading its first images:
    Ballista resets its tasks after the heartbeat timeout and the result is complete."""
    marker = tmp_path / "killed"
    cluster = Cluster(tmp_path, faults={1: [f"read_images=kill-once:{marker}"]})
    try:
        src = os.path.join(samples, "photos", "train")
        one = (f"SELECT label, image_resize(image_decode(content), 400, 400) AS im "
               f"FROM read_images('{src}/')")
        copies = 12
        query = (f"SELECT label, count(*) AS n, sum(image_width(im)) AS w "
                 f"FROM ({' UNION ALL '.join([one] * copies)}) GROUP BY label ORDER BY label")
        proc = cluster.sql(query)
        assert marker.exists() and cluster.procs[2].poll() is not None, cluster.tail()
        got = rows(proc)
        assert sum(r["n"] for r in got) == copies * len(image_files(src)), got
        assert all(r["w"] == 400 * r["n"] for r in got), got
        driver = open(cluster.logs[0]).read()
        assert "on lost Executor" in driver and "heartbeat timed out" in driver, cluster.tail()
    finally:
        cluster.stop()


def test_a_restarted_executor_on_the_same_port_joins_as_a_new_executor(tmp_path):
    """Executor ids are unique per process start: an executor started again on the port of
    one that was killed registers as a new executor (it is not refused as 'already
    registered')."""
    cluster = Cluster(tmp_path, executors=1)
    try:
        [old] = [line.split()[0] for line in readyz(cluster.address).splitlines()[1:]]
        port = old.split(":")[1].split("-")[0]
        kill_group(cluster.procs[1])
        cluster.spawn("executor-again", ["executor", "--driver", cluster.address, "--port", port,
                                         "--work-dir", str(tmp_path / "again")])

        def new_id():
            ids = [line.split()[0] for line in readyz(cluster.address).splitlines()[1:]]
            return [i for i in ids if i != old and f":{port}-" in i]
        [new] = wait_for(new_id, "the restarted executor in /readyz", timeout=120,
                         proc=cluster.procs[-1], context=cluster.tail)
        assert new.endswith("/cpu") and new != old
        assert "already registered" not in cluster.tail()
    finally:
        cluster.stop()


def test_experiment_trials_run_on_executors_and_move_when_one_is_killed(tmp_path, samples):
    """A 4-trial experiment across 2 executors (one slot each): the driver's coordinator places
    the trials, the client sees the live log, and executor 1 SIGKILLs itself (a fault point)
    right after its first trial's first checkpoint; that trial resumes from the checkpoint on
    the other executor."""
    marker = tmp_path / "killed"
    cluster = Cluster(tmp_path, slots=1, faults={1: [f"checkpoint@*=kill-once:{marker}"]})
    train = os.path.join(samples, "fashion", "train")
    test = os.path.join(samples, "fashion", "test")
    sql = f"""CREATE EXPERIMENT lr OPTIONS (model_type = 'dnn_classifier',
                learning_rate = [0.001, 0.002, 0.003, 0.004], hidden_units = [64], epochs = 4,
                batch_size = 64, max_parallel_trials = 2,
                validation_query = 'SELECT image_decode(content) AS image, label
                                    FROM read_images(''{test}/'')')
              AS SELECT image_decode(content) AS image, label FROM read_images('{train}/')"""
    trials = tmp_path / "store" / "experiments" / "lr" / "trials"
    try:
        proc = cluster.sql(sql)
        assert marker.exists() and cluster.procs[2].poll() is not None, cluster.tail()
        got = rows(proc)
        err = proc.stderr
        assert len(got) == 4 and all(r["status"] == "completed" for r in got), (got, err)
        started = [line for line in open(cluster.logs[2]).read().splitlines()
                   if ": trial-" in line and " starts on " in line]
        assert len(started) == 1, started
        victim_trial = "trial-" + started[0].split("trial-")[1].split()[0]
        # The live log reached the client, naming the lost executor.
        assert "lost while training " + victim_trial in err, err
        log = open(trials / victim_trial / "log.txt").read()
        assert "resuming" in log and "after epoch 1" in log, log
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
    """The driver SIGKILLs itself (a fault point) when it hears of the first finished epoch:
    the executors join the restarted driver on their own, and running the statement again keeps
    the finished trials and resumes the others from their checkpoints, with each epoch in
    TensorBoard once."""
    cluster = Cluster(tmp_path, slots=1)
    train = os.path.join(samples, "fashion", "train")
    sql = f"""CREATE EXPERIMENT lr OPTIONS (model_type = 'dnn_classifier',
                learning_rate = [0.001, 0.002, 0.003, 0.004], hidden_units = [64], epochs = 4,
                batch_size = 64, max_parallel_trials = 2)
              AS SELECT image_decode(content) AS image, label FROM read_images('{train}/')"""
    trials = tmp_path / "store" / "experiments" / "lr" / "trials"
    try:
        # The first driver ran without the fault: start one that has it on the same port.
        address = cluster.address
        stop_group(cluster.procs[0])
        cluster.start_driver(address, env=fault_env("coordinator_epoch@*/epoch-1=kill"),
                             name="driver-faulty")
        cluster.wait_ready(2)
        proc = cluster.sql(sql, check=False)
        assert proc.returncode != 0 and cluster.address in proc.stderr, proc.stderr
        assert cluster.procs[0].wait(timeout=60) == -9, cluster.tail()
        assert list(trials.glob("*/checkpoints/*/state.json")), cluster.tail()
        cluster.start_driver(address, name="driver-again")
        cluster.wait_ready(2)
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
        run([*embedded, f"CREATE MODEL one OPTIONS ({options}) AS {train}"], check=True)
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
        # The executors' /metrics: worker 0 counted every global batch, and its loss and
        # accuracy gauges hold the last epoch's means.
        run_url = "file://" + os.path.join(cluster.store, "training", "two", "v1", "")
        scraped = [scrape(t) for t in trainers(cluster)]
        examples = [metric(s, "quiver_training_examples_total", run=run_url) for s in scraped]
        assert sorted(examples) == [0, 6000], (examples, run_url, scraped)
        worker0 = scraped[examples.index(6000)]
        assert metric(worker0, "quiver_training_epoch", run=run_url) == 3
        for gauge, key in [("quiver_training_loss", "loss"), ("quiver_training_accuracy", "accuracy")]:
            got = metric(worker0, gauge, run=run_url)
            assert abs(got - m2[-1][key]) < 1e-9 + 1e-6 * abs(m2[-1][key]), (gauge, got, m2[-1])
        one = run([*embedded, evaluate.format("one")])
        accuracy = [rows(one)[0]["accuracy"], rows(cluster.sql(evaluate.format("two")))[0]["accuracy"]]
        assert accuracy[0] > 0.6 and abs(accuracy[0] - accuracy[1]) <= 0.01, accuracy
        # A global batch that does not split evenly is named; so is workers = 2 without a cluster.
        proc = cluster.sql(f"CREATE MODEL three OPTIONS ({options}, workers = 2, batch_size = 65) "
                           f"AS {train}", check=False)
        assert proc.returncode != 0 and "multiple of workers = 2" in proc.stderr, proc.stderr
        proc = run([*embedded, f"CREATE MODEL three OPTIONS ({options}, workers = 2) AS {train}"],
                   timeout=120)
        assert proc.returncode != 0 and "run the statement on a cluster" in proc.stderr, proc.stderr
    finally:
        cluster.stop()


def test_a_gang_restarts_from_its_checkpoint_when_a_worker_is_killed(tmp_path, samples):
    """The executor of data-parallel worker 0 (the one that writes checkpoints) SIGKILLs itself
    (a fault point) as epoch 2 starts: every worker stops, the gang starts again on the
    executors left and resumes from epoch 1's checkpoint; each epoch is once in metrics and
    TensorBoard."""
    marker = tmp_path / "killed"
    fault = [f"epoch_start@*/rank-0/epoch-2=kill-once:{marker}"]
    cluster = Cluster(tmp_path, executors=3, slots=1, faults={i: fault for i in range(3)})
    sql = (f"CREATE MODEL dp OPTIONS (model_type = 'dnn_classifier', hidden_units = [256, 128], "
           f"epochs = 4, batch_size = 32, workers = 2) AS {fashion_query(samples, 'train')}")
    run_dir = tmp_path / "store" / "training" / "dp" / "v1"
    try:
        proc = cluster.sql(sql)
        err = proc.stderr
        assert marker.exists(), cluster.tail()
        [victim] = [i for i, p in enumerate(cluster.procs) if i > 0 and p.poll() is not None]
        assert ": worker 0 starts on" in open(cluster.logs[victim]).read()
        got = rows(proc)
        assert got[0]["epochs"] == 4, got
        assert "the gang restarts from the last checkpoint" in err, err
        # The cause names the killed worker's executor, whoever noticed first: the coordinator
        # (the executor was lost) or worker 1, whose stream to or from worker 0 broke.
        victim_id = re.search(r"worker 0 trains on executor (\S+)", err).group(1)
        [cause] = [line for line in err.splitlines() if "the gang restarts" in line]
        assert victim_id in cause and "worker" in cause, err
        assert "resuming" in err and "after epoch 1" in err, err
        # The restarted gang ran on the two executors left.
        survivors = [log for i, log in enumerate(cluster.logs) if i not in (0, victim)]
        assert all(open(log).read().count(" starts on ") >= 1 for log in survivors)
        assert [m["epoch"] for m in metrics(cluster.store, "dp")] == [1, 2, 3, 4]
        acc = EventAccumulator(str(run_dir))
        acc.Reload()
        assert [e.step for e in acc.Scalars("epoch_loss")] == [1, 2, 3, 4]
        evaluated = rows(cluster.sql(f"SELECT accuracy FROM ml_evaluate('dp', "
                                     f"'{fashion_query(samples, 'test').replace(chr(39), chr(39) * 2)}')"))
        assert evaluated[0]["accuracy"] > 0.6, evaluated
    finally:
        cluster.stop()


def page(address, path):
    """A page of the driver's console."""
    return readyz(address, path="/" + path)


def test_the_driver_console_follows_a_query_and_its_executors(tmp_path, samples):
    """A query whose reads pause on the executors (a fault point): the driver's console shows
    it running with its stages and tasks, then completed with the rows it wrote; the executors
    page shows each executor with its slots and running tasks, and the killed one as lost."""
    paused = tmp_path / "paused"
    pause = [f"read_images=pause:{paused}"]
    cluster = Cluster(tmp_path, faults={0: pause, 1: pause})
    try:
        ids = sorted(line.split()[0] for line in readyz(cluster.address).splitlines()[1:])
        src = os.path.join(samples, "photos", "train")
        query = (f"SELECT label, count(*) AS n, sum(image_width(content)) AS w "
                 f"FROM read_images('{src}/') GROUP BY label ORDER BY label")
        proc = spawn_logged([QUIVER, "--store", cluster.store, "sql", "--cluster",
                             cluster.address, "--format", "json", query], tmp_path, "query")
        wait_for(paused.exists, "a task to read images", proc=proc)
        queries = page(cluster.address, "queries")
        assert '<meta http-equiv="refresh" content="2">' in queries
        [[job, _, state, _, _, stages]] = cells(queries, "grid")[1:]
        assert state == "running" and stages.startswith("0/"), queries
        running = page(cluster.address, f"queries/{job}")
        tasks = cells(running, "grid tasks")
        assert {t[2] for t in tasks[1:] if t[3] == "running"} & set(ids), tasks
        assert "AggregateExec" in running
        executors = {r[0]: r for r in cells(page(cluster.address, "executors"), "grid")[1:]}
        assert sorted(executors) == ids
        assert [executors[i][1] for i in ids] == ["live", "live"], executors
        assert [executors[i][4] for i in ids] == ["2", "2"], executors
        assert sum(int(executors[i][5]) for i in ids) >= 1, executors
        assert browse(f"http://{cluster.address}/queries/{job}", tmp_path / "query.png") == []
        paused.unlink()
        out, err = finish(proc, timeout=300)
        assert proc.returncode == 0, err + cluster.tail()
        result = rows(type("P", (), {"stdout": out}))
        done = page(cluster.address, f"queries/{job}")
        assert 'http-equiv="refresh"' not in done
        stages = cells(done, "grid stages")[1:]
        assert len(stages) >= 2 and {s[1] for s in stages} == {"successful"}, stages
        # The last stage wrote the result's rows; every task ran on a registered executor.
        assert stages[-1][4] == str(len(result)), (stages, result)
        tasks = [t for t in re.findall(r"<code>([^<]+)</code>", done) if "/" in t]
        assert tasks and set(tasks) <= set(ids), (tasks, ids)
        # A killed executor is listed as lost once its heartbeat is older than the timeout.
        kill_group(cluster.procs[2])
        wait_for(lambda: "lost" in page(cluster.address, "executors"), "executor 1 to be lost",
                 timeout=120, proc=cluster.procs[0], context=cluster.tail)
        executors = {r[0]: r[1] for r in cells(page(cluster.address, "executors"), "grid")[1:]}
        assert executors == {ids[0]: "live", ids[1]: "lost"} or executors == {
            ids[0]: "lost", ids[1]: "live"}, executors
    finally:
        cluster.stop()
