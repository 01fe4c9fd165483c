"""The closing summary of ``vitrieve run``: headline metrics, sizes, latency and step wall times."""

from __future__ import annotations

import os

import dagster as dg


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for event in result.get_asset_materialization_events():
        md = event.materialization.metadata
        out[event.asset_key.path[-1]] = {k: v.value for k, v in md.items()}
    return out


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError


def print_summary(
    catalogue: str,
    root: str,
    db: str,
    result: dg.ExecuteInProcessResult,
    instance: dg.DagsterInstance,
    wall_seconds: float,
    verb: str = "run",
) -> None:
    md = _metadata(result)
    ev, codes, index, ret, model = (
        md.get(k, {})
        for k in (
            "model_evaluation",
            "packed_codes",
            "binary_index",
            "retrieval_diagnostics",
            "hashing_model",
        )
    )
    rows = [("catalogue", catalogue)] + ([("model", model["model_id"])] if "model_id" in model else [])
    cat = md.get("catalogue", {})
    if "split_summary" in cat:
        counts = (f"{cat.get(f'{k}_items', 0)} {k}" for k in ("accepted", "rejected", "skipped"))
        rows += [
            ("images", f"{cat['listed_items']} listed: " + ", ".join(counts)),
            ("split", cat["split_summary"]),
        ]
    if ev:
        proto = ev.get("protocol", {})
        rows += [
            (
                "protocol",
                f"{proto.get('queries')} queries x {proto.get('database')} database, {proto.get('bits')} bits",
            ),
            ("mAP@100", f"{ev['map_at_100']:.4f}"),
            ("P@1", f"{ev['p_at_1']:.4f}"),
        ]
        if "chance_precision" in ev:
            rows.append(("chance", f"{ev['chance_precision']:.4f}  (P@k of a random ranking)"))
    if codes:
        rows.append(
            (
                "codes",
                f"{codes['dagster/row_count']} rows x {codes['bytes_per_image']} B = "
                f"{_size(codes['dagster/row_count'] * codes['bytes_per_image'])}  ({codes['dagster/uri']})",
            )
        )
    if index:
        rows.append(
            (
                "index",
                f"{index['kind']}, {index['ntotal']} codes, {_size(index['bytes'])}  ({index['dagster/uri']})",
            )
        )
    if ret:
        rows.append(
            (
                "query latency",
                f"p50 {ret['p50_ms_batch1']:.3f} ms, p99 {ret['p99_ms_batch1']:.3f} ms at batch 1; "
                f"{ret['qps_large_batch']:.0f} QPS at large batch, {ret['threads']} threads",
            )
        )
    rows.append(("diagnostics DB", os.path.abspath(db)))
    stats = instance.get_run_step_stats(result.run_id)
    steps = ", ".join(
        f"{s.step_key} {s.end_time - s.start_time:.0f}s" for s in stats if s.start_time and s.end_time
    )
    rows.append(("step wall times", steps))
    rows.append(("total wall time", f"{wall_seconds:.0f}s"))
    width = max(len(k) for k, _ in rows)
    print(f"\nvitrieve {verb}: success")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(
        f"\n  open the UI:  DAGSTER_HOME={os.environ.get('DAGSTER_HOME')} .venv/bin/dagster dev -w workspace.yaml"
    )
    print(f'  query:        .venv/bin/vitrieve sql "SELECT * FROM leaderboard" --db {db}')
