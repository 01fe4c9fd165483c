"""``vitrieve bench quality``: train and evaluate (model, loss, bits) configurations on the Fashion-MNIST protocol.

Each configuration is a profile (``ml.recipes``) with fields replaced, e.g. ``--config bits=32`` or
``--config model=transhash,loss=transhash``. It trains with model selection on the held-out validation slice
(never the queries), under an optional wall-clock budget, then encodes the 10,000 test queries and the 60,000
training-set database and evaluates them. Every epoch's validation mAP@100 goes to DuckDB ``training_log`` and
the final query-set metrics and bit diagnostics to ``metrics``/``bit_stats`` (a ``bench-quality`` run per
configuration); the view ``quality_leaderboard`` ranks them. ``--quick`` (CI) runs one short configuration on a
seeded slice and checks the rows landed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from storage.diagnostics import (
    DiagnosticsDB,
    insert_bit_stats,
    insert_instance_metrics,
    insert_metrics,
    insert_training_log,
)

if TYPE_CHECKING:
    from ml.model_spec import ModelSpec
    from ml.train import TrainConfig, TrainResult

CATALOGUE = "fashion-mnist"


def _top_level_items(text: str) -> list[str]:
    """``text`` split at the commas outside JSON brackets (hand-written: ``str.split`` and ``csv`` see no nesting)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return items + [text[start:]]


def parse_config(text: str) -> dict:
    """``'model=vts,bits=32,overrides={"stem_channels":[32,64]}'`` -> ``{"model": "vts", "bits": 32, "overrides":
    {"stem_channels": [32, 64]}}``: JSON values (commas inside their brackets kept), else strings."""
    out: dict = {}
    for item in filter(None, (p.strip() for p in _top_level_items(text))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad --config item {item!r}: expected key=value")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


@dataclass
class Protocol:
    """Decoded Fashion-MNIST protocol at one image size: training set, validation slices, queries, database."""

    train: tuple[np.ndarray, np.ndarray]
    val_query: tuple[np.ndarray, np.ndarray]
    val_db: tuple[np.ndarray, np.ndarray]
    query: tuple[np.ndarray, np.ndarray]
    database: tuple[np.ndarray, np.ndarray]
    label_names: list[str]


def load_protocol(
    source: str,
    img_size: int,
    channels: int,
    seed: int = 0,
    train_limit: int | None = None,
    query_limit: int | None = None,
    validation_size: int = 5000,
    val_queries: int = 2000,
    val_database: int = 5000,
) -> Protocol:
    """The catalogue the ``catalogue`` asset would build from ``source`` (same seeded splits), decoded."""
    from imaging.decode import decode_images
    from ml.train import validation_pick
    from storage.catalogue import labels_matrix
    from storage.ingest_idx import idx_catalogue

    table, info = idx_catalogue(CATALOGUE, source, validation_size, seed, train_limit, query_limit)
    images = decode_images(table["image"].to_pylist(), img_size, channels)
    labels = labels_matrix(table, len(info.label_names))

    def rows(flag: str) -> np.ndarray:
        return np.flatnonzero(table[flag].to_numpy(zero_copy_only=False))

    train, val = rows("in_train"), rows("in_validation")
    pick_q, pick_db = validation_pick(len(val), len(train), val_queries, val_database, seed)
    part = lambda idx: (images[idx], labels[idx])  # noqa: E731
    return Protocol(
        part(train),
        part(val[pick_q]),
        part(train[pick_db]),
        part(rows("in_query")),
        part(rows("in_database")),
        list(info.label_names),
    )


def config_label(profile: str, given: dict) -> str:
    """The leaderboard name of a configuration: ``full:epochs=16,overrides={"depth": 2}`` (every given field)."""
    items = (f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in sorted(given.items()))
    return f"{profile}:" + ",".join(items) if given else profile


@dataclass
class TrainedRun:
    """One configuration trained (``result``: ``ml.train.TrainResult``) and its query / database codes."""

    label: str
    spec: ModelSpec
    cfg: TrainConfig
    result: TrainResult
    train_s: float
    q_codes: np.ndarray
    db_codes: np.ndarray
    encode_s: float


def train_and_encode(
    profile: str,
    given: dict,
    protocol: Protocol,
    device,
    seed: int = 0,
    budget_s: float = 0.0,
    log: Callable[[str], None] = print,
) -> TrainedRun:
    """Train ``profile`` with the ``given`` fields (``overrides`` and ``loss_params`` included) under the wall-clock
    budget, with model selection on the validation slice; encode the queries and the database."""
    from ml.encode import encode_images
    from ml.recipes import build_run
    from ml.train import TrainData, train_hashing_model

    spec, cfg = build_run(profile, len(protocol.label_names), protocol.train[0].shape[1], seed=seed, **given)
    cfg.time_budget_s = budget_s
    data = TrainData(*protocol.train, *protocol.val_query, *protocol.val_db)
    t0 = time.perf_counter()
    result = train_hashing_model(spec, cfg, data, device, log=log)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    q_codes = encode_images(result.model, protocol.query[0], device)
    db_codes = encode_images(result.model, protocol.database[0], device)
    return TrainedRun(
        config_label(profile, given), spec, cfg, result, train_s, q_codes, db_codes, time.perf_counter() - t1
    )


def run_config(
    profile: str,
    given: dict,
    protocol: Protocol,
    device,
    db: DiagnosticsDB,
    seed: int = 0,
    budget_s: float = 0.0,
    log: Callable[[str], None] = print,
    copies: int = 0,
) -> dict:
    """Train, encode and evaluate one configuration (with ``copies`` > 0, also the copies protocol on the
    database: ``copy_metrics``); record it as a ``bench-quality`` run; return its row."""
    from ml.copies import copy_headline
    from ml.metrics import bit_diagnostics, evaluate_retrieval

    run = train_and_encode(profile, given, protocol, device, seed, budget_s, log)
    copy = copy_metrics(run, protocol, device, copies, seed) if copies > 0 else None
    result = run.result
    m = evaluate_retrieval(
        run.q_codes,
        protocol.query[1],
        run.db_codes,
        protocol.database[1],
        run.spec.bits,
        map_ks=(100, 1000),
        precision_ks=(1, 100),
    )
    diag = bit_diagnostics(run.db_codes, protocol.database[1], run.spec.bits, seed=seed)
    scalars = {k: float(v) for k, v in diag.items() if not isinstance(v, list)} | {
        "best_val_map": result.best_val_map,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_minutes": run.train_s / 60,
        "train_images_per_s": result.train_images_per_s,
        "encode_images_per_s": (len(protocol.query[0]) + len(protocol.database[0])) / run.encode_s,
        "parameters": result.parameters,
    }
    metric_rows = (
        [("map", int(k), v) for k, v in m.map_at.items()]
        + [("precision", int(k), v) for k, v in m.precision_at.items()]
        + [(k, None, v) for k, v in scalars.items()]
    )

    def write(run_id: str, con) -> None:
        insert_training_log(con, run_id, result.history)
        insert_metrics(con, run_id, metric_rows)
        insert_bit_stats(con, run_id, diag["ones_rate"], diag["entropy"])
        if copy is not None:
            insert_instance_metrics(con, run_id, copy.rows())

    config = {
        "profile": profile,
        "given": given,
        "spec": run.spec.to_dict(),
        "train": run.cfg.to_dict(),
        "budget_s": budget_s,
        "queries": len(protocol.query[0]),
        "database": len(protocol.database[0]),
        "device": str(device),
        "copies": copies,
    }
    run_id = db.record("bench-quality", CATALOGUE, run.label, config, None, write)

    return {
        "config": run.label,
        "map_at_100": m.map_at["100"],
        "map_at_1000": m.map_at["1000"],
        "p_at_1": m.precision_at["1"],
        "p_at_100": m.precision_at["100"],
        **scalars,
        **(copy_headline(copy) if copy is not None else {}),
        "run_id": run_id,
    }


COPY_TRANSFORMS = "easy+hard"


def copy_metrics(
    run: TrainedRun,
    protocol: Protocol,
    device,
    copies: int,
    seed: int,
    scorers: tuple[str, ...] = ("none",),
    oversample: int = 4,
):
    """The copies protocol (``ml.copies``) of a trained run on the protocol's database, ranked by Hamming
    distance and by each other of ``scorers`` (re-ranking the Hamming top ``oversample`` x 100; ``stored``
    scores fp16 embeddings of the database's outputs); exact duplicates are database images with the same
    pixels."""
    from ml.copies import evaluate_copies, make_copy_queries, pixel_groups
    from ml.encode import encode_images, encode_outputs
    from ml.rerank import CandidateTable, dequantise, quantise

    db_images = protocol.database[0]
    queries = make_copy_queries(lambda p: db_images[p], len(db_images), copies, COPY_TRANSFORMS, seed)
    if set(scorers) == {"none"}:
        q_codes, q_out = encode_images(run.result.model, queries.images, device), None
        table = CandidateTable(np.arange(len(db_images)), run.db_codes, run.spec.bits)
    else:
        q_codes, q_out = encode_outputs(run.result.model, queries.images, device)
        db_codes, db_out = encode_outputs(run.result.model, db_images, device)
        stored = dequantise(quantise(db_out, "fp16")[0], None, "fp16")
        table = CandidateTable(np.arange(len(db_images)), db_codes, run.spec.bits, stored)
    return evaluate_copies(queries, q_codes, q_out, table, pixel_groups(db_images), scorers, oversample)


COLUMNS = (
    ("config", "config", "{}"),
    ("mAP@100", "map_at_100", "{:.4f}"),
    ("mAP@1000", "map_at_1000", "{:.4f}"),
    ("P@1", "p_at_1", "{:.4f}"),
    ("P@100", "p_at_100", "{:.4f}"),
    ("copy R@1", "copy_recall_at_1", "{:.4f}"),
    ("copy R@1 listed", "copy_recall_at_1_listed", "{:.4f}"),
    ("copy MRR", "copy_mrr", "{:.4f}"),
    ("ties>=99", "first_ties_ge_99", "{:.3f}"),
    ("ones", "mean_ones_rate", "{:.3f}"),
    ("entropy", "mean_entropy", "{:.3f}"),
    ("intra", "intra_class_hamming", "{:.1f}"),
    ("inter", "inter_class_hamming", "{:.1f}"),
    ("val", "best_val_map", "{:.4f}"),
    ("epochs", "epochs_run", "{:.0f}"),
    ("train min", "train_minutes", "{:.1f}"),
    ("img/s", "train_images_per_s", "{:.0f}"),
)


def format_leaderboard(rows: list[dict]) -> str:
    """Markdown table of ``rows``, best mAP@100 first."""
    rows = sorted(rows, key=lambda r: -r["map_at_100"])
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [
        "| " + " | ".join(fmt.format(r[key]) if key in r else "-" for _, key, fmt in COLUMNS) + " |"
        for r in rows
    ]
    return "\n".join(lines)


def quick_problems(rows: list[dict]) -> list[str]:
    """What is wrong with a ``--quick`` run's rows (empty: fine)."""
    problems = []
    for r in rows:
        keys = ("map_at_100", "map_at_1000", "p_at_1", "p_at_100", "best_val_map", "mean_ones_rate")
        for key in keys + tuple(k for k in ("copy_recall_at_1", "copy_mrr") if k in r):
            if not 0.0 <= r[key] <= 1.0:
                problems.append(f"{r['config']}: {key} = {r[key]} is not in [0, 1]")
        if r["epochs_run"] < 1:
            problems.append(f"{r['config']}: no epoch ran")
    return problems


def run_quality_bench(
    db_path: str,
    profile: str = "quick",
    configs: Sequence[str] | None = None,
    bits: Sequence[str | int] | None = None,
    quick: bool = False,
    source: str | None = None,
    device: str = "auto",
    seed: int = 0,
    train_limit: int | None = None,
    query_limit: int | None = None,
    budget_minutes: float = 30.0,
    json_path: str | None = None,
    copies: int = 2000,
) -> int:
    """``vitrieve bench quality``: each ``--config`` string (times each of ``bits``) trained and evaluated on the
    protocol (``source``: the IDX folder, default the installed Fashion-MNIST) decoded once per image size, recorded in ``db_path``; prints the leaderboard (each row as it lands
    on stderr, all of them at the end on stdout); the exit code (2: a bad configuration, 1: a ``quick`` check
    failed)."""
    from ml.device import configure_threads, resolve_device
    from ml.models import ModelSpec
    from ml.recipes import resolve_profile
    from storage.ingest_idx import FASHION_MNIST_DIR

    source = source or FASHION_MNIST_DIR
    try:
        given = [parse_config(c) for c in (configs or [""])]
        if bits:
            given = [c | {"bits": int(b)} for c in given for b in bits]
        if quick:
            given = [c | {"epochs": 1} for c in given]
        resolved = [resolve_profile(profile, **c) for c in given]
    except ValueError as err:
        print(f"vitrieve bench quality: {err}", file=sys.stderr)
        return 2
    configure_threads()
    torch_device = resolve_device(device)
    train_limit, query_limit = (2000, 500) if quick else (train_limit, query_limit)
    protocols: dict[int, Protocol] = {}
    rows = []
    db = DiagnosticsDB(db_path)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    for fields, r in zip(given, resolved, strict=True):
        size = ModelSpec(model=r["model"], preset=r["preset"]).img_size
        if size not in protocols:
            sizes = dict(validation_size=500, val_queries=500, val_database=1000) if quick else {}
            protocols[size] = load_protocol(source, size, 1, seed, train_limit, query_limit, **sizes)
        rows.append(
            run_config(
                profile,
                dict(fields),
                protocols[size],
                torch_device,
                db,
                seed,
                budget_minutes * 60,
                log,
                copies=min(copies, 200) if quick else copies,
            )
        )
        print(format_leaderboard(rows[-1:]), file=sys.stderr)
    print(format_leaderboard(rows))
    print(f"\nrows in {db_path}: SELECT * FROM quality_leaderboard")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=2, default=str)
    problems = quick_problems(rows) if quick else []
    for problem in problems:
        print(f"vitrieve bench quality: FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0
