"""Hyperparameter experiments through the CLI on real Fashion-MNIST images: the classic 6-trial
grid with 2 parallel slots, everything in the store and readable by TensorBoard (scalars and
HParams), trial logs followed live, and an experiment killed with SIGKILL that resumes to the
same results as an uninterrupted one."""
import glob
import itertools
import json
import os

import numpy as np
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import QUIVER, fault_env, finish, run, spawn_logged, wait_for
from test_models import run_sql


def fashion_sql(samples, name, options):
    train = os.path.join(samples, "fashion", "train")
    test = os.path.join(samples, "fashion", "test")
    return f"""CREATE EXPERIMENT {name} OPTIONS (model_type = 'dnn_classifier', {options},
                 validation_query = 'SELECT image_decode(content) AS image, label
                                     FROM read_images(''{test}/'')')
               AS SELECT image_decode(content) AS image, label FROM read_images('{train}/')"""


def hparams_of(accumulator):
    """The HParamsPluginData messages of an event file folder, by tag."""
    content = accumulator.PluginTagToContent("hparams")
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(data) for tag, data in content.items()}


def hparams_view(logdir):
    """What TensorBoard's HParams view shows for `logdir`: its session groups, through the
    plugin's own request handler."""
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    tb = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider)
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100,
                                               allowed_statuses=[0, 1, 2, 3])
    handler = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb),
                                          "", request)
    return {g.name: g for g in handler.run().session_groups}


def test_fashion_grid_with_two_slots(samples, tmp_path):
    sql = fashion_sql(samples, "grid", """learning_rate = [0.001, 0.005],
        dropout = [0.45, 0.5, 0.55], hidden_units = [64], epochs = 2, batch_size = 64,
        max_parallel_trials = 2""")
    # The last trial pauses (a fault point) as it starts: the experiment is running then.
    paused = tmp_path / "paused"
    proc = spawn_logged([QUIVER, "--store", str(tmp_path), "sql", "--format", "json", sql],
                        tmp_path, "experiment",
                        env=fault_env(f"epoch_start@*/trials/trial-0005/rank-0/epoch-1=pause:{paused}"))
    wait_for(paused.exists, "trial-0005 to start", proc=proc)
    # While it runs, every trial of the grid is in the trials table; follow the first one's log.
    live, _ = run_sql(tmp_path, "SELECT trial, status FROM experiment_trials('grid') ORDER BY trial")
    assert [r["trial"] for r in live] == [f"trial-000{i}" for i in range(6)], live
    assert {r["status"] for r in live} <= {"pending", "running", "completed"}, live
    assert live[5]["status"] == "running", live
    follow = run([QUIVER, "--store", str(tmp_path), "experiment", "logs", "grid",
                  "trial-0000", "--follow"], timeout=600)
    assert follow.returncode == 0, follow.stderr
    assert "attempt 1 on slot" in follow.stdout, follow.stdout
    assert "completed: val_accuracy" in follow.stdout, follow.stdout
    paused.unlink()
    out, err = finish(proc, timeout=900)
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    # 6 rows, one per combination of the grid, best first.
    assert len(rows) == 6, rows
    grid = set(itertools.product([0.001, 0.005], [0.45, 0.5, 0.55]))
    assert {(r["learning_rate"], r["dropout"]) for r in rows} == grid
    assert all(r["status"] == "completed" and r["epochs_trained"] == 2 for r in rows), rows
    objectives = [r["objective"] for r in rows]
    assert objectives == sorted(objectives, reverse=True)
    assert objectives[0] > 0.6, rows  # 10 classes: chance is 0.1
    assert "started on slot 0" in err and "started on slot 1" in err, err

    root = tmp_path / "experiments" / "grid"
    spec = json.load(open(root / "experiment.json"))
    assert spec["status"] == "completed"
    assert spec["best_trial"] == rows[0]["trial"]
    assert spec["model"].endswith("/models/grid/1/")
    card = json.load(open(tmp_path / "models" / "grid" / "1" / "model.json"))
    assert card["run"].endswith(f"/experiments/grid/trials/{rows[0]['trial']}/")

    # TensorBoard: the experiment's HParams summary at the root...
    acc = EventAccumulator(str(root))
    acc.Reload()
    experiment = hparams_of(acc)["_hparams_/experiment"].experiment
    assert {h.name for h in experiment.hparam_infos} == {"learning_rate", "dropout"}
    assert {m.name.tag for m in experiment.metric_infos} >= {"epoch_accuracy", "val_accuracy"}
    # ...and every trial's scalars and hyperparameters.
    for row in rows:
        trial = root / "trials" / row["trial"]
        for f in ("params.json", "result.json", "metrics.jsonl", "log.txt", "weights.safetensors",
                  "checkpoints/epoch-0002/state.json", "checkpoints/epoch-0002/model.bin"):
            assert (trial / f).exists(), (trial, f)
        assert glob.glob(str(trial / "events.out.tfevents.*"))
        acc = EventAccumulator(str(trial))
        acc.Reload()
        val = [e.value for e in acc.Scalars("val_accuracy")]
        assert len(val) == 2 and abs(val[-1] - row["val_accuracy"]) < 1e-6, (val, row)
        assert len(acc.Scalars("epoch_loss")) == 2
        start = hparams_of(acc)["_hparams_/session_start_info"].session_start_info
        assert start.hparams["learning_rate"].number_value == pytest.approx(row["learning_rate"])
        assert start.hparams["dropout"].number_value == pytest.approx(row["dropout"])
        assert start.group_name == row["trial"]

    # TensorBoard's HParams view: one session group per trial, its hyperparameters and metrics.
    groups = hparams_view(root)
    assert sorted(groups) == sorted(r["trial"] for r in rows), groups.keys()
    for row in rows:
        group = groups[row["trial"]]
        assert group.hparams["learning_rate"].number_value == pytest.approx(row["learning_rate"])
        metrics = {m.name.tag: m.value for m in group.metric_values}
        assert metrics["val_accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-6), metrics

    # The results are data: filter and order them with SQL.
    best, _ = run_sql(tmp_path, """SELECT trial, learning_rate FROM experiment_trials('grid')
                                   WHERE status = 'completed' ORDER BY val_accuracy DESC LIMIT 1""")
    assert best[0]["trial"] == rows[0]["trial"]
    shown, _ = run_sql(tmp_path, "SHOW EXPERIMENTS")
    assert shown[0]["name"] == "grid" and shown[0]["trials"] == 6, shown
    assert shown[0]["best_trial"] == rows[0]["trial"]

    # Re-running the same statement finishes at once from the store; other options are refused.
    again, proc = run_sql(tmp_path, sql)
    assert proc.stderr.count("in an earlier run: skipped") == 6, proc.stderr
    assert [r["trial"] for r in again] == [r["trial"] for r in rows]
    assert not (tmp_path / "models" / "grid" / "2").exists(), "registered twice"
    _, proc = run_sql(tmp_path, sql.replace("epochs = 2", "epochs = 3"), check=False)
    assert proc.returncode != 0 and "exists at" in proc.stderr and "other options" in proc.stderr
    assert json.load(open(root / "experiment.json"))["status"] == "completed"


def test_bad_experiments_are_refused(samples, tmp_path):
    cases = [
        ("learning_rate = 'uniform(0.001, 0.01)'", "grid search needs a list of values"),
        ("learning_rate = [0.001], colour = 3", "unknown option 'colour'"),
        ("learning_rate = [0.001, -1]", "searched option learning_rate"),
        ("learning_rate = [0.001], objective = 'f1'", "objective 'f1'"),
        ("learning_rate = [0.001], search = 'random', num_trials = 0", "num_trials must be"),
    ]
    for options, message in cases:
        _, proc = run_sql(tmp_path, fashion_sql(samples, "bad", options), check=False)
        assert proc.returncode != 0 and message in proc.stderr, (options, proc.stderr)
    _, proc = run_sql(tmp_path, "CREATE EXPERIMENT bad OPTIONS (model_type = 'dnn_classifier', "
                                "learning_rate = [0.001]) AS SELECT nope FROM missing", check=False)
    assert proc.returncode != 0 and "does not plan" in proc.stderr, proc.stderr
    assert not (tmp_path / "experiments").exists()
    _, proc = run_sql(tmp_path, "SELECT * FROM experiment_trials('ghost')", check=False)
    assert proc.returncode != 0 and "experiment 'ghost' does not exist" in proc.stderr


def trial_histories(root):
    return {os.path.basename(t): [json.loads(l) for l in open(os.path.join(t, "metrics.jsonl"))]
            for t in sorted(glob.glob(str(root / "trials" / "trial-*")))}


def test_killed_experiment_resumes_to_the_same_results(samples, tmp_path):
    options = """learning_rate = [0.001, 0.002, 0.003, 0.004], hidden_units = [64], epochs = 4,
                 batch_size = 64, max_parallel_trials = 2"""
    straight = tmp_path / "straight"
    rows, _ = run_sql(straight, fashion_sql(samples, "lr", options))
    assert len(rows) == 4

    killed = tmp_path / "killed"
    sql = fashion_sql(samples, "lr", options)
    # The process SIGKILLs itself (a fault point) after trial-0002's first checkpoint: with two
    # slots, trial-0002 starts only when an earlier trial has finished.
    proc = run([QUIVER, "--store", str(killed), "sql", sql],
               env=fault_env("checkpoint@*/trials/trial-0002/epoch-1=kill"))
    assert proc.returncode == -9, proc.stderr
    trials = killed / "experiments" / "lr" / "trials"
    done = sorted(p.parent.name for p in trials.glob("*/result.json"))
    running = [p.parents[2].name for p in trials.glob("*/checkpoints/*/state.json")
               if not (p.parents[2] / "result.json").exists()]
    assert done and "trial-0002" in running, (done, running)
    finished = {t: open(trials / t / "result.json").read() for t in done}

    rows, resumed = run_sql(killed, sql)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows), rows
    for t, before in finished.items():
        assert f"{t} completed in an earlier run: skipped" in resumed.stderr, resumed.stderr
        assert open(trials / t / "result.json").read() == before, f"{t} was rerun"
    for t in set(running) - set(done):
        log = open(trials / t / "log.txt").read()
        assert "resuming" in log and "after epoch" in log, log
        # One event file, each epoch once: TensorBoard shows no repeated steps.
        assert len(glob.glob(str(trials / t / "events.out.tfevents.*"))) == 1
        acc = EventAccumulator(str(trials / t))
        acc.Reload()
        assert [e.step for e in acc.Scalars("epoch_loss")] == [1, 2, 3, 4]

    a, b = trial_histories(straight / "experiments" / "lr"), trial_histories(killed / "experiments" / "lr")
    assert a.keys() == b.keys() and len(a) == 4
    for t in a:
        np.testing.assert_allclose([m["loss"] for m in a[t]], [m["loss"] for m in b[t]], rtol=1e-5,
                                   err_msg=t)
        np.testing.assert_allclose([m["val_accuracy"] for m in a[t]],
                                   [m["val_accuracy"] for m in b[t]], err_msg=t)
    best = lambda root: json.load(open(root / "experiments" / "lr" / "experiment.json"))["best_trial"]
    assert best(straight) == best(killed)


def test_experiment_in_a_shared_s3_store(samples, s3):
    """The shared store is a real S3 server (SeaweedFS): trials write their folders there and
    the trials table and logs are read back from it."""
    store = f"s3://{s3['bucket']}/shared/"
    env = {**os.environ, **s3["env"]}
    sql = fashion_sql(samples, "on_s3", "learning_rate = [0.001, 0.005], hidden_units = [32], "
                                         "epochs = 1, max_parallel_trials = 2")
    proc = run([QUIVER, "--store", store, "sql", "--format", "json", sql], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    keys = {o["Key"] for o in s3["client"].list_objects_v2(
        Bucket=s3["bucket"], Prefix="shared/")["Contents"]}
    for trial in ("trial-0000", "trial-0001"):
        for f in ("params.json", "log.txt", "metrics.jsonl", "result.json", "weights.safetensors",
                  "checkpoints/epoch-0001/state.json"):
            assert f"shared/experiments/on_s3/trials/{trial}/{f}" in keys, (trial, f, sorted(keys))
    assert "shared/experiments/on_s3/experiment.json" in keys
    assert "shared/models/on_s3/1/model.json" in keys
    listed = run([QUIVER, "--store", store, "experiment", "trials", "on_s3", "--format", "json"],
                 env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert [r["status"] for r in rows] == ["completed", "completed"], rows
    logs = run([QUIVER, "--store", store, "experiment", "logs", "on_s3", "trial-0001"], env=env,
               timeout=120)
    assert "completed: val_accuracy" in logs.stdout, logs.stdout + logs.stderr
