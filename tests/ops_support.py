"""Local servers for the ops tests, all on 127.0.0.1: moto S3, Redis, Postgres,
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
SUDO = [] if os.geteuid() == 0 else ["sudo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
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
    """Run ``args`` with output to ``log``; terminate it (then kill) on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
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
    with process(
        [os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        os.path.join(log_dir, "moto.log"),
    ) as proc:
        wait_for_port(port, proc)
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        import boto3

        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        yield env


@contextlib.contextmanager
def redis_server(log_dir: str) -> Iterator[str]:
    """A throw-away Redis on 127.0.0.1 (no persistence); yields its URL."""
    binary = apt_install("redis-server", binary="redis-server")
    port = free_port()
    args = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        log_dir,
        "--protected-mode",
        "yes",
    ]
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
        subprocess.run(
            [*as_user, f"{pg}/initdb", "-D", data, "-U", "dagster", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        args = [
            *as_user,
            f"{pg}/postgres",
            "-D",
            data,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            data,
            "-c",
            "fsync=off",
            "-c",
            "shared_buffers=32MB",
        ]
        with process(args, os.path.join(log_dir, "postgres.log")) as proc:
            wait_for_port(port, proc)
            subprocess.run(
                [f"{pg}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"],
                check=True,
                capture_output=True,
            )
            yield {
                "hostname": "127.0.0.1",
                "port": str(port),
                "username": "dagster",
                "password": "",
                "db_name": "dagster",
            }
    finally:
        shutil.rmtree(data, ignore_errors=True)


# train_and_publish in seconds of CPU: 200 train + 50 query real Fashion-MNIST images, a 1-block ViT, 1 epoch.
TINY_OPS = {
    "catalogue": {"config": {"train_limit": 200, "query_limit": 50, "validation_size": 50, "seed": 1}},
    "hashing_model": {
        "config": {
            "model": "vts-cls",
            "loss": "csq",
            "bits": 16,
            "epochs": 1,
            "batch_size": 64,
            "overrides": {"depth": 1, "embed_dim": 24, "num_heads": 1},
            "warmup_steps": 0,
            "val_queries": 50,
            "val_database": 200,
            "min_val_map": 0.0,
        }
    },
    "model_evaluation": {"config": {"stability_sample": 50}},
    "retrieval_diagnostics": {"config": {"latency_queries": 20}},
}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GraphQL:
    """Minimal client for the webserver's GraphQL endpoint (raises on GraphQL errors)."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables) -> dict:
        import requests

        reply = requests.post(self.url, json={"query": query, "variables": variables}, timeout=60).json()
        if reply.get("errors"):
            raise RuntimeError(reply["errors"])
        return reply["data"]


@contextlib.contextmanager
def dagster_dev(home: str, env: dict[str, str], log: str) -> Iterator[int]:
    """``dagster dev -w workspace.yaml`` on 127.0.0.1 (webserver, daemon, code server) with ``home`` as
    DAGSTER_HOME; yields its port once the code location has loaded."""
    port = free_port()
    full_env = {**os.environ, "DAGSTER_HOME": home, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **env}
    args = [os.path.join(BIN, "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with process(args, log, cwd=REPO, env=full_env) as proc:
        wait_for_port(port, proc, timeout=300)
        gql, deadline = GraphQL(port), time.monotonic() + 300
        query = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
        while not (gql(query)["repositoriesOrError"].get("nodes") or []):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"code location did not load; see {log}")
            time.sleep(1)
        yield port


class Chromium:
    """Headless Chromium (Debian's package, installed if missing) driven over the DevTools protocol on
    127.0.0.1: open a page, wait for and run JavaScript (clicks), save screenshots."""

    def __init__(self, profile: str, log: str, size: tuple[int, int] = (1600, 1000)):
        self.profile, self.log, self.size = profile, log, size

    def __enter__(self) -> Chromium:
        import json
        import urllib.request

        from websockets.sync.client import connect

        binary = apt_install("chromium", binary="chromium")
        port = free_port()
        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}",
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={port}",
            "about:blank",
        ]
        self._proc = process(args, self.log)
        proc = self._proc.__enter__()
        wait_for_port(port, proc)
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
                pages = [t for t in json.load(reply) if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self._id = 0
        width, height = self.size
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.send("Page.enable")
        return self

    def __exit__(self, *exc) -> None:
        self._ws.close()
        self._proc.__exit__(*exc)

    def send(self, method: str, **params) -> dict:
        import json

        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=120))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 120) -> None:
        """Poll ``expression`` until truthy; while the page is still loading it may throw (no body yet)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.js(expression):
                    return
                problem = "false"
            except RuntimeError as err:  # evaluated mid-navigation, e.g. document.body is null
                problem = str(err)
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied {expression!r} (last: {problem[:200]})")
            time.sleep(0.5)

    def goto(self, url: str, ready: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait(ready)

    def screenshot(self, path: str) -> None:
        import base64

        data = self.send("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
