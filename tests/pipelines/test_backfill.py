"""Backfills over catalogue partitions, as the daemon runs them: the code location loaded from
``pipelines.definitions`` (a code server, like ``dagster dev``), a backfill of ``catalogue`` over two catalogues,
the backfill daemon's iterations, runs executed synchronously: one run per catalogue."""

from __future__ import annotations

import logging
import os
import time

import dagster as dg

from storage.catalogue import read_catalogue
from storage.fs import StorageRoot
from storage.ingest_idx import FASHION_MNIST_DIR
from tests.conftest import needs_fashion_mnist

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CATALOGUES = ["north", "south"]


def test_no_asset_sets_a_backfill_policy():
    from pipelines.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    for (
        key
    ) in graph.materializable_asset_keys:  # the default: one run per catalogue, tagged dagster/partition
        assert graph.get(key).backfill_policy is None, key


@needs_fashion_mnist
def test_backfill_over_two_catalogues(tmp_path, monkeypatch):
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    root = tmp_path / "data"
    for name, value in {
        "VITRIEVE_ROOT": str(root),
        "VITRIEVE_DB": str(tmp_path / "diagnostics.duckdb"),
        "VITRIEVE_DEVICE": "cpu",
        "PYTHONPATH": REPO,
    }.items():
        monkeypatch.setenv(name, value)
    source = {"source": FASHION_MNIST_DIR, "train_limit": 60, "query_limit": 20, "validation_size": 10}
    with dg.instance_for_test(synchronous_run_coordinator=True, synchronous_run_launcher=True) as instance:
        instance.add_dynamic_partitions("catalogues", CATALOGUES)
        target = ModuleTarget("pipelines.definitions", "defs", REPO, "vitrieve")
        with create_test_daemon_workspace_context(target, instance) as workspace:
            backfill = PartitionBackfill.from_asset_partitions(
                backfill_id="two-catalogues",
                asset_graph=workspace.create_request_context().asset_graph,
                partition_names=CATALOGUES,
                asset_selection=[dg.AssetKey("catalogue")],
                backfill_timestamp=time.time(),
                tags={},
                dynamic_partitions_store=instance,
                all_partitions=False,
                title=None,
                description=None,
                run_config={"ops": {"catalogue": {"config": source}}},
            )
            instance.add_backfill(backfill)
            for _ in range(6):
                list(execute_backfill_iteration(workspace, logging.getLogger("backfill")))
                if instance.get_backfill("two-catalogues").status != BulkActionStatus.REQUESTED:
                    break
        assert instance.get_backfill("two-catalogues").status == BulkActionStatus.COMPLETED_SUCCESS
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": "two-catalogues"}))
        # one run per catalogue, tagged like a single-catalogue launch (the run queue limits on this tag)
        assert sorted(run.tags["dagster/partition"] for run in runs) == CATALOGUES
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    for name in CATALOGUES:
        table, _ = read_catalogue(StorageRoot(str(root)), name, columns=["row_id"])
        assert table.num_rows == 80
