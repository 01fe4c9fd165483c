"""``retrieval_diagnostics``: latency and throughput of the published index, its recall against exact search,
and mAP through it."""

import dagster as dg
import numpy as np
from pydantic import Field

from assets.automation import FOLLOW_ACCEPTED_UPSTREAM
from assets.partitions import catalogues
from assets.resources import DiagnosticsResource, StorageResource
from storage.catalogue import labels_matrix, read_catalogue
from storage.codes import read_codes
from storage.diagnostics import insert_metrics, insert_search_latency
from storage.index import build_index, current, load_index, set_search_threads
from storage.search_eval import recall_at_k, time_batches


class RetrievalConfig(dg.Config):
    k: int = 100
    latency_queries: int = 1000
    large_batch: int = 10_000
    threads: int = Field(default=0, description="faiss threads (0 = all cores, or $VITRIEVE_SEARCH_THREADS)")
    query_batch: int = Field(default=0, description="queries per search call inside the index (0 = default)")


@dg.asset(
    partitions_def=catalogues,
    deps=["binary_index"],
    group_name="vitrieve",
    kinds={"duckdb"},
    pool="duckdb_writer",
    code_version="retrieval_diagnostics-v2",
    automation_condition=FOLLOW_ACCEPTED_UPSTREAM,
    description="Query latency (p50/p99), QPS at batch 1 and large batch, recall@k against exact search, "
    "mAP@k through the index -> DuckDB.",
)
def retrieval_diagnostics(
    context: dg.AssetExecutionContext,
    config: RetrievalConfig,
    storage: StorageResource,
    diagnostics: DiagnosticsResource,
) -> dg.MaterializeResult:
    from ml.metrics import map_from_ranking

    name = context.partition_key
    root = storage.get()
    pointer = current(root, name)
    model_id = pointer["model_id"]
    index, manifest = load_index(root, name)  # memory-mapped where faiss allows; loaded once for every query
    if config.query_batch:
        index.query_batch = config.query_batch
    table, info = read_catalogue(root, name, columns=["row_id", "labels", "in_query", "in_database"])
    row_ids, codes, _ = read_codes(root, name, model_id)
    q = table["in_query"].to_numpy(zero_copy_only=False)
    queries = np.ascontiguousarray(codes[q])
    threads = set_search_threads(config.threads or None)
    k = min(config.k, index.ntotal)
    index.search(queries[:8], k)  # warm-up: page in the mapped file
    rows = [
        time_batches(index.search, queries[: config.latency_queries], k, 1),
        time_batches(index.search, queries, k, min(config.large_batch, len(queries))),
    ]

    dist, ids = index.search(queries, k)
    if index.exact:
        recall = 1.0
    else:  # approximate kind: against exact search over the same database codes
        db = table["in_database"].to_numpy(zero_copy_only=False)
        exact = build_index(row_ids[db], codes[db], manifest.bits, "flat")
        recall = recall_at_k(*exact.search(queries, k), dist, ids)[0]
    labels = labels_matrix(table, len(info.label_names))
    position = np.searchsorted(row_ids, np.maximum(ids, 0))  # codes and catalogue are both sorted by row_id
    rel = (labels[q][:, None, :] & labels[position]).any(axis=2) & (ids >= 0)
    map_via_index = map_from_ranking(rel)

    latency_rows = [
        dict(
            index_kind=manifest.kind,
            threads=threads,
            recall_at_k=recall,
            k=k,
            n_database=int(index.ntotal),
            **r,
        )
        for r in rows
    ]

    def write(run_id: str, con) -> None:
        insert_search_latency(con, run_id, latency_rows)
        insert_metrics(con, run_id, [("map_via_index", k, map_via_index), ("recall_vs_exact", k, recall)])

    config_row = {"k": k, "threads": threads, "kind": manifest.kind, "params": manifest.params}
    run_id = diagnostics.get().record("retrieval", name, model_id, config_row, context.run.run_id, write)
    md = "| batch | p50 ms | p99 ms | QPS |\n|---|---|---|---|\n" + "\n".join(
        f"| {r['batch']} | {r['p50_ms']:.4f} | {r['p99_ms']:.4f} | {r['qps']:.0f} |" for r in rows
    )
    return dg.MaterializeResult(
        metadata={
            "model_id": model_id,
            "index_kind": manifest.kind,
            "threads": threads,
            "p50_ms_batch1": rows[0]["p50_ms"],
            "p99_ms_batch1": rows[0]["p99_ms"],
            "qps_large_batch": rows[1]["qps"],
            f"recall_at_{k}_vs_exact": recall,
            f"map_at_{k}_via_index": map_via_index,
            "latency": dg.MetadataValue.md(md),
            "diagnostics_run_id": run_id,
        }
    )
