"""Sharded encoding on two Celery workers (docs/OPERATIONS.md, "Sharded encoding"): ``packed_codes`` with
``VITRIEVE_SHARD_ROWS`` set fans out one step per shard; both workers take shards; the pool process encoding
one shard is SIGKILLed mid-shard and the run still completes (the task goes back to the queue); the codes
equal those of the one-step asset run in one process. Redis, Postgres and S3 (moto) on 127.0.0.1; marked
``celery``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import needs_fashion_mnist
from tests.ops.test_celery import CATALOGUE, SCALEOUT, _wait_ready
from tests.ops_support import BIN, REPO, TINY_OPS, moto_s3, postgres_server, process, redis_server

pytestmark = [pytest.mark.celery, needs_fashion_mnist, pytest.mark.timeout(1800)]

SHARDS = 4  # about this many shards of the tiny catalogue
SMALL_CHUNKS = {"packed_codes": {"config": {"chunk_rows": 16}}}  # many batches: a shard lasts a few seconds
ENCODE_STEP = "packed_codes.encode_codes_shard["

CODES = r"""
import hashlib, json, os, sys
from storage.codes import read_codes, parts_manifest
from storage.fs import StorageRoot
root, name = StorageRoot(os.environ["VITRIEVE_ROOT"]), sys.argv[1]
[model] = root.names("codes", name)
ids, codes, meta = read_codes(root, name, model)
print(json.dumps({"rows": len(ids), "sha256": hashlib.sha256(ids.tobytes() + codes.tobytes()).hexdigest(),
                  "parts": parts_manifest(root, name, model)["parts"]}))
"""

MAX_ROW_ID = r"""
import os, sys, pyarrow.compute as pc
from storage.catalogue import read_catalogue
from storage.fs import StorageRoot
table, _ = read_catalogue(StorageRoot(os.environ["VITRIEVE_ROOT"]), sys.argv[1], columns=["row_id"])
print(pc.max(table["row_id"]).as_py())
"""


def _python(env: dict, code: str, *args: str) -> str:
    out = subprocess.run(
        [os.path.join(BIN, "python"), "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return (out.stdout.strip().splitlines() or [""])[-1]


def _materialise(select: str, ops: dict, tmp_path: Path) -> list[str]:
    """The command that materialises ``select`` for the catalogue with run config ``ops``."""
    config = tmp_path / f"{select.replace(',', '_')}.json"
    config.write_text(json.dumps({"ops": ops}))
    return [
        os.path.join(BIN, "dagster"),
        "asset",
        "materialize",
        "-m",
        "pipelines.definitions",
        "--select",
        select,
        "--partition",
        CATALOGUE,
        "-c",
        str(config),
    ]


def _run(args: list[str], env: dict, timeout: float) -> None:
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (the Celery main process, its pool processes)."""
    children: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        children = {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    return children.union(*(_descendants(c) for c in children))


def _step_events(instance, run_id: str) -> list:
    return [
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(run_id).records
        if r.event_log_entry.dagster_event is not None
    ]


def _running_shard(instance, worker_pids: list[int], timeout: float = 900) -> tuple[str, str, int]:
    """(run id, step key, pid) of a shard step that has started in a worker's pool process and not ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(limit=1)
        if runs:
            events = _step_events(instance, runs[0].run_id)
            ended = {e.step_key for e in events if e.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")}
            pool = set().union(*(_descendants(p) for p in worker_pids))
            for e in events:
                started = e.event_type_value == "STEP_START" and e.step_key.startswith(ENCODE_STEP)
                if started and e.step_key not in ended and e.pid in pool:
                    return runs[0].run_id, e.step_key, e.pid
        time.sleep(0.2)
    raise TimeoutError("no shard step started on a Celery worker")


def test_two_workers_encode_the_shards_and_a_killed_one_costs_one_shard(tmp_path, monkeypatch):
    pytest.importorskip("dagster_celery")
    pytest.importorskip("dagster_postgres")
    import dagster as dg

    logs = str(tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(os.path.join(SCALEOUT, "dagster.yaml"), home / "dagster.yaml")
    with moto_s3(logs) as aws, redis_server(logs) as redis, postgres_server(logs) as pg:
        pg_url = f"postgresql+psycopg2://{pg['username']}@{pg['hostname']}:{pg['port']}/{pg['db_name']}"
        env = {
            **os.environ,
            **aws,
            "PYTHONPATH": REPO,
            "OMP_NUM_THREADS": "1",
            "DAGSTER_HOME": str(home),
            "PATH": BIN + os.pathsep + os.environ["PATH"],
            "VITRIEVE_PG_URL": pg_url,
            "VITRIEVE_ROOT": "s3://vitrieve/data",
            "VITRIEVE_DB": str(tmp_path / "diagnostics.duckdb"),
            "VITRIEVE_DEVICE": "cpu",
        }
        for key in ("VITRIEVE_EXECUTOR", "VITRIEVE_SHARD_ROWS"):
            env.pop(key, None)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("VITRIEVE_PG_URL", pg_url)
        register = f"import dagster as dg; dg.DagsterInstance.get().add_dynamic_partitions('catalogues', [{CATALOGUE!r}])"
        _python(env, register)
        # the catalogue and its model, in this machine's processes
        ops = {k: TINY_OPS[k] for k in ("catalogue", "hashing_model")}
        _run(_materialise("catalogue,hashing_model", ops, tmp_path), env, 900)
        shard_rows = int(_python(env, MAX_ROW_ID, CATALOGUE)) // SHARDS + 1
        sharded = env | {
            "VITRIEVE_EXECUTOR": "celery",
            "VITRIEVE_SHARD_ROWS": str(shard_rows),
            "VITRIEVE_CELERY_BROKER": redis,
            "VITRIEVE_CELERY_BACKEND": redis.rsplit("/", 1)[0] + "/1",
        }
        workers = []
        with contextlib.ExitStack() as stack:
            for name in ("shard-a", "shard-b"):
                log = os.path.join(logs, f"celery-{name}.log")
                args = [
                    os.path.join(BIN, "dagster-celery"),
                    *("worker", "start", "-A", "dagster_celery.app"),
                    *("-y", os.path.join(SCALEOUT, "celery.yaml"), "-n", name, "--", "--concurrency=1"),
                ]
                workers.append(stack.enter_context(process(args, log, cwd=REPO, env=sharded)))
                _wait_ready(log, workers[-1])
            codes_cmd = _materialise("packed_codes", SMALL_CHUNKS, tmp_path)
            with open(os.path.join(logs, "sharded-run.log"), "wb") as out:
                launch = subprocess.Popen(
                    codes_cmd, env=sharded, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
                )
            instance = dg.DagsterInstance.get()
            try:
                run_id, victim, pid = _running_shard(instance, [w.pid for w in workers])
                os.kill(pid, signal.SIGKILL)  # the pool process encoding one shard, mid-shard
                assert launch.wait(timeout=1200) == 0, Path(logs, "sharded-run.log").read_text()[-3000:]
            finally:
                if launch.poll() is None:
                    launch.kill()
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        events = _step_events(instance, run_id)
        successes = [(e.step_key, e.pid) for e in events if e.event_type_value == "STEP_SUCCESS"]
        shards = sorted({k for k, _ in successes if k.startswith(ENCODE_STEP)})
        # the killed shard did not finish in the killed process and was encoded again by another one
        assert victim in shards and (victim, pid) not in successes
        assert len(shards) >= 3
        workers_used = {
            e.engine_event_data.metadata["Celery worker"].value
            for e in events
            if e.event_type_value == "ENGINE_EVENT" and "in celery worker" in (e.message or "")
        }
        assert {w.split("@")[0] for w in workers_used} == {"shard-a", "shard-b"}  # both workers took shards
        celery_codes = json.loads(_python(env, CODES, CATALOGUE))
        assert len(celery_codes["parts"]) == len(shards) and all(
            p.startswith("shard-") for p in celery_codes["parts"]
        )
        # the same codes from the one-step asset, in one process
        one = {"packed_codes": {"config": {"incremental": False}}}
        _run(_materialise("packed_codes", one, tmp_path), env, 900)
        one_codes = json.loads(_python(env, CODES, CATALOGUE))
        assert all(p.startswith("part-") for p in one_codes["parts"])
        assert (one_codes["rows"], one_codes["sha256"]) == (celery_codes["rows"], celery_codes["sha256"])
