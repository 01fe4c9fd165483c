"""Fixed-size shards of a catalogue and of its codes, so encoding fans out over workers.

Shard ``k`` of a catalogue holds the rows whose ``row_id`` lies in ``[k * shard_rows, (k + 1) * shard_rows)``.
Row ids are never reused and the catalogue is sorted by ``row_id`` in row groups carrying min/max statistics,
so a shard is read by predicate push-down (only its row groups), and appended rows land in the last shard or
in new ones: the earlier shards keep their codes.

The codes of shard ``k`` are one part ``shard-kkkkk-<key>.parquet`` of the codes folder (``storage.codes``),
where ``key`` fingerprints everything the codes depend on (model, bits, embeddings, the shard's row ids and
image hashes). Each part is written atomically and then its check record ``shard-kkkkk-<key>.json`` (the
sha256 and rows ``parts.json`` will carry, ``storage.part_checks``); a shard counts as finished only when its
record exists and the part still matches it, so a worker killed mid-shard costs that shard alone and a rerun
skips the others. Nothing is live until :func:`commit_shards` lists the shard parts in ``parts.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.catalogue import catalogue_dataset
from storage.codes import codes_dir, commit_parts
from storage.fs import StorageRoot
from storage.part_checks import part_check


@dataclass(frozen=True)
class Shard:
    """One shard of a catalogue: its number, row-id range ``[lo, hi)``, rows and the key of its codes."""

    index: int
    lo: int
    hi: int
    rows: int
    key: str

    @property
    def part(self) -> str:
        return f"shard-{self.index:05d}-{self.key}.parquet"

    @property
    def record(self) -> str:
        return f"shard-{self.index:05d}-{self.key}.json"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Shard:
        return cls(**d)


def plan_shards(
    row_ids: np.ndarray, image_hash: np.ndarray, shard_rows: int, inputs: dict[str, str | int]
) -> list[Shard]:
    """The non-empty shards of a catalogue given its sorted ``row_ids`` and their ``image_hash``; ``inputs``
    (model id, bits, embeddings, ...) enter every shard's key."""
    if shard_rows <= 0:
        raise ValueError(f"shard_rows {shard_rows}: must be positive")
    if len(row_ids) and not bool(np.all(row_ids[1:] > row_ids[:-1])):
        raise ValueError("plan_shards: row_ids must be sorted and distinct")
    number = np.asarray(row_ids, np.int64) // shard_rows
    starts = np.flatnonzero(np.r_[True, number[1:] != number[:-1]]) if len(number) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(number)]
    head = json.dumps(inputs, sort_keys=True).encode()
    shards = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        k = int(number[s])
        h = hashlib.sha256(head)
        h.update(np.ascontiguousarray(row_ids[s:e], np.int64).tobytes())
        h.update(np.ascontiguousarray(image_hash[s:e], np.int64).tobytes())
        shards.append(Shard(k, k * shard_rows, (k + 1) * shard_rows, e - s, h.hexdigest()[:16]))
    return shards


def shard_filter(shard: Shard) -> pc.Expression:
    return (pc.field("row_id") >= shard.lo) & (pc.field("row_id") < shard.hi)


def shard_batches(
    root: StorageRoot, catalogue: str, shard: Shard, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Stream the catalogue rows of one shard (only the row groups whose row-id range meets it)."""
    dataset = catalogue_dataset(root, catalogue)
    yield from dataset.to_batches(columns=columns, filter=shard_filter(shard), batch_size=batch_rows)


def finished_shard(root: StorageRoot, catalogue: str, model_id: str, shard: Shard) -> dict | None:
    """The check record of a shard whose part is written and still matches it; None = encode it."""
    d = codes_dir(catalogue, model_id)
    if not (root.exists(*d, shard.record) and root.exists(*d, shard.part)):
        return None
    record = json.loads(root.read_text(*d, shard.record))
    if record.get("rows") != shard.rows or root.sha256(*d, shard.part) != record.get("sha256"):
        return None
    return record


def record_shard(root: StorageRoot, catalogue: str, model_id: str, shard: Shard) -> dict:
    """Take the check of a freshly written shard part and store it beside the part (atomically); returns it."""
    d = codes_dir(catalogue, model_id)
    record = part_check(root, *d, shard.part)
    if record["rows"] != shard.rows:
        raise RuntimeError(
            f"{root.url(*d, shard.part)}: {record['rows']} rows written, shard {shard.index} has {shard.rows}"
        )
    root.write_text(json.dumps(record), *d, shard.record)
    return record


def commit_shards(
    root: StorageRoot,
    catalogue: str,
    model_id: str,
    shards: list[Shard],
    bits: int,
    extra: dict[str, str] | None = None,
) -> str:
    """Make the parts of ``shards`` (all finished) the live codes in one switch of ``parts.json``; parts and
    records of other shards are removed. Raises naming the first shard without a matching part."""
    checks = {}
    for shard in shards:
        record = finished_shard(root, catalogue, model_id, shard)
        if record is None:
            raise RuntimeError(
                f"codes of {catalogue!r}, shard {shard.index}: no finished part {shard.part}; encode it again"
            )
        checks[shard.part] = record
    rows = sum(s.rows for s in shards)
    return commit_parts(root, catalogue, model_id, [s.part for s in shards], bits, rows, extra, checks)
