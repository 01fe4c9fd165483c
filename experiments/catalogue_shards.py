"""Writing a large catalogue shard by shard: time, peak RSS and bytes of a first write of N synthetic rows
(URI rows, as folder and manifest sources store them), then of a re-ingest that appends 1 % of rows.

    .venv/bin/python -m experiments.catalogue_shards 10000000 /tmp/catshards   # rows, scratch root

The rows are generated in batches and streamed through ``CatalogueWriter``; the re-ingest streams the stored
rows back from the catalogue's files (``catalogue_dataset``) and then the new ones, as an ingest that appends
images does. One JSON line per phase: seconds, the process's peak RSS so far, files and bytes written.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from storage.catalogue import SCHEMA, CatalogueInfo, CatalogueWriter, catalogue_dataset, read_catalogue
from storage.fs import StorageRoot

BATCH = 65_536


def batch(lo: int, hi: int) -> pa.RecordBatch:
    """Rows ``lo..hi`` of a synthetic URI catalogue (every 10th a query, every 3rd trained on)."""
    rid = np.arange(lo, hi, dtype=np.int64)
    rng = np.random.default_rng(lo)
    n = len(rid)
    query = rid % 10 == 0
    train = (rid % 3 == 0) & ~query
    ids = pa.array([f"photos/{r // 1000:06d}/{r:09d}.jpg" for r in rid.tolist()])
    return pa.record_batch(
        [
            pa.array(rid),
            ids,
            pa.array([f"s3://bucket/{i}" for i in ids.to_pylist()]),
            pa.nulls(n, pa.binary()),
            pa.array([[int(x)] for x in rng.integers(0, 1000, n)], pa.list_(pa.int32())),
            pa.array(np.where(query, "query", np.where(train, "train", "database"))),
            pa.array(train),
            pa.array(np.zeros(n, bool)),
            pa.array(query),
            pa.array(~query),
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [None, pa.py_buffer(rng.bytes(32 * n))]),
            pa.array(np.full(n, 640, np.int32)),
            pa.array(np.full(n, 480, np.int32)),
            pa.array(np.full(n, 3, np.int32)),
            pa.array(np.full(n, np.datetime64(datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None), "us"))),
        ],
        schema=SCHEMA,
    )


def phase(name: str, root: StorageRoot, batches, info: CatalogueInfo) -> None:
    before = (
        {p.name: p.stat().st_mtime_ns for p in os.scandir(root.path("catalogues", "big"))}
        if root.exists("catalogues", "big")
        else {}
    )
    start = time.perf_counter()
    writer = CatalogueWriter(root, info)
    for b in batches:
        writer.write(b)
    writer.commit()
    seconds = time.perf_counter() - start
    after = {p.name: p for p in os.scandir(root.path("catalogues", "big")) if p.name.startswith("shard-")}
    written = [p for n, p in after.items() if before.get(n) != p.stat().st_mtime_ns]
    row = {
        "phase": name,
        "rows": writer.rows,
        "seconds": round(seconds, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "shard_files": len(after),
        "files_written": len(written),
        "bytes_written": sum(p.stat().st_size for p in written),
        "bytes_total": sum(p.stat().st_size for p in after.values()),
    }
    print(json.dumps(row), flush=True)


def main(rows: int, scratch: str) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    root = StorageRoot(scratch)
    info = CatalogueInfo(
        name="big", label_names=[str(i) for i in range(1000)], protocol={}, source="synthetic"
    )
    phase("first write", root, (batch(lo, min(lo + BATCH, rows)) for lo in range(0, rows, BATCH)), info)
    grown = rows + rows // 100
    stored = catalogue_dataset(root, "big").to_batches(batch_size=BATCH, use_threads=False)
    new = (batch(lo, min(lo + BATCH, grown)) for lo in range(rows, grown, BATCH))
    phase("+1 % rows", root, (b for part in (stored, new) for b in part), info)
    start = time.perf_counter()
    ids = read_catalogue(root, "big", columns=["row_id"])[0]
    print(
        json.dumps(
            {
                "phase": "read row_id column",
                "rows": ids.num_rows,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
