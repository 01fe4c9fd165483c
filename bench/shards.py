"""``vitrieve bench shards``: encoding throughput of one worker, one-step ``packed_codes`` against the sharded
graph (``assets.codes_shards``: plan, one step per shard, commit), measured in one run.

A published catalogue and its model are copied from a local storage root into two fresh roots; each round
materialises the one-step asset in one and the sharded asset in the other, in process (steps one after the
other: one worker), alternating which goes first so that a drift of the machine falls on both. Reported per
path: wall seconds of the materialisation, seconds spent in encoding steps (Dagster's step events), images/s
on each, and the sharded/one-step ratio. The codes of the two are compared byte for byte. One
``bench-shards`` run is recorded in the diagnostics DuckDB (``metrics``).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time

import numpy as np

from storage.diagnostics import DiagnosticsDB, insert_metrics
from storage.fs import StorageRoot


def _encode_seconds(instance, run_id: str) -> tuple[float, int]:
    """Seconds between start and success of the steps that encode (one-step: the asset's only step), from
    the run's event log, and how many there were."""
    starts, total, steps = {}, 0.0, 0
    for entry in instance.all_logs(run_id):
        event, key = entry.dagster_event, entry.step_key or ""
        if event is None or not (key == "packed_codes" or "encode_codes_shard" in key):
            continue
        if event.event_type_value == "STEP_START":
            starts[key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS" and key in starts:
            total += entry.timestamp - starts.pop(key)
            steps += 1
    return total, steps


def _materialise(asset, root: StorageRoot, catalogue: str, config: dict, device: str):
    import dagster as dg

    from assets.resources import ComputeResource, StorageResource

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", [catalogue])
        t = time.perf_counter()
        result = dg.materialize(
            [asset],
            partition_key=catalogue,
            instance=instance,
            resources={
                "storage": StorageResource(root=root.uri),
                "compute": ComputeResource(device=device),
            },
            run_config={"ops": {"packed_codes": {"config": config}}},
            raise_on_error=False,
        )
        wall = time.perf_counter() - t
        if not result.success:
            raise RuntimeError(f"bench shards: {asset.key.to_user_string()} failed on {catalogue!r}")
        encode_s, steps = _encode_seconds(instance, result.run_id)
    return {"wall_seconds": wall, "encode_seconds": encode_s, "encode_steps": steps}


def run_shard_bench(
    root_uri: str,
    db_path: str,
    catalogue: str,
    shard_rows: int,
    device: str = "cpu",
    rounds: int = 2,
    json_path: str | None = None,
    model_id: str | None = None,
) -> int:
    """Measure and record (see the module doc); prints one JSON row; returns the exit code (2: bad input,
    1: the two paths' codes differ). ``model_id``: default, the model of the catalogue's published index."""
    from assets.codes import packed_codes
    from assets.codes_shards import packed_codes_sharded
    from storage.catalogue import catalogue_dir
    from storage.codes import read_codes
    from storage.index import current

    src = StorageRoot(root_uri)
    if not src.is_local:
        print("vitrieve bench shards: --root must be a local storage root (it is copied)", file=sys.stderr)
        return 2
    try:
        model_id = model_id or current(src, catalogue)["model_id"]
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(
            f"vitrieve bench shards: catalogue {catalogue!r} has no published index ({err})", file=sys.stderr
        )
        return 2
    config = {"model_id": model_id, "incremental": False}
    rows = {"one-step": [], "sharded": []}
    with tempfile.TemporaryDirectory(prefix="vitrieve-bench-shards-") as tmp:
        roots = {}
        for name in rows:
            roots[name] = StorageRoot(f"{tmp}/{name}")
            shutil.copytree(src.path(*catalogue_dir(catalogue)), roots[name].path(*catalogue_dir(catalogue)))
            shutil.copytree(src.path("models", model_id), roots[name].path("models", model_id))
        assets = {
            "one-step": (packed_codes, config),
            "sharded": (packed_codes_sharded, config | {"shard_rows": shard_rows}),
        }
        for r in range(rounds):
            for name in ("one-step", "sharded") if r % 2 == 0 else ("sharded", "one-step"):
                asset, cfg = assets[name]
                rows[name].append(_materialise(asset, roots[name], catalogue, cfg, device))
                print(f"[bench shards] round {r + 1} {name}: {json.dumps(rows[name][-1])}", file=sys.stderr)
        ids1, codes1, meta = read_codes(roots["one-step"], catalogue, model_id)
        ids2, codes2, _ = read_codes(roots["sharded"], catalogue, model_id)
        same = bool(np.array_equal(ids1, ids2) and np.array_equal(codes1, codes2))
    images = int(meta.rows)
    row = {"catalogue": catalogue, "model_id": model_id, "images": images, "shard_rows": shard_rows}
    for name, runs in rows.items():
        wall = float(np.median([x["wall_seconds"] for x in runs]))
        enc = float(np.median([x["encode_seconds"] for x in runs]))
        row |= {
            f"{name}/wall_seconds": wall,
            f"{name}/encode_seconds": enc,
            f"{name}/encode_steps": runs[0]["encode_steps"],
            f"{name}/images_per_s": images / wall,
            f"{name}/encode_images_per_s": images / enc,
        }
    row["sharded_over_one_step/images_per_s"] = row["sharded/images_per_s"] / row["one-step/images_per_s"]
    row["sharded_over_one_step/encode_images_per_s"] = (
        row["sharded/encode_images_per_s"] / row["one-step/encode_images_per_s"]
    )
    row["codes_identical"] = same
    numbers = [
        (k, None, float(v)) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    config_doc = {"rounds": rounds, "device": device, "runs": rows, "codes_identical": same}
    row["run_id"] = DiagnosticsDB(db_path).record(
        "bench-shards",
        catalogue,
        model_id,
        config_doc,
        None,
        lambda run_id, con: insert_metrics(con, run_id, numbers),
    )
    print(json.dumps(row))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(row, f, indent=2)
    if not same:
        print(
            "vitrieve bench shards: FAILED the sharded codes differ from the one-step codes", file=sys.stderr
        )
        return 1
    return 0
