"""``vitrieve bench rerank``: re-ranking scorers (none / asymmetric / stored int8 / stored fp16) at several
oversampling factors on a published catalogue: label mAP@100 of the query split, copy recall@1 (the copies
protocol, expected and listed rank), QPS at batch 1 and a large batch, bytes per image.

The shortlist comes from the catalogue's published index (``storage.index.search``), its candidates are
re-scored by ``ml.rerank``; QPS counts the shortlist search and the re-scoring, not the model pass that
encodes the query. The queries, the database and the copies are encoded once with the published model in one
pass (``ml.encode.encode_outputs``); the embeddings of ``stored`` are that pass's database outputs, quantised
here, so the bench needs no embeddings stored. Rows go to the diagnostics DB (run kind ``bench-rerank``):
``metrics`` (``rerank_map@100``, ``bytes_per_image`` and ``qps_batch_<b>`` per ``scorer@oversample``),
``instance_metrics`` (the copies, scorer ``scorer@oversample``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import numpy as np

VARIANTS = (("none", ""), ("asymmetric", ""), ("stored", "int8"), ("stored", "fp16"))


def variant_name(scorer: str, dtype: str) -> str:
    return f"{scorer}-{dtype}" if dtype else scorer


def bytes_per_image(scorer: str, dtype: str, bits: int) -> int:
    """Stored bytes per database image: the code, plus the stored embedding and its int8 scale."""
    return bits // 8 + (0 if scorer != "stored" else bits + 4 if dtype == "int8" else 2 * bits)


def run_rerank_bench(
    root_uri: str,
    db_path: str,
    catalogue: str,
    device: str = "auto",
    oversamples: Sequence[int] = (1, 2, 4, 8),
    k: int = 100,
    copies: int = 2000,
    transforms: str = "easy+hard",
    seed: int = 0,
    query_limit: int | None = None,
    latency_queries: int = 200,
    large_batch: int = 256,
    json_path: str | None = None,
) -> int:
    """Measure every variant at every oversampling factor; print a markdown table; 0 on success."""
    from imaging.decode import decode_images
    from ml.checkpoint import model_from_checkpoint
    from ml.copies import make_copy_queries
    from ml.device import resolve_device
    from ml.encode import encode_outputs
    from ml.instance_metrics import instance_counts, instance_metrics, metric_rows
    from ml.metrics import map_from_ranking
    from ml.rerank import CandidateTable, dequantise, quantise, rerank_search
    from storage.catalogue import labels_matrix, read_catalogue
    from storage.codes import image_hash_of, read_codes
    from storage.diagnostics import DiagnosticsDB, insert_instance_metrics, insert_metrics
    from storage.fs import StorageRoot
    from storage.images import encoded_images
    from storage.index import current, load_index, search
    from storage.model_store import read_card, read_weights
    from storage.search_eval import time_batches

    root = StorageRoot(root_uri)
    model_id = current(root, catalogue)["model_id"]
    index, _ = load_index(root, catalogue)
    dev = resolve_device(device)
    model = model_from_checkpoint(read_card(root, model_id), read_weights(root, model_id), dev)
    size, ch = model.spec.img_size, model.spec.in_chans
    cols = ["row_id", "image", "uri", "sha256", "labels", "in_query", "in_database"]
    table, info = read_catalogue(root, catalogue, columns=cols)
    labels = labels_matrix(table, len(info.label_names))
    q_pos = np.flatnonzero(table["in_query"].to_numpy(zero_copy_only=False))
    if query_limit:
        q_pos = np.sort(np.random.default_rng(seed).permutation(q_pos)[:query_limit])
    db_pos = np.flatnonzero(table["in_database"].to_numpy(zero_copy_only=False))
    images = lambda pos: decode_images(encoded_images(table.take(pos)), size, ch)  # noqa: E731
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    log(f"encoding {len(q_pos)} queries, {len(db_pos)} database images and {copies} copies with {model_id}")
    q_codes, q_u = encode_outputs(model, images(q_pos), dev)
    _, db_u = encode_outputs(model, images(db_pos), dev)
    cq = make_copy_queries(lambda p: images(db_pos[p]), len(db_pos), copies, transforms, seed)
    c_codes, c_u = encode_outputs(model, cq.images, dev)

    all_ids, all_codes, meta = read_codes(root, catalogue, model_id)
    db_ids = table["row_id"].to_numpy()[db_pos]
    codes = all_codes[np.searchsorted(all_ids, db_ids)]
    group = image_hash_of(table["sha256"])[db_pos]
    c_group = group[cq.source]
    shortlist = lambda c, r: search(index, c, r)  # noqa: E731
    rows, metric_out, instance_out = [], [], []
    for scorer, dtype in VARIANTS:
        emb = dequantise(*quantise(db_u, dtype), dtype) if dtype else None
        cand = CandidateTable(db_ids, codes, meta.bits, emb)
        for o in oversamples:
            name = f"{variant_name(scorer, dtype)}@{o}"
            ids, _, _ = rerank_search(shortlist, q_codes, q_u, k, o, scorer, cand)
            hit_pos = np.searchsorted(db_ids, np.maximum(ids, 0))
            rel = (labels[q_pos][:, None, :] & labels[db_pos][hit_pos]).any(-1) & (ids >= 0)
            label_map = map_from_ranking(rel)
            c_ids, c_scores, _ = rerank_search(shortlist, c_codes, c_u, k, o, scorer, cand)
            c_rel = (group[np.searchsorted(db_ids, np.maximum(c_ids, 0))] == c_group[:, None]) & (c_ids >= 0)
            cm = instance_metrics(instance_counts(c_scores, c_rel))

            def timed(idx, kk, codes_=q_codes, u_=q_u, cand_=cand, o_=o, scorer_=scorer):
                return rerank_search(shortlist, codes_[idx], u_[idx], kk, o_, scorer_, cand_)

            order = np.arange(min(latency_queries, len(q_codes)))
            t1 = time_batches(timed, order, k, 1)
            tb = time_batches(timed, np.arange(len(q_codes)), k, large_batch)
            row = {
                "variant": name,
                "scorer": scorer,
                "dtype": dtype or "-",
                "oversample": o,
                "map_at_100": label_map,
                "copy_recall_at_1": cm.recall["expected"][1],
                "copy_recall_at_1_listed": cm.recall["listed"][1],
                "qps_batch_1": t1["qps"],
                f"qps_batch_{large_batch}": tb["qps"],
                "bytes_per_image": bytes_per_image(scorer, dtype, meta.bits),
            }
            rows.append(row)
            log(json.dumps(row))
            metric_out += [
                (f"rerank_map@100:{name}", 100, label_map),
                (f"bytes_per_image:{name}", None, row["bytes_per_image"]),
                (f"qps_batch_1:{name}", 1, t1["qps"]),
                (f"qps_batch_{large_batch}:{name}", large_batch, tb["qps"]),
            ]
            instance_out += list(metric_rows(cm, name, "all"))

    def write(run_id, con) -> None:
        insert_metrics(con, run_id, metric_out)
        insert_instance_metrics(con, run_id, instance_out)

    config = dict(
        k=k,
        oversamples=list(oversamples),
        copies=len(cq.source),
        transforms=transforms,
        seed=seed,
        queries=len(q_pos),
        database=len(db_pos),
        bits=meta.bits,
        device=str(dev),
    )
    run_id = DiagnosticsDB(db_path).record("bench-rerank", catalogue, model_id, config, None, write)
    print(format_table(rows, large_batch))
    print(f"\nrun {run_id} in {db_path}: SELECT * FROM metrics WHERE run_id = '{run_id}'")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"config": config, "rows": rows}, f, indent=2)
    return 0


def format_table(rows: list[dict], large_batch: int) -> str:
    head = ["variant", "mAP@100", "copy R@1 (exp)", "copy R@1 (listed)", "QPS b=1", f"QPS b={large_batch}"]
    lines = ["| " + " | ".join([*head, "bytes/img"]) + " |", "|" + "---|" * (len(head) + 1)]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['map_at_100']:.4f} | {r['copy_recall_at_1']:.4f} | "
            f"{r['copy_recall_at_1_listed']:.4f} | {r['qps_batch_1']:.0f} | {r[f'qps_batch_{large_batch}']:.0f} | "
            f"{r['bytes_per_image']} |"
        )
    return "\n".join(lines)
