"""A failed blocking check stops the rest of the run, so the last good index stays published; runs are tagged
with their catalogue and model."""

from __future__ import annotations

import copy

import dagster as dg

from storage.fs import StorageRoot
from storage.index import current
from tests.conftest import needs_fashion_mnist
from tests.ops_support import TINY_OPS


@needs_fashion_mnist
def test_failed_model_check_keeps_the_last_good_index(tmp_path):
    from assets.resources import ComputeResource, DiagnosticsResource, StorageResource
    from pipelines.definitions import defs as build_defs

    resources = {
        "storage": StorageResource(root=str(tmp_path / "data")),
        "diagnostics": DiagnosticsResource(path=str(tmp_path / "diagnostics.duckdb")),
        "compute": ComputeResource(device="cpu", threads=1),
    }
    job = build_defs().resolve_job_def("train_and_publish")
    bad = copy.deepcopy(TINY_OPS)
    bad["hashing_model"]["config"].update(seed=1, min_val_map=1.01)  # a new model that cannot reach the floor
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["fashion-mnist"])

        def run(config: dict) -> dg.ExecuteInProcessResult:
            return job.execute_in_process(
                run_config={"ops": config},
                instance=instance,
                partition_key="fashion-mnist",
                resources=resources,
                raise_on_error=False,
            )

        good = run(TINY_OPS)
        assert good.success
        published = current(StorageRoot(tmp_path / "data"), "fashion-mnist")

        failed = run(bad)
        checks = {e.asset_check_key.name: e.passed for e in failed.get_asset_check_evaluations()}
        # map_regression runs too; the tiny validation slice is under its min_samples, so it is not judged
        assert checks == {"model_quality": False, "map_regression": True}
        done = {e.asset_key.path[-1] for e in failed.get_asset_materialization_events()}
        assert done == {"catalogue", "hashing_model"}  # packed_codes and everything after it were skipped
        assert current(StorageRoot(tmp_path / "data"), "fashion-mnist") == published
        tags = instance.get_run_by_id(failed.run_id).tags
        assert tags["vitrieve/catalogue"] == "fashion-mnist"
        assert tags["vitrieve/model"] != published["model_id"]  # the rejected model is named on its run

        from assets.common import latest_model_id

        assert (
            latest_model_id(instance, "fashion-mnist") == published["model_id"]
        )  # later runs skip the reject
        nightly = (
            build_defs()
            .resolve_job_def("nightly_reindex")
            .execute_in_process(
                instance=instance,
                partition_key="fashion-mnist",
                resources=resources,
                run_config={"ops": {"retrieval_diagnostics": {"config": {"latency_queries": 20}}}},
            )
        )
        assert nightly.success
        assert current(StorageRoot(tmp_path / "data"), "fashion-mnist")["model_id"] == published["model_id"]
