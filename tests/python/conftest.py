"""Shared fixtures of Quiver's reference tests: the quiver binary, sample images, a SeaweedFS
S3 server on 127.0.0.1 started and stopped by the harness, a Prometheus server for tests that
scrape metrics, and the processes tests start.

Every process is started with `spawn`, `spawn_logged` or `run`: in a process group of its own
(no `preexec_fn`: `setpriv` sets the parent-death signal, so the kernel kills it if the test
runner dies), killed with its whole group when the test (or the fixture) that started it ends,
also when it fails. The runner is a child subreaper: the orphans of those groups come back to it,
so a group is known to be its own while any of its processes lives, and teardown signals only
those processes, never a recycled pid. A test that fails prints what its processes were doing.
The session fails if any of them outlives it. Output goes to files or is read as it comes, so a
chatty process never blocks on a full pipe. Every wait has a time limit, and every test one
(pytest-timeout, `pytest.ini`). Servers report the address they bound (`quiver driver --listen
127.0.0.1:0` prints it first on stdout, `quiver serve` on its log)."""
import ctypes
import html
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

QUIVER = os.environ.get("QUIVER_BIN", "quiver")
SAMPLES = os.environ.get("QUIVER_SAMPLES", "")
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "sql", "tests", "data")

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_CHILD_SUBREAPER = 36
if _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
# Every process the suite started, in order, with whether a fixture (not a test) owns it.
_STARTED = []


def spawn(args, *, owner="test", **kwargs):
    """Starts `args` in a process group of its own (see the module's doc). `owner="fixture"`
    leaves stopping it to the fixture that started it."""
    proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *args],
                            start_new_session=True, **kwargs)
    proc.quiver_args = [str(a) for a in args]
    proc.quiver_owner = owner
    proc.quiver_logs = []
    _STARTED.append(proc)
    return proc


def spawn_logged(args, folder, name, **kwargs):
    """`spawn` with stdout and stderr in the files `<folder>/<name>.out` and `.err`; `output`
    reads them."""
    out, err = (open(os.path.join(folder, f"{name}.{ext}"), "w") for ext in ("out", "err"))
    with out, err:
        proc = spawn(args, stdout=out, stderr=err, **kwargs)
    proc.quiver_logs = [out.name, err.name]
    return proc


def output(proc):
    """The stdout and stderr of a `spawn_logged` process, as written so far."""
    return tuple(open(f).read() for f in proc.quiver_logs)


def finish(proc, timeout):
    """Waits at most `timeout` seconds for a `spawn_logged` process to end (else kills its group
    and fails) and returns its stdout and stderr."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        doing = what_they_do([proc])
        kill_group(proc)
        raise AssertionError(f"{describe(proc)} ran past {timeout} s:\n{doing}\n"
                             f"{output(proc)[1][-3000:]}")
    return output(proc)


def _processes():
    """pid -> (parent pid, process group, state, command) of every process on the machine."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]), fields[0], command)
    return table


def _members(pgid):
    """The processes of group `pgid` that descend from this runner, zombies included: the
    group's own processes (a stranger that reuses the number descends from someone else)."""
    table, me = _processes(), os.getpid()

    def ours(pid):
        for _ in range(64):
            if pid == me:
                return True
            if pid <= 1 or pid not in table:
                return False
            pid = table[pid][0]
        return False
    return {pid: row for pid, row in table.items() if row[1] == pgid and ours(pid)}


def _reap(pgid):
    """Reaps the ended processes of group `pgid` that are this runner's children (orphans)."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_alive(proc):
    """Whether a process of `proc`'s group still runs (its ended orphans are reaped first)."""
    if proc.poll() is None:
        return True
    _reap(proc.pid)
    return any(row[2] != "Z" for row in _members(proc.pid).values())


def kill_group(proc, sig=signal.SIGKILL):
    """Sends `sig` to the process group of `proc`, as long as it is still the suite's own, and
    for SIGKILL waits until every process of the group has ended and is reaped."""
    if proc.poll() is None:
        # The leader is not reaped, so its pid (the group's number) cannot have been reused.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    else:
        # Only the processes that are still the group's own, each through a pidfd.
        for pid in _members(proc.pid):
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if pid in _members(proc.pid):
                    signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
    if sig == signal.SIGKILL:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        wait_for(lambda: not _group_alive(proc), f"the group of {describe(proc)} to end",
                 timeout=60)


def stop_group(proc, timeout=30):
    """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
    kill_group(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return proc.wait(timeout=60)


def describe(proc):
    """`proc`'s command, shortened."""
    return " ".join(getattr(proc, "quiver_args", map(str, proc.args)))[:200]


def what_they_do(procs):
    """What the live processes of `procs`' groups are doing: state, kernel wait channel,
    threads and command of each, then the last lines each logged to a file."""
    lines = []
    for proc in procs:
        members = _members(proc.pid)
        if not any(row[2] != "Z" for row in members.values()):
            continue
        lines.append(f"process group {proc.pid} ({describe(proc)}):")
        for pid, (ppid, _, state, command) in sorted(members.items()):
            try:
                with open(f"/proc/{pid}/wchan") as f:
                    wchan = f.read().strip() or "-"
                threads = len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                wchan, threads = "?", 0
            lines.append(f"  pid {pid} (parent {ppid}) state {state} waiting in {wchan}, "
                         f"{threads} threads: {command[:160]}")
        for log in proc.quiver_logs:
            with open(log, errors="replace") as f:
                tail = f.read()[-1500:]
            lines.append(f"  --- last of {log}:\n{tail}")
    return "\n".join(lines)


def run(args, *, input=None, timeout=600, env=None, cwd=None, check=False):
    """`subprocess.run` with text output captured, in a group of its own, killed with its group
    on timeout."""
    proc = spawn(args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        doing = what_they_do([proc])
        kill_group(proc)
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"{describe(proc)} ran past {timeout} s:\n{doing}\n{err[-3000:]}")
    finally:
        kill_group(proc)
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"{describe(proc)} failed:\n{err[-3000:]}")
    return result


def first_line(proc, timeout=120):
    """The first line a `spawn_logged` process writes on its stdout, waiting at most `timeout`
    seconds."""
    wait_for(lambda: "\n" in output(proc)[0], f"the first line of {describe(proc)}",
             timeout=timeout, proc=proc, context=lambda: output(proc)[1][-2000:])
    return output(proc)[0].split("\n", 1)[0].strip()


def wait_for(condition, what, timeout=300, proc=None, context=lambda: ""):
    """Waits until `condition()` is true: the state a test needs, checked every 20 ms, failing
    with `what` after `timeout` seconds or when `proc` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited (code {proc.returncode}) before {what}\n{context()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{context()}")
        time.sleep(0.02)


def fault_env(*faults, base=None):
    """The environment arming quiver's fault points (`point@key=action`, see engine/src/fault.rs)."""
    return {**(base or os.environ), "QUIVER_FAULT": ";".join(faults)}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.quiver_failed = getattr(item, "quiver_failed", False) or report.failed
    return report


@pytest.fixture(autouse=True)
def _processes_end_with_their_test(request):
    mark = len(_STARTED)
    # A long test says that it is still running, every 50 s.
    done = threading.Event()
    started = time.monotonic()

    def beat():
        while not done.wait(50):
            print(f"\n[quiver] still running {request.node.nodeid} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.__stderr__, flush=True)
    heartbeat = threading.Thread(target=beat, daemon=True)
    heartbeat.start()
    yield
    done.set()
    ours = [proc for proc in _STARTED[mark:] if proc.quiver_owner == "test"]
    if getattr(request.node, "quiver_failed", False):
        doing = what_they_do(ours)
        if doing:
            print(f"what the test's processes were doing when it failed:\n{doing}")
    for proc in ours:
        kill_group(proc)


def pytest_sessionfinish(session, exitstatus):
    alive = [p for p in _STARTED if _group_alive(p)]
    for proc in alive:
        kill_group(proc)
    if alive:
        listing = "\n".join(f"  pid {p.pid}: {describe(p)}" for p in alive)
        print(f"\nerror: {len(alive)} process group(s) outlived the tests that started them:\n{listing}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class QuiverError(Exception):
    pass


def quiver(sql, *, fmt="json", env=None, cwd=None, check=True):
    """Runs `quiver sql` and returns the rows of the last statement (JSON) or the process."""
    proc = run([QUIVER, "--store", "memory://quiver/", "sql", "--format", fmt, sql],
               env={**os.environ, **(env or {})}, cwd=cwd)
    if not check:
        return proc
    if proc.returncode != 0:
        raise QuiverError(proc.stderr.strip())
    if fmt != "json":
        return proc.stdout
    return json_rows(proc.stdout)


def json_rows(text):
    """The rows of `quiver sql --format json` output."""
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


@pytest.fixture(scope="session")
def samples():
    if not SAMPLES or not os.path.isdir(os.path.join(SAMPLES, "photos")):
        pytest.fail("QUIVER_SAMPLES must point at the folders made by scripts/sample_data.py")
    return SAMPLES


@pytest.fixture(scope="session")
def fixtures():
    return os.path.abspath(FIXTURES)


def ephemeral_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = map(int, f.read().split())
    return low, high


def fixed_ports(n):
    """`n` distinct ports below the kernel's ephemeral range, free now: for a third-party server
    that cannot bind port 0 and report it. Nothing else on the machine is handed these ports by
    the kernel, and the caller retries with others if one was taken meanwhile."""
    low = 20000
    high = min(ephemeral_range()[0], 32768)
    ports = []
    while len(ports) < n:
        port = random.randrange(low, high)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def start_prometheus(folder, targets, discover=None):
    """A real Prometheus server (Debian's `prometheus`, which scripts/test.sh installs) scraping
    the `/metrics` of `targets` (`host:port`, job `quiver`) every second, and with `discover`
    (an HTTP service-discovery URL) the targets it lists (job `discovered`), on a port of its
    own. Returns the process and `query(expr)`, the result list of an instant PromQL query."""
    import urllib.parse
    import urllib.request
    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.fail("prometheus is not on PATH (Debian's package; scripts/test.sh installs it)")
    config = folder / "prometheus.yml"
    # YAML is a superset of JSON.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "quiver", "static_configs": [{"targets": targets}]}] + (
            [{"job_name": "discovered",
              "http_sd_configs": [{"url": discover, "refresh_interval": "1s"}]}]
            if discover else [])}))
    for attempt in range(5):
        port, = fixed_ports(1)
        url = f"http://127.0.0.1:{port}"
        log = folder / f"prometheus-{attempt}.log"
        proc = spawn([prometheus, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{port}"],
                     stdout=open(log, "w"), stderr=subprocess.STDOUT)

        def ready():
            try:
                return urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200
            except OSError:  # not listening yet
                return proc.poll() is not None and "exited"
        if wait_for(ready, "Prometheus to be ready", timeout=60, context=log.read_text) is True:
            break
        # It exited: its port was taken since it was chosen; choose another.
        print(f"Prometheus exited at start (attempt {attempt + 1}): {log.read_text()[-500:]}")
    else:
        raise RuntimeError("Prometheus did not start in 5 attempts")

    def query(expr):
        reply = urllib.request.urlopen(
            f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=10)
        body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]["result"]
    return proc, query


def _start_weed(weed, data):
    names = ("master", "volume", "filer", "s3")
    chosen = fixed_ports(len(names) * 2)
    ports, grpc = dict(zip(names, chosen)), dict(zip(names, chosen[len(names):]))
    log = open(data / "weed.log", "w")
    proc = spawn(
        [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
         f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
         "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
         "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
         "-volume.max=8", "-master.volumeSizeLimitMB=64"],
        owner="fixture", stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{ports['s3']}"


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real SeaweedFS server (master, volume, filer, S3 gateway) on 127.0.0.1."""
    weed = os.environ.get("WEED_BIN") or shutil.which("weed")
    if not weed:
        pytest.fail("WEED_BIN is not set and weed is not on PATH")
    import boto3
    for attempt in range(5):
        data = tmp_path_factory.mktemp("weed")
        proc, endpoint = _start_weed(weed, data)
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="quiver",
                              aws_secret_access_key="quiver-secret", region_name="us-east-1")

        def bucket_made():
            try:
                client.create_bucket(Bucket="quiver-test")
                return True
            except Exception:  # not up yet
                return proc.poll() is not None and "exited"
        try:
            made = wait_for(bucket_made, "SeaweedFS's S3 gateway", timeout=120)
        except AssertionError:
            kill_group(proc)
            raise RuntimeError("SeaweedFS did not start: " + open(data / "weed.log").read()[-2000:])
        if made is True:
            break
        # It exited: one of its ports was taken since it was chosen; choose others.
        kill_group(proc)
        print(f"SeaweedFS exited at start (attempt {attempt + 1}): "
              + open(data / "weed.log").read()[-500:])
    else:
        raise RuntimeError("SeaweedFS did not start in 5 attempts")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "quiver",
           "AWS_SECRET_ACCESS_KEY": "quiver-secret", "AWS_REGION": "us-east-1"}
    yield {"client": client, "env": env, "bucket": "quiver-test", "endpoint": endpoint}
    stop_group(proc, timeout=5)


def listing(root):
    """Every file under a local folder, relative to it, sorted."""
    if not os.path.exists(root):
        return []
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def fashion_query(samples, split):
    """The query of the sample Fashion-MNIST images of `split`: decoded images and labels."""
    folder = os.path.join(samples, "fashion", split)
    return f"SELECT image_decode(content) AS image, label FROM read_images('{folder}/')"


def parse_metrics(text):
    """Prometheus's text exposition format as {(name, frozenset of (label, value)): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name, labels, value = m.groups()
        pairs = frozenset(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def metric(samples, name, **labels):
    """The sum of the `name` series whose labels include `labels` (0 where there is none)."""
    want = set(labels.items())
    return sum(v for (n, pairs), v in samples.items() if n == name and want <= pairs)


def parse_address(text, pattern):
    """The `host:port` that `pattern` (a regex with one group) finds in `text`."""
    m = re.search(pattern, text)
    assert m, (pattern, text[-2000:])
    return m.group(1)


def cells(page, css_class):
    """The text of each row's cells in the first table of class `css_class`."""
    table = re.search(rf'<table class="{css_class}">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
             for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)] for r in rows]


def browse(url, screenshot):
    """Loads `url` in headless Chromium (Debian's, which scripts/test.sh installs), saving a
    screenshot: the page's console messages (script errors, Content-Security-Policy
    violations), one per line."""
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.fail("chromium is not on PATH (Debian's package; scripts/test.sh installs it)")
    proc = run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--window-size=1200,1400", "--enable-logging=stderr", "--v=0",
                f"--user-data-dir={screenshot.parent / 'chromium-profile'}",
                f"--screenshot={screenshot}", url], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
