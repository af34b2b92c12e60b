"""Batch jobs end to end: `quiver job run` of the example job (ETL → feature statistics →
CREATE MODEL), live logs followed from another process, retries, cancellation, the driver's
schedule with max_active_runs, a driver SIGKILLed mid-run and restarted, bad job files."""
import json
import os
import time
from datetime import datetime

import pytest

from conftest import QUIVER, fault_env, output, run, spawn_logged, stop_group, wait_for

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EXAMPLE = os.path.join(ROOT, "examples", "jobs", "fashion_nightly.toml")


def cli(store, *args, check=True, timeout=300):
    proc = run([QUIVER, "--store", store, *args], timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"quiver {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def runs(store, job):
    proc = cli(store, "sql", "--format", "json",
               f"SELECT * FROM job_runs('{job}') ORDER BY started, run_id")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def ts(text):
    """Seconds since the epoch of a UTC timestamp as quiver prints it in JSON."""
    return datetime.fromisoformat(text).timestamp()


def write_job(folder, name, body):
    path = os.path.join(folder, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f'name = "{name}"\n' + body)
    return path


def test_example_job_runs_etl_stats_and_create_model(tmp_path, samples):
    store, out = str(tmp_path / "store"), str(tmp_path / "out")
    proc = cli(store, "job", "run", EXAMPLE, "-p", f"data={samples}/fashion", "-p",
               f"out={out}/${{run_date}}", "-p", "epochs=2")
    assert "step 'train' succeeded" in proc.stderr
    [run] = runs(store, "fashion_nightly")
    assert run["status"] == "succeeded" and run["trigger"] == "manual"
    assert [(s["name"], s["status"], s["attempts"]) for s in run["step_details"]] == [
        ("etl", "succeeded", 1), ("feature_stats", "succeeded", 1), ("train", "succeeded", 1)]
    # The parameters were substituted: shards under the run's date, the model registered.
    shards = os.listdir(os.path.join(out, run["run_date"], "train"))
    assert shards and all(".tfrecord" in s for s in shards)
    models = cli(store, "sql", "--format", "json", "SHOW MODELS").stdout
    assert '"name":"fashion_nightly_dnn"' in models
    # The run's log in the store holds every step's output, training epochs included.
    log = cli(store, "job", "logs", "fashion_nightly").stdout
    assert "epoch 2/2" in log and "image.brightness" in log and "| accuracy |" in log
    listing = cli(store, "job", "list", "--format", "json").stdout
    assert '"last_status":"succeeded"' in listing
    # An unknown parameter is refused before anything runs.
    proc = cli(store, "job", "run", EXAMPLE, "-p", "nope=1", check=False)
    assert proc.returncode != 0 and "has no parameter 'nope'" in proc.stderr
    assert len(runs(store, "fashion_nightly")) == 1


def test_failing_step_retries_then_fails_with_its_error_and_logs_are_live(tmp_path):
    store = str(tmp_path / "store")
    job = write_job(str(tmp_path), "flaky", """
[[steps]]
name = "ok"
sql = "SELECT 1 AS one"
[[steps]]
name = "broken"
sql = "SELECT * FROM missing_table"
retries = 2
retry_delay_seconds = 2
[[steps]]
name = "never"
sql = "SELECT 2"
""")
    # The run pauses (a fault point) before the broken step's second attempt: the first
    # attempt's failure is in the log, read from another process while the run goes on.
    paused = tmp_path / "paused"
    run_proc = spawn_logged([QUIVER, "--store", store, "job", "run", job], tmp_path, "run",
                            env=fault_env(f"job_step@flaky/broken/attempt-2=pause:{paused}"))
    wait_for(paused.exists, "the second attempt", proc=run_proc)
    log = cli(store, "job", "logs", "flaky").stdout
    assert run_proc.poll() is None, "the log must be readable while the run is going on"
    assert "attempt 1 failed" in log and "retrying in 2s" in log and "attempt 3" not in log, log
    paused.unlink()
    follow = cli(store, "job", "logs", "flaky", "--follow", timeout=60).stdout
    assert run_proc.wait(timeout=60) != 0
    assert "step 'broken' failed after 3 attempt(s)" in follow
    assert follow.rstrip().endswith("failed")
    [run] = runs(store, "flaky")
    assert run["status"] == "failed" and run["attempts"] == 4
    assert run["current_step"] == "broken" and "missing_table" in run["error"]
    steps = {s["name"]: s for s in run["step_details"]}
    assert steps["ok"]["status"] == "succeeded"
    assert steps["broken"]["attempts"] == 3 and "missing_table" in steps["broken"]["error"]
    assert steps["never"]["status"] == "skipped"
    assert run["seconds"] >= 4


def test_cancel_stops_a_running_run(tmp_path):
    store = str(tmp_path / "store")
    job = write_job(str(tmp_path), "slow", """
[[steps]]
sql = "SELECT * FROM missing_table"
retries = 5
retry_delay_seconds = 60
""")
    run_proc = spawn_logged([QUIVER, "--store", store, "job", "run", job], tmp_path, "run")
    # Cancel while the run waits 60 s for its second attempt: it ends well before that.
    wait_for(lambda: "attempt 1 failed" in cli(store, "job", "logs", "slow", check=False).stdout,
             "the first attempt to fail", proc=run_proc)
    proc = cli(store, "job", "cancel", "slow")
    assert "cancelled" in proc.stdout
    assert run_proc.wait(timeout=45) != 0
    [run] = runs(store, "slow")
    assert run["status"] == "cancelled" and "quiver job cancel" in run["error"]
    proc = cli(store, "job", "cancel", "slow", check=False)
    assert proc.returncode != 0 and "no running runs" in proc.stderr


def start_driver(store, folder, name, *extra, env=None):
    """`quiver driver --jobs folder`, its output in the files `name`.out and .err beside the
    store; returns it and a function that reads its log (stderr)."""
    proc = spawn_logged([QUIVER, "--store", store, "driver", "--jobs", folder, "--tick-ms", "50",
                         *extra], os.path.dirname(store), name, env=env)
    return proc, lambda: output(proc)[1]


def test_schedule_fires_every_second_and_respects_max_active_runs(tmp_path):
    store, folder = str(tmp_path / "store"), str(tmp_path / "jobs")
    os.makedirs(folder)
    write_job(folder, "tick", """
schedule = "* * * * * *"
[[steps]]
sql = "SELECT '${run_date}' AS d"
""")
    # Each run of this job takes about 2.5 s: one attempt, a pause, a second failing attempt.
    write_job(folder, "busy", """
schedule = "* * * * * *"
max_active_runs = 1
[[steps]]
sql = "SELECT * FROM missing_table"
retries = 1
retry_delay_seconds = 2.5
""")
    started = time.time()
    driver, log = start_driver(store, folder, "driver")
    wait_for(lambda: len(runs(store, "tick")) >= 5 and len(runs(store, "busy")) >= 2,
             "5 runs of tick and 2 of busy", proc=driver, timeout=120,
             context=lambda: log()[-3000:])
    stop_group(driver, timeout=60)
    elapsed = time.time() - started
    err = log()
    tick = runs(store, "tick")
    times = [r["scheduled_for"] for r in tick]
    assert all(r["status"] == "succeeded" and r["trigger"] == "schedule" for r in tick), err
    assert 5 <= len(tick) <= int(elapsed) + 1, (len(tick), err)
    assert len(set(times)) == len(times)
    # One run per second, none missed in between (also when a busy machine makes ticks late).
    seconds = [ts(t) for t in times]
    assert [b - a for a, b in zip(seconds, seconds[1:])] == [1.0] * (len(seconds) - 1)
    busy = runs(store, "busy")
    assert 2 <= len(busy) <= elapsed / 2.5 + 1, err
    for a, b in zip(busy, busy[1:]):
        assert ts(a["ended"]) <= ts(b["started"]), "max_active_runs = 1: runs must not overlap"
    assert all(r["attempts"] == 2 for r in busy if r["status"] == "failed")
    assert "skipping the run" in err
    # Stopping the driver stops the run in progress, recorded as interrupted.
    assert busy[-1]["status"] in ("failed", "interrupted")


def test_driver_killed_mid_run_is_recorded_as_interrupted_and_schedule_goes_on(tmp_path):
    store, folder = str(tmp_path / "store"), str(tmp_path / "jobs")
    os.makedirs(folder)
    write_job(folder, "nightly", """
schedule = "*/2 * * * * *"
catchup = "latest"
[[steps]]
name = "long"
sql = "SELECT * FROM missing_table"
retries = 10
retry_delay_seconds = 1
""")
    # The driver SIGKILLs itself (a fault point) as the first run's second attempt starts.
    driver, log = start_driver(store, folder, "driver",
                               env=fault_env("job_step@nightly/long/attempt-2=kill"))
    assert driver.wait(timeout=120) == -9, log()
    killed_at = time.time()
    [first] = runs(store, "nightly")
    assert first["status"] == "running", "the store still says running: nobody has noticed yet"
    log_before = cli(store, "job", "logs", "nightly").stdout
    assert "attempt 1 failed" in log_before
    # Let a scheduled time (every even second) pass while no driver runs.
    missed = (killed_at // 2 + 1) * 2
    wait_for(lambda: time.time() > missed, f"the scheduled time {missed} to pass", timeout=5)
    driver, log = start_driver(store, folder, "driver-again")
    wait_for(lambda: len(runs(store, "nightly")) >= 2, "the catch-up run", proc=driver,
             context=lambda: log()[-3000:])
    stop_group(driver, timeout=60)
    err = log()
    all_runs = runs(store, "nightly")
    first = next(r for r in all_runs if r["run_id"] == first["run_id"])
    assert first["status"] == "interrupted", err
    assert "stopped" in first["error"] and first["step_details"][0]["status"] == "interrupted"
    # Nothing committed is lost: the log written before the kill is still there.
    assert cli(store, "job", "logs", "nightly", first["run_id"]).stdout.startswith(log_before)
    ids = [r["run_id"] for r in all_runs]
    assert len(set(ids)) == len(ids), "no scheduled time runs twice"
    later = [r for r in all_runs if r["run_id"] != first["run_id"]]
    assert later, err
    # catchup = "latest": the newest time missed while no driver ran is run first.
    catchup = later[0]
    missed_at = ts(catchup["scheduled_for"])
    assert killed_at - 2 <= missed_at <= ts(catchup["started"]), (catchup, killed_at)
    assert "missed since" in err
    assert all(r["status"] == "interrupted" for r in later), later
    assert "the driver was stopped" in later[-1]["error"]


def test_driver_reloads_changed_new_and_removed_job_files(tmp_path):
    store, folder = str(tmp_path / "store"), str(tmp_path / "jobs")
    os.makedirs(folder)
    every_second = 'schedule = "* * * * * *"\n[[steps]]\nsql = "SELECT \'{}\' AS version"\n'
    write_job(folder, "changing", every_second.format("first"))
    gone = write_job(folder, "gone", every_second.format("x"))
    driver, log = start_driver(store, folder, "driver", "--reload-seconds", "0.5")
    context = lambda: log()[-3000:]  # noqa: E731
    wait_for(lambda: len(runs(store, "changing")) >= 2, "2 runs of the first version",
             proc=driver, context=context)
    write_job(folder, "changing", every_second.format("second"))
    write_job(folder, "added", every_second.format("new"))
    os.remove(gone)
    wait_for(lambda: "was removed" in log(), "the removal to be noticed", proc=driver,
             context=context)
    removed_seen = time.time()

    def versions():
        return [("second" if "| second" in cli(store, "job", "logs", "changing", r["run_id"]).stdout
                 else "first") for r in runs(store, "changing") if r["status"] == "succeeded"]
    wait_for(lambda: versions().count("second") >= 2 and len(runs(store, "added")) >= 2,
             "2 runs of the changed and the added job", proc=driver, context=context)
    stop_group(driver, timeout=60)
    err = log()
    assert "job changing: reloaded" in err and "was removed" in err, err
    # The runs of the first version, then those of the second: the reload took effect from
    # the next run on and for good.
    seen = versions()
    assert seen == sorted(seen) and "first" in seen, seen
    # The schedule went on through the reload: one run per second, none repeated.
    changing = runs(store, "changing")
    seconds = [ts(r["scheduled_for"]) for r in changing]
    assert [b - a for a, b in zip(seconds, seconds[1:])] == [1.0] * (len(seconds) - 1)
    assert all(ts(r["started"]) < removed_seen for r in runs(store, "gone"))


@pytest.mark.parametrize("body, message", [
    ('[[steps]]\npython = "train.py"\n', "line 2: step 'step-1': unknown step type 'python'"),
    ('schedule = "61 * * * *"\n[[steps]]\nsql = "SELECT 1"\n', "line 2: bad cron schedule"),
    ('[[steps]]\nfile = "missing.sql"\n', "line 2: step 'step-1': file 'missing.sql'"),
    ('include = ["bad_include.toml"]\n[[steps]]\nsql = "SELECT 1"\n',
     "line 2: cyclic include: bad_include.toml -> bad_include.toml"),
])
def test_bad_job_files_are_rejected_with_line_and_reason(tmp_path, body, message):
    path = write_job(str(tmp_path), "bad_include", body)
    proc = cli(str(tmp_path / "store"), "job", "check", path, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    proc = cli(str(tmp_path / "store"), "job", "run", path, check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert not os.path.exists(tmp_path / "store" / "jobs")
