"""Scale-out as documented in docs/OPERATIONS.md: the same code location, configured (env vars and
pipelines/scaleout/*.yaml only) to run every step on a Celery worker (Redis broker), with run storage in
Postgres and the storage root on S3 (moto server). All servers on 127.0.0.1; marked ``celery``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import needs_fashion_mnist
from tests.ops_support import BIN, REPO, TINY_OPS, moto_s3, postgres_server, process, redis_server

pytestmark = [pytest.mark.celery, needs_fashion_mnist, pytest.mark.timeout(1800)]

SCALEOUT = os.path.join(REPO, "pipelines", "scaleout")
CATALOGUE = "fashion-mnist"
WORKER = "vitrieve-test"


def _wait_ready(log: str, proc, timeout: float = 300) -> None:
    """Wait until the Celery worker reports ready in its log."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(log).exists() and " ready." in Path(log).read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited with {proc.returncode}; see {log}")
        time.sleep(1)
    raise TimeoutError(f"celery worker not ready; see {log}")


def test_graph_runs_on_a_celery_worker(tmp_path):
    pytest.importorskip("dagster_celery")
    pytest.importorskip("dagster_postgres")
    logs = str(tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(os.path.join(SCALEOUT, "dagster.yaml"), home / "dagster.yaml")
    with moto_s3(logs) as aws, redis_server(logs) as redis, postgres_server(logs) as pg:
        env = {
            **os.environ,
            **aws,
            "PYTHONPATH": REPO,
            "OMP_NUM_THREADS": "1",
            "DAGSTER_HOME": str(home),
            "PATH": BIN + os.pathsep + os.environ["PATH"],  # dagster-celery runs `celery`
            "VITRIEVE_PG_URL": f"postgresql+psycopg2://{pg['username']}@{pg['hostname']}:{pg['port']}/{pg['db_name']}",
            "VITRIEVE_EXECUTOR": "celery",
            "VITRIEVE_CELERY_BROKER": redis,
            "VITRIEVE_CELERY_BACKEND": redis.rsplit("/", 1)[0] + "/1",
            "VITRIEVE_ROOT": "s3://vitrieve/data",
            "VITRIEVE_DB": str(tmp_path / "diagnostics.duckdb"),
            "VITRIEVE_DEVICE": "cpu",
        }
        worker_log = os.path.join(logs, "celery-worker.log")
        worker = [
            os.path.join(BIN, "dagster-celery"),
            "worker",
            "start",
            "-A",
            "dagster_celery.app",
            "-y",
            os.path.join(SCALEOUT, "celery.yaml"),
            "-n",
            WORKER,
            "--",
            "--pool=solo",
        ]
        with process(worker, worker_log, cwd=REPO, env=env) as proc:
            _wait_ready(worker_log, proc)
            register = (
                "import dagster as dg; dg.DagsterInstance.get().add_dynamic_partitions("
                f"'catalogues', [{CATALOGUE!r}])"
            )
            subprocess.run([os.path.join(BIN, "python"), "-c", register], env=env, cwd=REPO, check=True)
            config = tmp_path / "run.json"
            config.write_text(json.dumps({"ops": TINY_OPS}))
            launch = [
                os.path.join(BIN, "dagster"),
                "job",
                "execute",
                "-m",
                "pipelines.definitions",
                "-j",
                "train_and_publish",
                "-c",
                str(config),
                "--tags",
                json.dumps({"dagster/partition": CATALOGUE}),
            ]
            launched = subprocess.run(launch, env=env, cwd=REPO, capture_output=True, text=True, timeout=1500)
            assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
            check_run(env, launched.stdout + launched.stderr)


CHECK = r"""
import json, os, sys
import dagster as dg
instance = dg.DagsterInstance.get()
assert type(instance.run_storage).__name__ == "PostgresRunStorage", type(instance.run_storage)
[run] = instance.get_runs(limit=1)
steps = {}
workers = set()
for record in instance.get_records_for_run(run.run_id).records:
    event = record.event_log_entry.dagster_event
    if event is None:
        continue
    if event.event_type_value == "STEP_SUCCESS":
        steps[event.step_key] = event.pid
    if event.event_type_value == "ENGINE_EVENT" and "in celery worker" in (event.message or ""):
        workers.add(event.engine_event_data.metadata["Celery worker"].value)
mats = sorted(k.path[-1] for k, e in instance.get_latest_materialization_events(
    [dg.AssetKey(a) for a in ("catalogue", "hashing_model", "packed_codes", "model_evaluation", "binary_index",
                              "retrieval_diagnostics")]).items() if e is not None)
print(json.dumps({"status": run.status.value, "launcher_pid": os.getpid(), "steps": steps,
                  "workers": sorted(workers), "materialised": mats, "tags": dict(run.tags)}))
"""


def check_run(env: dict[str, str], launch_output: str) -> None:
    """The run succeeded, from Postgres; every step ran in the Celery worker; artifacts are on S3."""
    out = subprocess.run(
        [os.path.join(BIN, "python"), "-c", CHECK], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["status"] == "SUCCESS", launch_output[-3000:]
    assert len(facts["materialised"]) == 6
    assert facts["tags"]["vitrieve/model"].startswith("vts-cls-csq-16b")
    assert len(facts["steps"]) >= 9  # six assets and three checks
    assert facts["workers"] and all(w.startswith(WORKER) for w in facts["workers"])
    for step, pid in facts["steps"].items():
        with open(
            f"/proc/{pid}/cmdline", "rb"
        ) as f:  # the worker is still running: its process executed the step
            assert b"celery" in f.read(), f"step {step} ran in pid {pid}, not the celery worker"

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing")
    assert fs.exists(f"vitrieve/data/catalogues/{CATALOGUE}/catalogue.json")
    assert fs.exists(f"vitrieve/data/indexes/{CATALOGUE}/CURRENT")
    assert fs.glob("vitrieve/data/models/*/model.safetensors")
