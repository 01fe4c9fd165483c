"""``vitrieve bench faults``: a seeded campaign of SIGKILLs at random moments of the asset graph.

Each kill runs ``train_and_publish`` on a tiny Fashion-MNIST catalogue in a child process, on local storage or on
an S3 endpoint, and SIGKILLs it after a random delay, so it dies inside whichever asset runs then. Two scenarios
alternate: ``fresh`` (nothing stored yet) and ``update`` (a published state, then a changed catalogue, so every
asset has work and the published index must survive). After the kill the state is checked:

- the catalogue and every model with a card read back (verified reads);
- codes are complete or absent: a ``parts.json`` means every listed part reads back with the recorded rows;
- the published index loads (sha256) and a database code finds itself; in ``update``, ``CURRENT`` still exists;
- the diagnostics DuckDB opens, and no row of any table names a run the ``runs`` table lacks;

then the run is repeated to completion, and its codes must equal those of an unbroken run of the same config.
Drives the asset graph (``pipelines.definitions``) like a user; the child is ``python -m bench.faults --child``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

NAME = "faults"
# vts-cls, depth 1, width 24, 1 epoch: seconds on a CPU; min_val_map 0: the campaign tests storage, not quality
TINY_OPS = {
    "hashing_model": {
        "config": {
            "model": "vts-cls",
            "overrides": {"depth": 1, "embed_dim": 24, "num_heads": 1},
            "epochs": 1,
            "batch_size": 32,
            "warmup_steps": 1,
            "bits": 16,
            "val_queries": 8,
            "val_database": 32,
            "min_val_map": 0.0,
            "augment": False,
        }
    },
    "model_evaluation": {"config": {"stability_sample": 8}},
    "retrieval_diagnostics": {"config": {"latency_queries": 4, "large_batch": 8, "threads": 1}},
}
SCENARIOS = ("fresh", "update")


def catalogue_config(scenario: str) -> dict:
    """The catalogue a run ingests: ``update`` adds 40 training images to the ``fresh`` one."""
    from storage.ingest_idx import FASHION_MNIST_DIR

    limit = 160 + (40 if scenario == "update" else 0)
    return {
        "source": FASHION_MNIST_DIR,
        "train_limit": limit,
        "query_limit": 40,
        "validation_size": 20,
        "seed": 0,
    }


# --------------------------------------------------------------------------------------------- child


def run_child(spec: dict) -> int:
    """The child: ``train_and_publish`` for the catalogue, against a persistent Dagster instance."""
    import dagster as dg

    from assets.resources import ComputeResource, DiagnosticsResource, StorageResource
    from pipelines.definitions import build_definitions

    instance = dg.DagsterInstance.local_temp(spec["home"])
    if not instance.has_dynamic_partition("catalogues", NAME):
        instance.add_dynamic_partitions("catalogues", [NAME])
    resources = {
        "storage": StorageResource(root=spec["root"]),
        "diagnostics": DiagnosticsResource(path=spec["db"]),
        "compute": ComputeResource(device="cpu", threads=1),
    }
    result = (
        build_definitions(resources)
        .resolve_job_def("train_and_publish")
        .execute_in_process(
            run_config={"ops": {"catalogue": {"config": spec["catalogue"]}, **TINY_OPS}},
            instance=instance,
            partition_key=NAME,
            raise_on_error=False,
        )
    )
    return 0 if result.success else 1


# --------------------------------------------------------------------------------------------- checks


ASSETS = (
    "catalogue",
    "hashing_model",
    "packed_codes",
    "model_evaluation",
    "binary_index",
    "retrieval_diagnostics",
)


def _step_events(home: str):
    """(step key, event type, timestamp) of the latest run of the instance at ``home``."""
    import dagster as dg

    instance = dg.DagsterInstance.local_temp(home)
    runs = instance.get_runs(limit=1)
    for entry in instance.all_logs(runs[0].run_id) if runs else []:
        event = entry.dagster_event
        if event is not None and event.step_key:
            yield event.step_key, event.event_type_value, entry.timestamp


def asset_windows(home: str, started_at: float) -> dict[str, tuple[float, float]]:
    """Seconds after the child's start at which each asset's step started and ended (unbroken run)."""
    start, end = {}, {}
    for step, kind, ts in _step_events(home):
        if kind == "STEP_START":
            start[step] = ts - started_at
        elif kind == "STEP_SUCCESS":
            end[step] = ts - started_at
    return {a: (start[a], end[a]) for a in ASSETS if a in start and a in end}


def running_asset(home: str) -> str:
    """The step the latest run of the instance had started and not finished ("start-up" if none)."""
    started, done = [], set()
    with contextlib.suppress(Exception):
        for step, kind, _ in _step_events(home):
            if kind == "STEP_START":
                started.append(step)
            elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
                done.add(step)
    pending = [s for s in started if s not in done]
    return pending[-1] if pending else ("between steps" if started else "start-up")


def corrupt_state(root_uri: str, db_path: str, had_published: bool) -> list[str]:
    """What a reader would trip over after a kill (empty = consistent)."""
    from storage.catalogue import catalogue_exists, read_catalogue
    from storage.codes import PARTS_FILE, parts_manifest, read_code_arrays
    from storage.fs import StorageRoot
    from storage.index import current, load_index
    from storage.model_store import has_model, read_weights

    root = StorageRoot(root_uri)
    problems = []

    def check(what: str, fn) -> None:
        try:
            fn()
        except Exception as err:  # any failure to read back is the finding
            problems.append(f"{what}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")

    if catalogue_exists(root, NAME):
        check("catalogue", lambda: read_catalogue(root, NAME))
    for model_id in root.names("models"):
        if has_model(root, model_id):
            check(f"model {model_id}", lambda m=model_id: read_weights(root, m))
    for model_id in root.names("codes", NAME):
        manifest = parts_manifest(root, NAME, model_id)
        if manifest is not None and not manifest.get("legacy"):

            def codes_complete(m=model_id, rows=manifest["rows"]) -> None:
                got = len(read_code_arrays(root, NAME, m)[0])
                if got != rows:
                    raise ValueError(f"{got} codes, {PARTS_FILE} says {rows}")

            check(f"codes {model_id}", codes_complete)
    if root.exists("indexes", NAME, "CURRENT"):
        check("published index", lambda: _index_answers(root, current(root, NAME)["model_id"], load_index))
    elif had_published:
        problems.append("published index lost: no CURRENT")
    if os.path.exists(db_path):
        check("diagnostics DB", lambda: _db_consistent(db_path))
    return problems


def _index_answers(root, model_id: str, load_index) -> None:
    from storage.codes import read_code_arrays

    index, _ = load_index(root, NAME)
    row_ids, codes = read_code_arrays(root, NAME, model_id)
    probe = int(np.flatnonzero(np.isin(row_ids, index.ids()))[0])
    dist, ids = index.search(codes[probe : probe + 1], 1)
    if dist[0, 0] != 0:
        raise ValueError(f"row {row_ids[probe]} does not find its own code")


def _db_consistent(db_path: str) -> None:
    from storage.diagnostics import DiagnosticsDB

    db = DiagnosticsDB(db_path)
    _, tables = db.query(
        "SELECT DISTINCT c.table_name FROM information_schema.columns c JOIN information_schema.tables t "
        "USING (table_name) WHERE c.column_name = 'run_id' AND c.table_name <> 'runs' "
        "AND t.table_type = 'BASE TABLE'"
    )
    for (table,) in tables:
        _, rows = db.query(f'SELECT count(*) FROM "{table}" WHERE run_id NOT IN (SELECT run_id FROM runs)')
        if rows[0][0]:
            raise ValueError(f"{rows[0][0]} rows of {table} name no run")


# --------------------------------------------------------------------------------------------- campaign


@dataclass
class Kill:
    kill: int
    storage: str
    scenario: str
    target: str  # the asset the kill aimed at (its window in the unbroken run)
    delay_s: float
    asset: str = ""  # where the run really was when killed
    problems: list[str] = field(default_factory=list)
    rerun_ok: bool = False
    codes_equal: bool = False

    @property
    def corrupt(self) -> bool:
        return bool(self.problems) or not self.rerun_ok or not self.codes_equal


def _spawn(spec: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.faults", "--child", json.dumps(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DAGSTER_HOME": spec["home"]},
    )


def _run(spec: dict) -> tuple[bool, float, str]:
    """(success, wall clock at the child's start, the end of its stderr)."""
    started_at = time.time()
    child = _spawn(spec)
    _, err = child.communicate()
    return child.returncode == 0, started_at, err[-2000:]


def _codes(root_uri: str) -> tuple[np.ndarray, np.ndarray]:
    from storage.codes import read_code_arrays
    from storage.fs import StorageRoot
    from storage.index import current

    root = StorageRoot(root_uri)
    return read_code_arrays(root, NAME, current(root, NAME)["model_id"])


def _state(work: Path, label: str, storage: str, baseline: Path | None, s3_bucket: str) -> dict:
    """A state directory (Dagster home, DuckDB, local root), copied from ``baseline``; on S3 the root is a fresh
    prefix holding the baseline's files."""
    d = work / label
    if baseline is not None:
        shutil.copytree(baseline, d)
    else:
        (d / "home").mkdir(parents=True)
    root = str(d / "data")
    if storage == "s3":
        import s3fs

        root = f"s3://{s3_bucket}/{label}"
        if (d / "data").exists():
            s3fs.S3FileSystem().put(str(d / "data"), root.removeprefix("s3://"), recursive=True)
            shutil.rmtree(d / "data")
    return {"home": str(d / "home"), "root": root, "db": str(d / "diagnostics.duckdb")}


def run_campaign(
    kills: int, seed: int, storages: tuple[str, ...], work: Path, log=print
) -> tuple[list[Kill], dict]:
    """``kills`` seeded kills, round-robin over ``storages`` and the scenarios; returns the rows and facts."""
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    refs: dict[str, tuple] = {}
    windows: dict[str, dict[str, tuple[float, float]]] = {}
    baseline = work / "baseline"
    for scenario in SCENARIOS:  # unbroken reference runs: their codes, and when each asset ran
        state = _state(work, f"ref-{scenario}", "local", baseline if scenario == "update" else None, "")
        if scenario == "fresh":
            shutil.rmtree(baseline, ignore_errors=True)
        ok, started_at, err = _run(state | {"catalogue": catalogue_config(scenario)})
        if not ok:
            raise RuntimeError(f"the unbroken {scenario} run failed: {err}")
        refs[scenario], windows[scenario] = _codes(state["root"]), asset_windows(state["home"], started_at)
        if scenario == "fresh":
            shutil.copytree(work / "ref-fresh", baseline)
        spans = ", ".join(f"{a} {b - a_:.1f}s" for a, (a_, b) in windows[scenario].items())
        log(f"reference {scenario}: {len(refs[scenario][0])} codes; {spans}")
    rows = []
    for i in range(kills):
        storage, scenario = storages[i % len(storages)], SCENARIOS[(i // len(storages)) % 2]
        target = rng.choice(sorted(windows[scenario]))  # a random asset, then a random moment inside it
        lo, hi = windows[scenario][target]
        delay = lo + rng.random() * (hi - lo)
        state = _state(
            work, f"kill-{i}", storage, baseline if scenario == "update" else None, "vitrieve-faults"
        )
        spec = state | {"catalogue": catalogue_config(scenario)}
        row = Kill(i, storage, scenario, target, round(delay, 2))
        child = _spawn(spec)
        try:
            child.wait(timeout=delay)
            row.asset = "finished before the kill"
        except subprocess.TimeoutExpired:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate()
            row.asset = running_asset(state["home"])
        row.problems = corrupt_state(state["root"], state["db"], had_published=scenario == "update")
        row.rerun_ok, _, err = _run(spec)
        if row.rerun_ok:
            ids, codes = _codes(state["root"])
            row.codes_equal = np.array_equal(ids, refs[scenario][0]) and np.array_equal(
                codes, refs[scenario][1]
            )
        else:
            row.problems.append(f"rerun failed: {err.strip().splitlines()[-1] if err.strip() else '?'}")
        log(
            f"kill {i}: {storage} {scenario} at {delay:.1f}s in {row.asset}: "
            + ("CORRUPT " + "; ".join(row.problems) if row.corrupt else "consistent, rerun equal")
        )
        shutil.rmtree(work / f"kill-{i}", ignore_errors=True)
        rows.append(row)
    facts = {"asset_windows_s": windows, "seed": seed, "storages": list(storages)}
    return rows, facts


def summary(rows: list[Kill]) -> dict[str, int]:
    killed = [r for r in rows if r.asset != "finished before the kill"]
    return {
        "kills": len(killed),
        "corrupt_states": sum(r.corrupt for r in killed),
        "lost_published_indexes": sum(any("published index lost" in p for p in r.problems) for r in killed),
        "reruns_failed": sum(not r.rerun_ok for r in killed),
        "codes_differ": sum(r.rerun_ok and not r.codes_equal for r in killed),
        "finished_before_kill": len(rows) - len(killed),
    }


def format_table(rows: list[Kill]) -> str:
    from tabulate import tabulate

    return tabulate(
        [
            (r.kill, r.storage, r.scenario, r.target, r.delay_s, r.asset, "CORRUPT" if r.corrupt else "ok")
            for r in rows
        ],
        headers=["kill", "storage", "scenario", "aimed at", "delay s", "killed in", "state"],
    )


def record(db_path: str, rows: list[Kill], facts: dict) -> str:
    from storage.diagnostics import DiagnosticsDB, insert_metrics

    totals = summary(rows)
    config = facts | {"rows": [asdict(r) for r in rows]}
    return DiagnosticsDB(db_path).record(
        "bench-faults",
        None,
        None,
        config,
        None,
        lambda run_id, con: insert_metrics(con, run_id, [(k, None, float(v)) for k, v in totals.items()]),
    )


@contextlib.contextmanager
def s3_endpoint(storages: tuple[str, ...]):
    """A local S3 endpoint with the campaign's bucket when ``s3`` is asked for and no ``AWS_ENDPOINT_URL`` is
    set."""
    if "s3" not in storages or os.environ.get("AWS_ENDPOINT_URL"):
        yield
        return
    import s3fs

    from bench.s3_local import local_s3

    with local_s3():
        s3fs.S3FileSystem().mkdir("vitrieve-faults")
        yield


def run_fault_bench(
    db: str, kills: int, seed: int, storages: tuple[str, ...], workdir: str | None, json_path: str | None
) -> int:
    """The ``vitrieve bench faults`` verb: exit 1 if any kill left a corrupt state."""
    import tempfile

    with contextlib.ExitStack() as stack:
        work = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(s3_endpoint(storages))
        rows, facts = run_campaign(kills, seed, storages, work, log=lambda m: print(m, file=sys.stderr))
    print(format_table(rows))
    totals = summary(rows)
    print(
        f"\n{totals['kills']} kills, {totals['corrupt_states']} corrupt states, "
        f"{totals['lost_published_indexes']} lost published indexes"
    )
    record(db, rows, facts)
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 1 if totals["corrupt_states"] else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(run_child(json.loads(sys.argv[2])))
    sys.exit("usage: vitrieve bench faults ... (python -m bench.faults --child SPEC is its child process)")
