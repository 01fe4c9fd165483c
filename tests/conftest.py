"""Shared fixtures: a tiny slice of the real Fashion-MNIST and an isolated Dagster instance."""

from __future__ import annotations

import os

import pytest

from storage.ingest_idx import FASHION_MNIST_DIR

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="Debian package dataset-fashion-mnist not installed (make test installs it)",
)


@pytest.fixture(autouse=True)
def _seed_and_threads(monkeypatch):
    import numpy as np

    np.random.seed(0)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


TINY = {
    "catalogue": {"config": {"train_limit": 700, "query_limit": 200, "validation_size": 150, "seed": 1}},
    "hashing_model": {
        "config": {
            "epochs": 2,
            "batch_size": 64,
            "val_queries": 150,
            "val_database": 400,
            "min_val_map": 0.3,
            "bits": 32,
        }
    },
    "model_evaluation": {"config": {"stability_sample": 200}},
    "retrieval_diagnostics": {"config": {"latency_queries": 50}},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """train_and_publish on 700 train + 200 query real images, 2 epochs, 32 bits."""
    import dagster as dg

    from assets.partitions import catalogues
    from assets.resources import ComputeResource, DiagnosticsResource, StorageResource
    from pipelines.definitions import defs as build_defs
    from storage.diagnostics import DiagnosticsDB
    from storage.fs import StorageRoot

    if not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("dataset-fashion-mnist not installed")
    tmp = tmp_path_factory.mktemp("e2e")
    resources = {
        "storage": StorageResource(root=str(tmp / "data")),
        "diagnostics": DiagnosticsResource(path=str(tmp / "data" / "diagnostics.duckdb")),
        "compute": ComputeResource(device="cpu", threads=2),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(catalogues.name, ["fashion-mnist"])
        job = build_defs().resolve_job_def("train_and_publish")
        result = job.execute_in_process(
            run_config={"ops": TINY}, instance=instance, partition_key="fashion-mnist", resources=resources
        )
        yield result, StorageRoot(tmp / "data"), DiagnosticsDB(tmp / "data" / "diagnostics.duckdb")
