"""``vitrieve bench transfer``: the transfer path's cost, feature extraction and head training, at 224 px.

A seeded slice of Fashion-MNIST (``--images`` training rows plus ``--val-queries`` held-out rows, grey repeated
to ``--channels``) is resized to the preset's size; ``ml.transfer.train_transfer`` runs twice on it with the
``transfer`` profile: once on an empty feature cache (every row extracted by the frozen backbone) and once on
the filled cache (features read back, the head trained again). Reported: extraction images/s, the cold and warm
feature seconds, the head's training seconds (its epochs, and with per-epoch validation), the best validation
mAP@100 (meaningless with ``--pretrained none``, the default: random weights time the same). One
``bench-transfer`` run is recorded in the diagnostics DuckDB (``metrics`` and ``training_log``).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import numpy as np

from storage.diagnostics import DiagnosticsDB, insert_metrics, insert_training_log
from storage.fs import StorageRoot

CATALOGUE = "bench-transfer"


def run_transfer_bench(
    db_path: str,
    images: int = 10_000,
    val_queries: int = 500,
    preset: str = "transfer-vits16",
    pretrained: str = "none",
    channels: int = 3,
    epochs: int | None = None,
    bits: int = 64,
    device: str = "auto",
    seed: int = 0,
    source: str | None = None,
    root: str | None = None,
    json_path: str | None = None,
    overrides: dict | None = None,
) -> int:
    """Measure and record one transfer run (see the module doc); prints one JSON row; returns the exit code.
    ``overrides``: preset fields to replace (tests shrink the backbone with them)."""
    import torch

    from bench.training import load_slice, upscale
    from ml.device import configure_threads, resolve_device
    from ml.recipes import build_run
    from ml.transfer import TransferData, TransferRows, train_transfer
    from storage.ingest_idx import FASHION_MNIST_DIR

    try:
        spec, cfg = build_run(
            "transfer",
            10,
            channels,
            preset=preset,
            pretrained=pretrained,
            epochs=epochs,
            bits=bits,
            seed=seed,
            overrides=overrides,
        )
    except ValueError as err:
        print(f"vitrieve bench transfer: {err}", file=sys.stderr)
        return 2
    threads = configure_threads()
    torch_device = resolve_device(device)
    grey, labels = load_slice(source or FASHION_MNIST_DIR, images + val_queries, seed)
    onehot = np.eye(10, dtype=bool)[labels]

    def load(pos: np.ndarray) -> np.ndarray:  # resized when a row is extracted, as the asset decodes
        return np.repeat(upscale(grey[pos], spec.img_size, torch.device("cpu")), channels, axis=1)

    def rows(pos: np.ndarray) -> TransferRows:
        return TransferRows(pos.astype(np.int64), onehot[pos], lambda p: load(pos[p]))

    train_pos = np.arange(images)
    val_q, val_db = np.arange(images, images + val_queries), train_pos[: min(images, 2000)]
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="vitrieve-bench-transfer-") as tmp:
        data = TransferData(StorageRoot(root or tmp), CATALOGUE, rows(train_pos), rows(val_q), rows(val_db))
        t0 = time.perf_counter()
        cold = train_transfer(spec, cfg, data, torch_device, log=log)
        cold_s = time.perf_counter() - t0
        warm = train_transfer(spec, cfg, data, torch_device, log=log)
    head_epochs_s = sum(r["seconds"] for r in warm.history)
    row = {
        "preset": spec.preset,
        "pretrained": spec.pretrained or "none",
        "img_size": spec.img_size,
        "channels": channels,
        "device": str(torch_device),
        "threads": threads,
        "train_images": images,
        "extracted": cold.extracted,
        "extract_images_per_s": cold.extracted / cold.feature_seconds,
        "extract_seconds": cold.feature_seconds,
        "cached_feature_seconds": warm.feature_seconds,
        "head_epochs": len(warm.history),
        "head_train_seconds": head_epochs_s,
        "head_seconds_with_validation": warm.seconds - warm.feature_seconds,
        "cold_run_seconds": cold_s,
        "best_val_map_at_100": warm.best_val_map,
        "parameters": warm.parameters,
        "cache_key": cold.cache_key,
    }
    numbers = [(k, None, float(v)) for k, v in row.items() if isinstance(v, int | float)]

    def write(run_id: str, con) -> None:
        insert_metrics(con, run_id, numbers)
        insert_training_log(con, run_id, warm.history)

    config = {"spec": spec.to_dict(), "train": cfg.to_dict(), "val_queries": val_queries, "seed": seed}
    row["run_id"] = DiagnosticsDB(db_path).record("bench-transfer", CATALOGUE, None, config, None, write)
    print(json.dumps(row))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(row, f, indent=2)
    return 0
