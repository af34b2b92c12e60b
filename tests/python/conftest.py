"""Shared fixtures of Quiver's reference tests: the quiver binary, sample images, a SeaweedFS
S3 server on 127.0.0.1 started and stopped by the harness, and the processes tests start.

Every process is started with `spawn` or `run`: in a process group of its own, killed with its
whole group when the test (or the fixture) that started it ends, also when it fails, and killed
by the kernel if the test runner itself dies. The session fails if any of them outlives it.
Servers report the address they bound (`quiver driver --listen 127.0.0.1:0` prints it first on
stdout, `quiver serve` on its log); nothing picks a free port and hopes it stays free."""
import ctypes
import json
import os
import random
import re
import selectors
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
_PR_SET_PDEATHSIG = 1
# Every process the suite started, in order, with whether a fixture (not a test) owns it.
_STARTED = []


def _die_with_the_runner():
    """In the child before exec: its own process group, SIGKILLed when the runner dies."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(args, *, owner="test", **kwargs):
    """Starts `args` in a process group of its own (see the module's doc). `owner="fixture"`
    leaves stopping it to the fixture that started it."""
    proc = subprocess.Popen(args, start_new_session=True, preexec_fn=_die_with_the_runner,
                            **kwargs)
    proc.quiver_owner = owner
    _STARTED.append(proc)
    return proc


def kill_group(proc, sig=signal.SIGKILL):
    """Sends `sig` to the process group of `proc` and, for SIGKILL, reaps it."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    if sig == signal.SIGKILL:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass


def stop_group(proc, timeout=30):
    """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
    kill_group(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return proc.wait()


def run(args, *, input=None, timeout=600, env=None, cwd=None, check=False):
    """`subprocess.run` with text output captured, in a group of its own, killed with its group
    on timeout."""
    proc = spawn(args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(map(str, args))[:300]} ran past {timeout} s:\n{err[-3000:]}")
    finally:
        kill_group(proc)
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))[:300]} failed:\n{err[-3000:]}")
    return result


def first_line(proc, timeout=120):
    """The first line `proc` writes on its stdout (a pipe), waiting at most `timeout` seconds."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not selector.select(left):
            raise AssertionError(f"no first line from {proc.args[:4]} within {timeout} s")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"{proc.args[:4]} exited (code {proc.wait()}) before its first line")
        line += chunk
    selector.close()
    return line.decode().strip()


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
    for proc in _STARTED[mark:]:
        if proc.quiver_owner == "test":
            kill_group(proc)


def _group_alive(proc):
    try:
        os.killpg(proc.pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def pytest_sessionfinish(session, exitstatus):
    alive = [p for p in _STARTED if _group_alive(p)]
    for proc in alive:
        kill_group(proc)
    if alive:
        listing = "\n".join(f"  pid {p.pid}: {' '.join(map(str, p.args))[:200]}" for p in alive)
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


def parse_address(text, pattern):
    """The `host:port` that `pattern` (a regex with one group) finds in `text`."""
    m = re.search(pattern, text)
    assert m, (pattern, text[-2000:])
    return m.group(1)
