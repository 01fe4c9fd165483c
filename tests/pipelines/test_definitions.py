"""Dagster definitions load, validate and wire jobs and the schedule as docs/ARCHITECTURE.md describes them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import dagster as dg
import pytest

from pipelines.definitions import defs as build_defs
from pipelines.jobs import nightly_reindex_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_definitions_are_loadable():
    defs = build_defs()
    dg.Definitions.validate_loadable(defs)
    nightly = defs.resolve_job_def("nightly_reindex")
    nodes = {n.name for n in nightly.graph.node_defs}
    assert "hashing_model" not in nodes  # no training in the nightly job
    assert {"packed_codes", "binary_index", "retrieval_diagnostics"} <= nodes
    reindex = {n.name for n in defs.resolve_job_def("ingest_and_reindex").graph.node_defs}
    assert "hashing_model" not in reindex and {"catalogue", "packed_codes", "binary_index"} <= reindex
    assert defs.resolve_sensor_def("catalogue_source_sensor")
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        "model_quality",
        "codes_complete",
        "index_consistent",
        "map_regression",
        "eval_map_regression",
        "bit_balance_drift",
        "collision_rate",
        "copy_recall_drop",
    }
    assert defs.resolve_job_def("retrain_model")
    assert {"retrain_on_catalogue_change", "automation_sensor"} <= {s.name for s in defs.sensors}


def test_loading_definitions_does_not_import_torch():
    code = "import sys, pipelines.definitions as d; d.defs(); print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_dagster_cli_validates_workspace():
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    proc = subprocess.run(
        [dagster, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nightly_schedule_requests_one_run_per_catalogue():
    # contexts used as context managers close before the instance does (else a late close can leave the
    # closed instance's defs-state storage current for later tests)
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 1, 2, 2, tzinfo=UTC)
        ) as ctx,
    ):
        assert isinstance(nightly_reindex_schedule(ctx), dg.SkipReason)
        instance.add_dynamic_partitions("catalogues", ["fashion-mnist", "shoes"])
        requests = nightly_reindex_schedule(ctx)
        assert sorted(r.partition_key for r in requests) == ["fashion-mnist", "shoes"]
        assert {r.run_key for r in requests} == {"fashion-mnist-2026-01-02", "shoes-2026-01-02"}


def test_executor_is_chosen_by_configuration(monkeypatch):
    from pipelines.executors import executor_from_env

    assert executor_from_env() is None  # Dagster's default: multiprocess for launched runs
    monkeypatch.setenv("VITRIEVE_EXECUTOR", "celery")
    pytest.importorskip("dagster_celery")
    assert executor_from_env().name == "celery"
    job = build_defs().resolve_job_def("train_and_publish")
    assert job.executor_def.name == "celery"
    monkeypatch.setenv("VITRIEVE_EXECUTOR", "spark")
    with pytest.raises(ValueError, match="VITRIEVE_EXECUTOR"):
        executor_from_env()


def test_pools_code_versions_and_blocking_checks():
    import yaml

    from pipelines.execution import INSTANCE_YAML

    defs = build_defs()
    graph = defs.resolve_asset_graph()
    names = [key.path[-1] for key in graph.materializable_asset_keys]
    assert all(
        graph.get(key).code_version for key in graph.materializable_asset_keys
    )  # unchanged work is recognisable
    pools = {
        name: defs.resolve_assets_def(name).op.pool for name in names if defs.resolve_assets_def(name).op.pool
    }
    assert pools == {
        "hashing_model": "gpu",
        "model_evaluation": "duckdb_writer",
        "retrieval_diagnostics": "duckdb_writer",
    }
    assert all(graph.get_check_spec(k).blocking for k in graph.asset_check_keys)
    with open(os.path.join(ROOT, "pipelines", "scaleout", "dagster.yaml")) as f:
        scaleout = yaml.safe_load(f)
    for config in (yaml.safe_load(INSTANCE_YAML), scaleout):
        assert (
            config["concurrency"]["pools"]["default_limit"] == 1
        )  # one training / one DuckDB writer at a time
        assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
