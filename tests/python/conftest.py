"""Shared fixtures of Quiver's reference tests: the quiver binary, sample images, a SeaweedFS
S3 server on 127.0.0.1 started and stopped by the harness."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

QUIVER = os.environ.get("QUIVER_BIN", "quiver")
SAMPLES = os.environ.get("QUIVER_SAMPLES", "")
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "sql", "tests", "data")


class QuiverError(Exception):
    pass


def quiver(sql, *, fmt="json", env=None, cwd=None, check=True):
    """Runs `quiver sql` and returns the rows of the last statement (JSON) or the process."""
    proc = subprocess.run([QUIVER, "--store", "memory://quiver/", "sql", "--format", fmt, sql],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=600)
    if not check:
        return proc
    if proc.returncode != 0:
        raise QuiverError(proc.stderr.strip())
    if fmt != "json":
        return proc.stdout
    rows = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


@pytest.fixture(scope="session")
def samples():
    if not SAMPLES or not os.path.isdir(os.path.join(SAMPLES, "photos")):
        pytest.fail("QUIVER_SAMPLES must point at the folders made by scripts/sample_data.py")
    return SAMPLES


@pytest.fixture(scope="session")
def fixtures():
    return os.path.abspath(FIXTURES)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real SeaweedFS server (master, volume, filer, S3 gateway) on 127.0.0.1."""
    weed = os.environ.get("WEED_BIN") or shutil.which("weed")
    if not weed:
        pytest.fail("WEED_BIN is not set and weed is not on PATH")
    data = tmp_path_factory.mktemp("weed")
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    log = open(data / "weed.log", "w")
    proc = subprocess.Popen(
        [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
         f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
         "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
         "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
         "-volume.max=8", "-master.volumeSizeLimitMB=64"],
        stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "quiver", "AWS_SECRET_ACCESS_KEY": "quiver-secret",
           "AWS_REGION": "us-east-1"}
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="quiver",
                          aws_secret_access_key="quiver-secret", region_name="us-east-1")
    deadline = time.time() + 90
    while True:
        try:
            client.create_bucket(Bucket="quiver-test")
            break
        except Exception:  # not up yet
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("SeaweedFS did not start: " + open(data / "weed.log").read()[-2000:])
            time.sleep(1)
    yield {"client": client, "env": env, "bucket": "quiver-test", "endpoint": endpoint}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
