"""Local servers for the ops tests, all on 127.0.0.1 and at idle priority: moto S3, Redis, Postgres,
``dagster dev``. Each is a context manager that stops what it started."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

BIN = os.path.dirname(sys.executable)
IDLE = ["chrt", "-i", "0", "nice", "-n", "19"] if shutil.which("chrt") else ["nice", "-n", "19"]
SUDO = [] if os.geteuid() == 0 else ["sudo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[len(IDLE)]} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def apt_install(*packages: str, binary: str) -> str:
    """Path of ``binary``, installing Debian ``packages`` first if it is missing."""
    if not shutil.which(binary):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*SUDO, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run([*SUDO, "apt-get", "install", "-y", "-qq", *packages], check=True, env=env)
    path = shutil.which(binary)
    if not path:
        raise RuntimeError(f"{binary} not found after installing {packages}")
    return path


@contextlib.contextmanager
def process(args: list[str], log: str, **kwargs) -> Iterator[subprocess.Popen]:
    """Run ``args`` at idle priority with output to ``log``; terminate it (then kill) on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([*IDLE, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@contextlib.contextmanager
def moto_s3(log_dir: str, bucket: str = "vitrieve") -> Iterator[dict[str, str]]:
    """A moto S3 server with ``bucket``; yields the AWS environment that s3fs/boto3 pick up."""
    port = free_port()
    with process([os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                 os.path.join(log_dir, "moto.log")) as proc:  # fmt: skip
        wait_for_port(port, proc)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)  # fmt: skip
        yield env


@contextlib.contextmanager
def redis_server(log_dir: str) -> Iterator[str]:
    """A throw-away Redis on 127.0.0.1 (no persistence); yields its URL."""
    binary = apt_install("redis-server", binary="redis-server")
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", log_dir, "--protected-mode", "yes"]  # fmt: skip
    with process(args, os.path.join(log_dir, "redis.log")) as proc:
        wait_for_port(port, proc)
        yield f"redis://127.0.0.1:{port}/0"


def _pg_bin() -> str:
    apt_install("postgresql", binary="pg_ctlcluster")
    versions = sorted(os.listdir("/usr/lib/postgresql"), key=int)
    return f"/usr/lib/postgresql/{versions[-1]}/bin"


@contextlib.contextmanager
def postgres_server(log_dir: str) -> Iterator[dict[str, str]]:
    """A throw-away Postgres cluster (initdb in a temp dir, run by an unprivileged user when root) on
    127.0.0.1; yields connection settings (user ``dagster``, trust auth, database ``dagster``)."""
    pg = _pg_bin()
    data = tempfile.mkdtemp(prefix="vitrieve-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    try:
        subprocess.run([*as_user, f"{pg}/initdb", "-D", data, "-U", "dagster", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)  # fmt: skip
        args = [*as_user, f"{pg}/postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", data,
                "-c", "fsync=off", "-c", "shared_buffers=32MB"]  # fmt: skip
        with process(args, os.path.join(log_dir, "postgres.log")) as proc:
            wait_for_port(port, proc)
            subprocess.run([f"{pg}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"],
                           check=True, capture_output=True)  # fmt: skip
            yield {"hostname": "127.0.0.1", "port": str(port), "username": "dagster", "password": "", "db_name": "dagster"}
    finally:
        shutil.rmtree(data, ignore_errors=True)


# train_and_publish in seconds of CPU: 200 train + 50 query real Fashion-MNIST images, a 1-block ViT, 1 epoch.
TINY_OPS = {
    "catalogue": {"config": {"train_limit": 200, "query_limit": 50, "validation_size": 50, "seed": 1}},
    "hashing_model": {"config": {"model": "vts-cls", "loss": "csq", "bits": 16, "epochs": 1, "batch_size": 64,
                                 "overrides": {"depth": 1, "embed_dim": 24, "num_heads": 1}, "warmup_steps": 0,
                                 "val_queries": 50, "val_database": 200, "min_val_map": 0.0}},
    "model_evaluation": {"config": {"stability_sample": 50}},
    "retrieval_diagnostics": {"config": {"latency_queries": 20}},
}  # fmt: skip
