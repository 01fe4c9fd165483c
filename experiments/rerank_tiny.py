"""A small published Fashion-MNIST catalogue to validate ``vitrieve bench rerank`` and the copies protocol on:
3,000 training images (the database), 300 queries, the tests' smallest ViT (depth 1, width 24) trained
3 epochs at 32 bits, codes with int8 embeddings, ``model_evaluation`` with the copies protocol (500 copies).
About 2 minutes on 2 CPU cores. Not a quality figure: the model is far too small.

    .venv/bin/python -m experiments.rerank_tiny /tmp/rr
    .venv/bin/vitrieve bench rerank --root /tmp/rr --db /tmp/rr/bench.duckdb --device cpu --copies 500
"""

import sys

import dagster as dg

from assets.resources import ComputeResource, DiagnosticsResource, StorageResource
from pipelines.definitions import build_definitions
from storage.ingest_idx import FASHION_MNIST_DIR

root = sys.argv[1]
ops = {
    "catalogue": {
        "config": {
            "source": FASHION_MNIST_DIR,
            "train_limit": 3000,
            "query_limit": 300,
            "validation_size": 200,
            "seed": 0,
        }
    },
    "hashing_model": {
        "config": {
            "model": "vts-cls",
            "overrides": {"depth": 1, "embed_dim": 24, "num_heads": 1},
            "epochs": 3,
            "batch_size": 64,
            "warmup_steps": 5,
            "bits": 32,
            "val_queries": 100,
            "val_database": 400,
            "min_val_map": 0.0,
            "augment": False,
        }
    },
    "packed_codes": {"config": {"embeddings": "int8"}},
    "model_evaluation": {"config": {"stability_sample": 50, "copy_protocol": True, "copies": 500}},
    "retrieval_diagnostics": {"config": {"latency_queries": 20, "large_batch": 20, "threads": 1}},
}
resources = {
    "storage": StorageResource(root=root),
    "diagnostics": DiagnosticsResource(path=f"{root}/diagnostics.duckdb"),
    "compute": ComputeResource(device="cpu", threads=2),
}
instance = dg.DagsterInstance.ephemeral()
instance.add_dynamic_partitions("catalogues", ["fashion-mnist"])
result = (
    build_definitions(resources)
    .resolve_job_def("train_and_publish")
    .execute_in_process(run_config={"ops": ops}, instance=instance, partition_key="fashion-mnist")
)
print("success" if result.success else "FAILED")
