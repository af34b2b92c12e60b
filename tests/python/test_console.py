"""The web console (`quiver console --store URL`): its pages over a store's registry, fetched as
a browser fetches them, against the numbers SQL gives for the same store."""

import base64
import html
import json
import os
import re
import shutil
import ssl
import urllib.error
import urllib.request

import pytest

from conftest import (QUIVER, browse, cells, fashion_query, fault_env, finish, json_rows, output,
                      run, spawn_logged, stop_group, wait_for)

SCRIPT = "<script>alert(1)</script>"


def sql(store, statement):
    proc = run([QUIVER, "--store", str(store), "sql", "--format", "json", statement], timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json_rows(proc.stdout)


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def start(store, *flags):
    """A console on `store` on a free port: the process and its base URL."""
    proc = spawn_logged([QUIVER, "--store", str(store), "console", "--port", "0", *flags],
                        store, f"console{len(flags)}")
    wait_for(lambda: "quiver console on" in output(proc)[1], "the console's address",
             timeout=120, proc=proc, context=lambda: output(proc)[1][-2000:])
    return proc, re.search(r"quiver console on (https?://\S+/)", output(proc)[1]).group(1)


@pytest.fixture(scope="module")
def console(samples, tmp_path_factory):
    store = tmp_path_factory.mktemp("console")
    validation = fashion_query(samples, "test").replace("'", "''")
    # The training query carries markup, which every page must show as text.
    train = fashion_query(samples, "train") + f" WHERE label <> '{SCRIPT}'"
    sql(store, f"""CREATE MODEL shoes OPTIONS (model_type = 'dnn_classifier',
        hidden_units = [32], epochs = 3, batch_size = 64, seed = 3,
        validation_query = '{validation}') AS {train}""")
    sql(store, f"CREATE OR REPLACE MODEL shoes OPTIONS (model_type = 'dnn_classifier', hidden_units = [16], "
               f"epochs = 2, seed = 4) AS {fashion_query(samples, 'train')}")
    sql(store, f"""CREATE EXPERIMENT lr OPTIONS (model_type = 'dnn_classifier',
        learning_rate = [0.0005, 0.005, 0.05], hidden_units = [16], epochs = 2, seed = 5,
        validation_query = '{validation}') AS {fashion_query(samples, 'train')}""")
    proc, url = start(store)
    yield {"store": store, "url": url, "validation": fashion_query(samples, "test"),
           "train": fashion_query(samples, "train")}
    stop_group(proc, timeout=30)


def get(url, context=None):
    """(status, headers, text) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=30, context=context) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_the_models_page_shows_what_models_shows(console):
    status, headers, page = get(console["url"] + "models")
    assert status == 200, page
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    want = sql(console["store"], "SELECT * FROM models() ORDER BY name, version DESC")
    table = cells(page, "grid")
    assert table[0] == ["model", "version", "type", "classes", "epochs", "accuracy",
                        "val_accuracy", "created"]
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    assert [row[:7] for row in table[1:]] == [
        [r["name"], str(r["version"]), r["model_type"], str(r["classes"]), str(r["epochs"]),
         fmt(r.get("accuracy")), fmt(r.get("val_accuracy"))] for r in want]
    # The store and the newest version's link.
    assert str(console["store"]) in page
    status, _, latest = get(console["url"] + "models/shoes")
    assert status == 200 and "shoes · version 2" in latest


def test_a_version_page_draws_its_curves_and_its_evaluation(console):
    status, _, page = get(console["url"] + "models/shoes/1")
    assert status == 200, page
    # Loss and accuracy, training (solid) and validation (dashed), a point per epoch.
    charts = re.findall(r'<svg class="chart".*?</svg>', page, re.S)
    assert len(charts) == 3, page
    for chart in charts[:2]:
        lines = re.findall(r'<polyline points="([^"]*)"', chart)
        assert [len(p.split()) for p in lines] == [3, 3], chart
        assert chart.count('stroke-dasharray="6 3"') == 2  # the curve and its legend
    # The confusion matrix and per-class metrics equal ml_evaluate's on the validation query.
    evaluation = sql(console["store"], "SELECT * FROM ml_evaluate('shoes', 1, '{}')".format(
        console["validation"].replace("'", "''")))
    evaluation = [r for r in evaluation if r.get("label") is not None]  # not the overall row
    per_class = {r["label"]: r for r in evaluation}
    table = {row[0]: row[1:] for row in cells(page, "grid")[1:]}
    assert set(table) == set(per_class), (table, per_class)
    for label, r in per_class.items():
        assert table[label] == [f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                                f"{r['f1_score']:.4f}", str(r["support"])], (label, r)
    heatmap = re.search(r'<svg class="heatmap".*?</svg>', page, re.S).group(0)
    counts = [int(n) for n in re.findall(r">(\d+)</text>", heatmap)]
    assert counts == [n for r in evaluation for n in r["confusion"]], (counts, evaluation)
    # The version without a validation query has training curves only.
    _, _, second = get(console["url"] + "models/shoes/2")
    lines = re.findall(r'<polyline points="([^"]*)"', second)
    assert [len(p.split()) for p in lines] == [2, 2, 2], lines


def test_the_experiment_pages_show_what_the_trials_table_shows(console):
    status, _, page = get(console["url"] + "experiments")
    assert status == 200, page
    (want,) = sql(console["store"], "SELECT * FROM experiments()")
    assert cells(page, "grid")[1] == [
        "lr", want["status"], "dnn_classifier", "maximize val_accuracy", "3",
        want["best_trial"], f"{want['best_value']:.4f}"]
    trials = sql(console["store"], "SELECT * FROM experiment_trials('lr') ORDER BY objective DESC")
    status, _, page = get(console["url"] + "experiments/lr?sort=objective&desc=1")
    assert status == 200, page
    table = cells(page, "grid trials")
    assert table[0] == ["trial", "generation", "learning_rate", "status", "objective", "epochs",
                        "val_accuracy", "seconds"]
    assert [(r[0], r[2], r[3], r[4]) for r in table[1:]] == [
        (t["trial"] + (" ★" if t["trial"] == want["best_trial"] else ""),
         f"{t['learning_rate']:g}", t["status"], f"{t['objective']:.4f}") for t in trials]
    assert table[1][0] == want["best_trial"] + " ★"
    # Ascending by learning rate.
    _, _, page = get(console["url"] + "experiments/lr?sort=learning_rate")
    rates = [float(r[2]) for r in cells(page, "grid trials")[1:]]
    assert rates == sorted(rates) == [0.0005, 0.005, 0.05]
    # The objective per epoch for each trial, and each trial against its learning rate.
    charts = re.findall(r'<svg class="chart".*?</svg>', page, re.S)
    assert len(charts) == 2, page
    assert [len(p.split()) for p in re.findall(r'<polyline points="([^"]*)"', charts[0])] == [2] * 3
    assert "best trial" in charts[1] and charts[1].count("<circle") == 3, charts[1]
    # The best trial's registered model links to its page.
    (best_model,) = re.findall(r'<a href="(/models/lr/\d+)">', page)
    status, _, model = get(console["url"] + best_model.lstrip("/"))
    assert status == 200 and "lr · version" in model


def test_user_text_is_escaped_and_errors_are_pages(console):
    _, _, page = get(console["url"] + "models/shoes/1")
    assert html.escape(SCRIPT, quote=False) in page
    assert "<script" not in page.lower()
    status, _, missing = get(console["url"] + "models/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert status == 404 and "<script" not in missing.lower(), missing
    status, _, missing = get(console["url"] + "models/shoes/7")
    assert status == 404 and "no version 7" in missing, missing
    status, _, refused = get(console["url"] + "jobs/%3Cscript%3E")
    assert status == 400 and "<script" not in refused.lower() and "job name" in refused, refused
    status, _, missing = get(console["url"] + "experiments/ghost")
    assert status == 404 and "experiment 'ghost' does not exist" in missing, missing
    status, _, _ = get(console["url"] + "no/such/page")
    assert status == 404
    status, headers, css = get(console["url"] + "console.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    status, _, metrics = get(console["url"] + "metrics")
    assert status == 200 and "process_resident_memory_bytes" in metrics


def test_under_mutual_tls_only_clients_with_a_certificate_get_pages(console, tmp_path):
    certs = tmp_path / "certs"
    run(["bash", os.path.join(ROOT, "scripts", "certs.sh"), str(certs)], check=True)
    proc, url = start(console["store"], "--tls-cert", str(certs / "server.pem"), "--tls-key",
                      str(certs / "server.key"), "--client-ca", str(certs / "ca.pem"))
    try:
        assert url.startswith("https://") and "mutual TLS" in output(proc)[1]
        anonymous = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            get(url + "models", anonymous)
        member = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        member.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
        status, _, page = get(url + "models", member)
        assert status == 200 and "shoes" in page
    finally:
        stop_group(proc, timeout=30)


def test_every_page_renders_in_chromium_without_console_messages(console, tmp_path):
    # The check can fail: a page whose script logs, and one whose inline style the console's
    # policy would refuse, both show up.
    control = browse("data:text/html,<script>console.error('seen')</script><p>x</p>",
                     tmp_path / "control.png")
    assert any("seen" in line for line in control), control
    refused = browse("data:text/html,<meta http-equiv='Content-Security-Policy' "
                     "content=\"style-src 'self'\"><p style='color:red'>x</p>",
                     tmp_path / "refused.png")
    assert any("violates the following Content Security Policy" in line for line in refused), refused
    shots = tmp_path / "screenshots"
    shots.mkdir()
    for page in ["models", "models/shoes/1", "models/shoes/2", "training", "training/shoes/v1",
                 "experiments", "jobs", "experiments/lr?sort=objective&desc=1"]:
        name = re.sub(r"\W+", "-", page).strip("-")
        messages = browse(console["url"] + page, shots / f"{name}.png")
        assert messages == [], (page, messages)
        # Not a blank page: tables and charts compress far less than white.
        assert (shots / f"{name}.png").stat().st_size > 20_000, page
    print(f"console screenshots in {shots}")


def run_row(page, model):
    """The training runs page's row of `model`'s run v1, by column."""
    table = cells(page, "grid")
    rows = [dict(zip(table[0], row)) for row in table[1:] if row[0] == model]
    assert len(rows) == 1, table
    return rows[0]


def test_a_training_run_is_followed_while_it_trains(console, tmp_path):
    store, url = console["store"], console["url"]
    # A CNN with augmentation pauses (a fault point) after the checkpoint of epoch 4 of 5.
    paused = tmp_path / "paused"
    validation = console["validation"].replace("'", "''")
    proc = spawn_logged([QUIVER, "--store", str(store), "sql", "--format", "json", f"""
        CREATE MODEL live OPTIONS (model_type = 'cnn_classifier', conv_filters = [8],
        dense_units = [16], epochs = 5, seed = 6, augment_flip = 'horizontal',
        augment_rotation = 10, validation_query = '{validation}') AS {console["train"]}"""],
                        tmp_path, "live",
                        env=fault_env(f"checkpoint@*training/live/v1/epoch-4=pause:{paused}"))
    try:
        wait_for(paused.exists, "the checkpoint of epoch 4", proc=proc, timeout=600)
        folder = store / "training" / "live" / "v1"
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in history] == [1, 2, 3, 4]
        status, _, page = get(url + "training")
        assert status == 200, page
        row = run_row(page, "live")
        assert (row["state"], row["epochs"]) == ("training", "4"), row
        assert row["val_accuracy"] == f"{history[-1]['val_accuracy']:.4f}", (row, history)
        status, _, page = get(url + "training/live/v1")
        assert status == 200, page
        # The browser reloads it while it trains.
        assert '<meta http-equiv="refresh" content="5">' in page
        epochs = cells(page, "grid")
        assert epochs[0][:5] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
        assert [r[:6] for r in epochs[1:]] == [
            [str(m["epoch"]), f"{m['loss']:.4f}", f"{m['accuracy']:.4f}", f"{m['val_loss']:.4f}",
             f"{m['val_accuracy']:.4f}", str(m["examples"])] for m in history]
        # Curves with a point per epoch so far, the augmentation grid, the checkpoints, the log.
        lines = re.findall(r'<polyline points="([^"]*)"', page)
        assert [len(p.split()) for p in lines] == [4] * 5, lines
        with urllib.request.urlopen(url + "training/live/v1/augmentations.png", timeout=30) as r:
            assert r.read() == (folder / "augmentations.png").read_bytes()
        assert 'src="/training/live/v1/augmentations.png"' in page
        checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
        assert re.findall(r"<code>(epoch-\d+)</code>", page) == checkpoints != [], page
        log = html.unescape(re.search(r'<pre class="log">(.*?)</pre>', page, re.S).group(1))
        assert "epoch 4/5: loss" in log and "epoch 5/5" not in log, log
        shot = tmp_path / "training.png"
        assert browse(url + "training/live/v1", shot) == []
        if os.environ.get("QUIVER_DOCS_SCREENSHOTS"):
            shutil.copy(shot, os.path.join(ROOT, "docs", "console-training.png"))
        paused.unlink()
        _, err = finish(proc, timeout=600)
        assert proc.returncode == 0, err
    finally:
        stop_group(proc)
    # Finished: registered, all five epochs, no more reloading, and a link to the model.
    _, _, page = get(url + "training/live/v1")
    assert "registered" in page and 'http-equiv="refresh"' not in page
    assert 'href="/models/live/1"' in page
    assert len(cells(page, "grid")) == 1 + 5


def test_a_failed_training_run_says_why(console, tmp_path):
    store, url = console["store"], console["url"]
    proc = run([QUIVER, "--store", str(store), "sql", f"""CREATE MODEL broken OPTIONS (
        model_type = 'dnn_classifier', hidden_units = [8], epochs = 2) AS {console["train"]}"""],
               env=fault_env("checkpoint@*training/broken/v1/epoch-1=error"))
    assert proc.returncode != 0 and "checkpoint" in proc.stderr, proc.stderr
    _, _, page = get(url + "training")
    row = run_row(page, "broken")
    assert (row["state"], row["epochs"]) == ("failed", "1"), row
    _, _, page = get(url + "training/broken/v1")
    error = html.unescape(re.search(r'<td class="error">(.*?)</td>', page, re.S).group(1))
    assert "fault injected at checkpoint@" in error and "broken/v1/epoch-1" in error, error
    assert 'http-equiv="refresh"' not in page


def write_job(folder, name, body):
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\n' + body)
    return path


def test_the_jobs_pages_follow_a_run_and_show_schedules(console, tmp_path):
    store, url = console["store"], console["url"]
    job = write_job(tmp_path, "nightly", """
[[steps]]
name = "count"
sql = "SELECT '<script>alert(1)</script>' AS one"
[[steps]]
name = "broken"
sql = "SELECT * FROM missing_table"
retries = 1
[[steps]]
name = "never"
sql = "SELECT 2"
""")
    # The run pauses (a fault point) before the broken step's second attempt.
    paused = tmp_path / "paused"
    proc = spawn_logged([QUIVER, "--store", str(store), "job", "run", str(job)], tmp_path, "job",
                        env=fault_env(f"job_step@nightly/broken/attempt-2=pause:{paused}"))
    try:
        wait_for(paused.exists, "the second attempt", proc=proc)
        (want,) = sql(store, "SELECT * FROM job_runs('nightly')")
        _, _, page = get(url + "jobs")
        rows = {r[0]: r for r in cells(page, "grid")[1:]}
        assert rows["nightly"][1:7] == ["manual", "–", "1", "1", want["run_id"], "running"], rows
        run_page = f"jobs/nightly/{want['run_id']}"
        status, _, page = get(url + run_page)
        assert status == 200, page
        assert '<meta http-equiv="refresh" content="5">' in page
        steps = [r[:3] for r in cells(page, "grid")[1:]]
        assert steps == [[s["name"], s["status"], str(s["attempts"])] for s in want["step_details"]]
        assert steps[1][:2] == ["broken", "running"], steps
        log = html.unescape(re.search(r'<pre class="log">(.*?)</pre>', page, re.S).group(1))
        assert "attempt 1 failed" in log and "missing_table" in log, log
        # The step's SQL, echoed in the log, is text in the page.
        assert SCRIPT in log and "<script" not in page.lower(), log
        assert browse(url + run_page, tmp_path / "job-run.png") == []
        paused.unlink()
        finish(proc, timeout=120)
        assert proc.returncode != 0
    finally:
        stop_group(proc)
    (want,) = sql(store, "SELECT * FROM job_runs('nightly')")
    _, _, page = get(url + run_page)
    assert 'http-equiv="refresh"' not in page and "failed" in page
    error = html.unescape(re.search(r'<td class="error">(.*?)</td>', page, re.S).group(1))
    assert error == want["error"] and "missing_table" in error
    _, _, page = get(url + "jobs/nightly")
    runs = cells(page, "grid")
    assert [r[:4] for r in runs[1:]] == [[want["run_id"], "manual", want["run_date"], "failed"]]
    assert "run duration" in page
    # A driver loads a scheduled job: its schedule and next run, as `quiver job list` says.
    folder = tmp_path / "jobs"
    folder.mkdir()
    write_job(folder, "daily", 'schedule = "0 30 3 * * *"\n[[steps]]\nsql = "SELECT 1"\n')
    driver = spawn_logged([QUIVER, "--store", str(store), "driver", "--jobs", str(folder)],
                          tmp_path, "driver")
    try:
        wait_for((store / "jobs" / "daily" / "job.json").exists, "the driver to load the job",
                 proc=driver, timeout=120)
    finally:
        stop_group(driver)
    listed = run([QUIVER, "--store", str(store), "job", "list", "--format", "json"], timeout=120)
    (daily,) = [r for r in json_rows(listed.stdout) if r["job"] == "daily"]
    _, _, page = get(url + "jobs")
    rows = {r[0]: r for r in cells(page, "grid")[1:]}
    next_run = daily["next_run"].replace(" ", "T").split(".")[0].removesuffix("Z") + "Z"
    assert rows["daily"][1:4] == ["0 30 3 * * * (UTC)", next_run, "0"], (rows["daily"], daily)


def post_json(url, body):
    """(status, JSON reply) of a POST."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_serving_pages_show_a_served_model_s_traffic(console, samples, tmp_path):
    store = console["store"]
    proc = spawn_logged([QUIVER, "--store", str(store), "serve", "--model",
                         f"{store}/models/shoes", "--grpc-port", "0", "--rest-port", "0",
                         "--log-flush-seconds", "0.3"], tmp_path, "serve")
    try:
        wait_for(lambda: "quiver serve: ready" in output(proc)[1], "the server", timeout=120,
                 proc=proc, context=lambda: output(proc)[1])
        rest = re.search(r"REST on (http://\S+)", output(proc)[1]).group(1) + "/"
        folder = os.path.join(samples, "fashion", "test")
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)[:36]
        labels = []
        for i in range(0, 36, 3):
            images = [{"b64": base64.b64encode(open(f, "rb").read()).decode()}
                      for f in files[i:i + 3]]
            status, reply = post_json(rest + "v1/models/shoes:predict", {"instances": images})
            assert status == 200, reply
            labels += [p["label"] for p in reply["predictions"]]
        for _ in range(2):
            status, _ = post_json(rest + "v1/models/shoes:predict", {"instances": [[1, 2]]})
            assert status == 400
        # The prediction log reaches the store within a flush.
        wait_for(lambda: "14 (36 examples)" in get(rest + "serving/shoes")[2],
                 "the 14 requests in the prediction log", timeout=60, proc=proc)
        _, _, page = get(rest + "serving")
        assert '<meta http-equiv="refresh" content="5">' in page
        [loaded] = [r for r in cells(page, "grid loaded")[1:]]
        assert loaded[:6] == ["shoes", "2", "dnn_classifier", "10", "new versions load", "12"], loaded
        assert loaded[6] == "3.00", loaded
        _, _, page = get(rest + "serving/shoes")
        statuses = dict(cells(page, "grid statuses")[1:])
        assert statuses == {"OK": "12", "INVALID_ARGUMENT": "2"}, statuses
        counts = {label: str(labels.count(label)) for label in set(labels)}
        assert dict(cells(page, "grid labels")[1:]) == counts
        # The latency percentiles are the nearest-rank ones of the logged latencies.
        logs = os.path.join(store, "serving", "shoes", "logs")
        logged = [json.loads(line) for f in sorted(os.listdir(logs))
                  for line in open(os.path.join(logs, f))]
        latencies = sorted(r["latency_ms"] for r in logged)
        p50 = latencies[max(0, -(-len(latencies) // 2) - 1)]
        assert f"p50 {p50:.1f} ms" in page, (latencies, page)
        latest = cells(page, "grid predictions")[1:]
        assert len(latest) == 14 and latest[0][8] == "INVALID_ARGUMENT"
        assert latest[2][5] == ", ".join(labels[-3:]), (latest[2], labels[-3:])
        assert browse(rest + "serving/shoes", tmp_path / "serving.png") == []
        # `quiver console` reads the same log from the store.
        _, _, page = get(console["url"] + "serving/shoes")
        assert "14 (36 examples)" in page and "loaded here" not in page
        assert dict(cells(page, "grid labels")[1:]) == counts
    finally:
        stop_group(proc)


def test_an_experiment_is_followed_while_its_trials_run(console, tmp_path):
    store, url = console["store"], console["url"]
    # The second of three trials pauses (a fault point) as it starts its first epoch.
    paused = tmp_path / "paused"
    validation = console["validation"].replace("'", "''")
    proc = spawn_logged([QUIVER, "--store", str(store), "sql", "--format", "json", f"""
        CREATE EXPERIMENT busy OPTIONS (model_type = 'dnn_classifier', hidden_units = [8],
        learning_rate = [0.001, 0.01, 0.1], epochs = 2, seed = 8,
        validation_query = '{validation}') AS {console["train"]}"""], tmp_path, "experiment",
                        env=fault_env(f"epoch_start@*/trials/trial-0001/rank-0/epoch-1=pause:{paused}"))
    try:
        wait_for(paused.exists, "trial-0001 to start", proc=proc, timeout=600)
        (want,) = sql(store, "SELECT * FROM experiments() WHERE name = 'busy'")
        trials = sql(store, "SELECT trial, status FROM experiment_trials('busy') ORDER BY trial")
        _, _, page = get(url + "experiments")
        row = [r for r in cells(page, "grid")[1:] if r[0] == "busy"]
        assert row and row[0][1] == want["status"] == "running", (row, want)
        status, _, page = get(url + "experiments/busy?sort=trial")
        assert status == 200, page
        assert '<meta http-equiv="refresh" content="5">' in page
        table = cells(page, "grid trials")
        statuses = [(r[0].removesuffix(" ★"), r[table[0].index("status")]) for r in table[1:]]
        assert statuses == [(t["trial"], t["status"]) for t in trials], (statuses, trials)
        assert ("trial-0001", "running") in statuses and ("trial-0000", "completed") in statuses
        assert browse(url + "experiments/busy", tmp_path / "experiment.png") == []
        paused.unlink()
        _, err = finish(proc, timeout=600)
        assert proc.returncode == 0, err
    finally:
        stop_group(proc)
    _, _, page = get(url + "experiments/busy")
    assert 'http-equiv="refresh"' not in page
    assert {r[table[0].index("status")] for r in cells(page, "grid trials")[1:]} == {"completed"}
