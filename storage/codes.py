"""Packed binary codes in Parquet: ``codes/<catalogue>/<model_id>/part-NNNNN.parquet`` plus ``parts.json``.
(One module past 400 lines: the format's writer, reader, typed metadata and manifest change together.)

A (catalogue, model) holds one or more part files. ``parts.json`` (written atomically, last) names the live
parts and carries the dataset-level facts (``catalogue_fingerprint``, rows); readers read exactly those parts
through a pyarrow dataset, so adding a part for new catalogue rows, or compacting parts when rows are deleted,
is one atomic switch. A directory written before ``parts.json`` existed (a lone ``part-00000.parquet``) is
still read. Files that no longer appear in ``parts.json`` are removed after the switch.
Both sets of metadata read back as one ``CodesMeta`` (:func:`read_codes_meta`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from storage.fs import StorageRoot
from storage.part_checks import CHECKS, part_check, verify_parts

BIT_ORDER = "numpy-packbits-big"
PARTS_FILE = "parts.json"


_PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
# Files a commit removes once ``parts.json`` no longer lists them: parts, shard parts and their check records.
_OWNED_RE = re.compile(r"^(part-\d{5,}\.parquet|shard-\d{5,}-[0-9a-f]+\.(parquet|json))$")


def codes_dir(catalogue: str, model_id: str) -> tuple[str, ...]:
    return ("codes", catalogue, model_id)


def codes_parts(catalogue: str, model_id: str, part: int = 0) -> tuple[str, ...]:
    return (*codes_dir(catalogue, model_id), f"part-{part:05d}.parquet")


def codes_table(
    row_ids: np.ndarray,
    codes: np.ndarray,
    bits: int,
    catalogue: str,
    model_id: str,
    extra: dict[str, str] | None = None,
    image_hash: np.ndarray | None = None,
    columns_after: dict[str, pa.Array] | None = None,
) -> pa.Table:
    """Arrow table (row_id int64, code fixed_size_binary(bits/8)[, image_hash int64]) with the docs/ARCHITECTURE.md
    key-value metadata. ``image_hash`` (first 8 bytes of the image's sha256) lets an incremental encode
    tell a changed image from an unchanged one; ``columns_after`` are more per-row columns (the stored
    embeddings of ``storage.embeddings``)."""
    nbytes = bits // 8
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise ValueError(f"codes must have shape (n, {nbytes}) for {bits} bits, got {codes.shape}")
    if len(row_ids) != len(codes):
        raise ValueError(f"{len(row_ids)} row ids for {len(codes)} codes")
    code_col = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(nbytes), len(codes), [None, pa.py_buffer(codes.tobytes())]
    )
    columns = {"row_id": pa.array(np.asarray(row_ids, dtype=np.int64), pa.int64()), "code": code_col}
    if image_hash is not None:
        if len(image_hash) != len(codes):
            raise ValueError(f"{len(image_hash)} image hashes for {len(codes)} codes")
        columns["image_hash"] = pa.array(np.asarray(image_hash, dtype=np.int64), pa.int64())
    for name, col in (columns_after or {}).items():
        if len(col) != len(codes):
            raise ValueError(f"{len(col)} values of column {name!r} for {len(codes)} codes")
        columns[name] = col
    table = pa.table(columns)
    meta = {
        b"model_id": model_id.encode(),
        b"bits": str(bits).encode(),
        b"catalogue": catalogue.encode(),
        b"bit_order": BIT_ORDER.encode(),
        b"created_at": datetime.now(UTC).isoformat().encode(),
        **{k.encode(): v.encode() for k, v in (extra or {}).items()},
    }
    return table.replace_schema_metadata(meta)


def image_hash_of(sha256_column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """int64 image hashes (the first 8 bytes of each fixed_size_binary(32) sha256, big-endian)."""
    col = sha256_column.combine_chunks() if isinstance(sha256_column, pa.ChunkedArray) else sha256_column
    if len(col) == 0:
        return np.zeros(0, np.int64)
    if col.null_count:
        col = pc.fill_null(col, pa.scalar(b"\0" * 32, col.type))
    raw = np.frombuffer(col.buffers()[1], dtype=np.uint8, count=len(col) * 32, offset=col.offset * 32)
    return raw.reshape(-1, 32)[:, :8].copy().view(">i8").astype(np.int64).ravel()


# --------------------------------------------------------------------------------------------- parts


def parts_manifest(root: StorageRoot, catalogue: str, model_id: str) -> dict | None:
    """``parts.json`` of a (catalogue, model); a legacy lone part-00000 yields an implicit one; None = no codes."""
    d = codes_dir(catalogue, model_id)
    if root.exists(*d, PARTS_FILE):
        return json.loads(root.read_text(*d, PARTS_FILE))
    if root.exists(*codes_parts(catalogue, model_id)):
        return {"parts": [codes_parts(catalogue, model_id)[-1]], "legacy": True}
    return None


def _require_manifest(root: StorageRoot, catalogue: str, model_id: str) -> dict:
    manifest = parts_manifest(root, catalogue, model_id)
    if manifest is None:
        raise FileNotFoundError(
            f"no codes for catalogue {catalogue!r}, model {model_id!r} at {root.url(*codes_dir(catalogue, model_id))}"
        )
    return manifest


def _next_part_number(root: StorageRoot, catalogue: str, model_id: str) -> int:
    names = root.names(*codes_dir(catalogue, model_id))
    numbers = [int(m.group(1)) for n in names if (m := _PART_RE.match(n))]
    return max(numbers, default=-1) + 1


def write_part(
    root: StorageRoot, catalogue: str, model_id: str, table: pa.Table, row_group_rows: int = 1 << 20
) -> str:
    """Write ``table`` atomically as a new, not yet live part; returns its file name."""
    name = codes_parts(catalogue, model_id, _next_part_number(root, catalogue, model_id))[-1]
    with root.atomic_open(*codes_dir(catalogue, model_id), name) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=row_group_rows)
    return name


class PartWriter:
    """Streams batches of codes into one new part file (bounded memory); ``close()`` returns its name."""

    def __init__(
        self,
        root: StorageRoot,
        catalogue: str,
        model_id: str,
        bits: int,
        extra: dict[str, str] | None = None,
        with_image_hash: bool = False,
        row_group_rows: int = 1 << 20,
        name: str | None = None,
    ):
        self.root, self.catalogue, self.model_id, self.bits, self.extra = (
            root,
            catalogue,
            model_id,
            bits,
            extra,
        )
        self.with_image_hash, self.row_group_rows = with_image_hash, row_group_rows
        self.name = name or codes_parts(catalogue, model_id, _next_part_number(root, catalogue, model_id))[-1]
        self.rows = 0
        self._cm = root.atomic_open(*codes_dir(catalogue, model_id), self.name)
        self._file = self._cm.__enter__()
        self._writer: pq.ParquetWriter | None = None

    def write(
        self,
        row_ids: np.ndarray,
        codes: np.ndarray,
        image_hash: np.ndarray | None = None,
        columns_after: dict[str, pa.Array] | None = None,
    ) -> None:
        if self.with_image_hash and image_hash is None:
            raise ValueError("this part carries image hashes: pass image_hash")
        table = codes_table(
            row_ids,
            codes,
            self.bits,
            self.catalogue,
            self.model_id,
            self.extra,
            image_hash if self.with_image_hash else None,
            columns_after,
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._file, table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        self.rows += table.num_rows

    def close(self) -> str:
        if self._writer is None:  # an empty part still records the schema
            self.write(
                np.zeros(0, np.int64),
                np.zeros((0, self.bits // 8), np.uint8),
                np.zeros(0, np.int64) if self.with_image_hash else None,
            )
        self._writer.close()
        self._cm.__exit__(None, None, None)
        return self.name

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        with contextlib.suppress(RuntimeError):
            self._cm.__exit__(RuntimeError, RuntimeError("aborted"), None)


def commit_parts(
    root: StorageRoot,
    catalogue: str,
    model_id: str,
    parts: list[str],
    bits: int,
    rows: int,
    extra: dict[str, str] | None = None,
    checks: dict[str, dict] | None = None,
) -> str:
    """Make exactly ``parts`` live (atomic replace of ``parts.json``), then delete parts no longer listed.
    ``checks`` are part checks already taken (e.g. by each shard's step); other parts are read for theirs."""
    d = codes_dir(catalogue, model_id)
    known = ((parts_manifest(root, catalogue, model_id) or {}).get(CHECKS) or {}) | (checks or {})
    manifest = {
        "parts": list(parts),
        CHECKS: {name: known.get(name) or part_check(root, *d, name) for name in parts},
        "model_id": model_id,
        "catalogue": catalogue,
        "bits": bits,
        "rows": int(rows),
        "bit_order": BIT_ORDER,
        "updated_at": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    uri = root.write_text(json.dumps(manifest, indent=2), *d, PARTS_FILE)
    with contextlib.suppress(FileNotFoundError):
        for path in root.fs.ls(root.path(*d), detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            live = name in parts or name.removesuffix(".json") + ".parquet" in parts
            if _OWNED_RE.match(name) and not live:
                with contextlib.suppress(FileNotFoundError):
                    root.fs.rm(path)
    return uri


def write_codes(
    root: StorageRoot,
    catalogue: str,
    model_id: str,
    row_ids: np.ndarray,
    codes: np.ndarray,
    bits: int,
    extra: dict[str, str] | None = None,
    image_hash: np.ndarray | None = None,
) -> str:
    """Atomically replace the codes of one (catalogue, model) by these rows (one part); returns the part URI."""
    table = codes_table(row_ids, codes, bits, catalogue, model_id, extra, image_hash)
    name = write_part(root, catalogue, model_id, table)
    commit_parts(root, catalogue, model_id, [name], bits, table.num_rows, extra)
    return root.url(*codes_dir(catalogue, model_id), name)


def codes_dataset(root: StorageRoot, catalogue: str, model_id: str) -> tuple[pds.Dataset, dict]:
    """A pyarrow dataset over the live parts (each checked against ``parts.json``), and ``parts.json``."""
    manifest = _require_manifest(root, catalogue, model_id)
    verify_parts(
        root,
        codes_dir(catalogue, model_id),
        manifest,
        f"encode it again: vitrieve encode --catalogue {catalogue}",
    )
    paths = [root.path(*codes_dir(catalogue, model_id), p) for p in manifest["parts"]]
    fs = None if root.is_local else root.fs
    return pds.dataset(paths, format="parquet", filesystem=fs), manifest


# The keys the writers always set (Parquet metadata, ``parts.json``); any other key came from an ``extra``.
_FACTS = ("model_id", "bits", "catalogue", "bit_order", "created_at", "rows", "updated_at")


@dataclass(frozen=True)
class CodesMeta:
    """What is known of the codes of one (catalogue, model) without reading them (:func:`read_codes_meta`)."""

    model_id: str
    catalogue: str
    bits: int
    bit_order: str
    created_at: str  # when the first live part was written
    parts: tuple[str, ...]  # the live part files
    rows: int | None = None  # ``parts.json``'s; None for a lone part written before ``parts.json`` existed
    updated_at: str | None = None  # when ``parts.json`` was last written
    catalogue_fingerprint: str | None = None  # of the catalogue the codes were written for
    extra: dict[str, str] = field(default_factory=dict)  # any other key a writer's ``extra`` held

    @property
    def nbytes(self) -> int:
        """Bytes per packed code."""
        return self.bits // 8

    @property
    def writer_extra(self) -> dict[str, str]:
        """The writer's ``extra`` keys (fingerprint included), for parts that replace these."""
        fp = self.catalogue_fingerprint
        return ({} if fp is None else {"catalogue_fingerprint": fp}) | self.extra


def _stored_meta(root: StorageRoot, catalogue: str, model_id: str) -> tuple[dict[str, str], list[str]]:
    """(the first live part's key-value metadata overlaid with ``parts.json``, as strings; the live parts)."""
    dataset, manifest = codes_dataset(root, catalogue, model_id)
    meta = {k.decode(): v.decode() for k, v in (dataset.schema.metadata or {}).items()}
    for key, value in manifest.items():
        if key not in ("parts", "legacy", CHECKS):
            meta[key] = str(value)
    return meta, list(manifest["parts"])


def read_codes_meta(root: StorageRoot, catalogue: str, model_id: str) -> CodesMeta:
    """The metadata of the codes without reading them: the first part's Parquet key-value metadata (where
    ``bits`` is a string) overlaid with ``parts.json``."""
    meta, parts = _stored_meta(root, catalogue, model_id)
    rows = meta.get("rows")
    return CodesMeta(
        model_id=meta["model_id"],
        catalogue=meta["catalogue"],
        bits=int(meta["bits"]),
        bit_order=meta["bit_order"],
        created_at=meta["created_at"],
        parts=tuple(parts),
        rows=None if rows is None else int(rows),
        updated_at=meta.get("updated_at"),
        catalogue_fingerprint=meta.get("catalogue_fingerprint"),
        extra={k: v for k, v in meta.items() if k not in (*_FACTS, "catalogue_fingerprint")},
    )


def codes_to_numpy(table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """(row_ids int64, codes uint8 (n, nbytes)) from a codes table or record batch."""
    col = table.column("code")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    nbytes = col.type.byte_width
    if len(col) == 0:
        return np.zeros(0, np.int64), np.zeros((0, nbytes), np.uint8)
    data = np.frombuffer(
        col.buffers()[1], dtype=np.uint8, count=len(col) * nbytes, offset=col.offset * nbytes
    )
    return table.column("row_id").to_numpy(), data.reshape(len(col), nbytes)


def iter_codes(
    root: StorageRoot,
    catalogue: str,
    model_id: str,
    batch_rows: int = 1 << 18,
    row_filter: pc.Expression | None = None,
    columns: tuple[str, ...] = ("row_id", "code"),
) -> Iterator[pa.RecordBatch]:
    """Stream the live codes in record batches (part order, file order; not sorted) with bounded memory."""
    dataset, _ = codes_dataset(root, catalogue, model_id)
    cols = [c for c in columns if c in dataset.schema.names]
    yield from dataset.to_batches(columns=cols, filter=row_filter, batch_size=batch_rows)


def count_codes(root: StorageRoot, catalogue: str, model_id: str) -> int:
    dataset, _ = codes_dataset(root, catalogue, model_id)
    return dataset.count_rows()


def read_code_arrays(
    root: StorageRoot,
    catalogue: str,
    model_id: str,
    keep: np.ndarray | None = None,
    batch_rows: int = 1 << 18,
    sort: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(row_ids, codes) streamed into preallocated arrays (peak memory ~ the arrays themselves), optionally
    only the rows whose row_id is in ``keep`` (sorted int64), sorted by row_id."""
    nbytes = read_codes_meta(root, catalogue, model_id).nbytes
    total = count_codes(root, catalogue, model_id)
    ids, codes, n = np.empty(total, np.int64), np.empty((total, nbytes), np.uint8), 0
    for batch in iter_codes(root, catalogue, model_id, batch_rows):
        r, c = codes_to_numpy(batch)
        if keep is not None:
            pos = np.searchsorted(keep, r)
            mask = keep[np.minimum(pos, len(keep) - 1)] == r if len(keep) else np.zeros(len(r), bool)
            r, c = r[mask], c[mask]
        ids[n : n + len(r)], codes[n : n + len(r)] = r, c
        n += len(r)
    ids, codes = ids[:n], codes[:n]
    if sort and n and not bool(np.all(ids[1:] > ids[:-1])):
        order = np.argsort(ids, kind="stable")
        ids, codes = ids[order], codes[order]
    return ids, codes


def read_codes(root: StorageRoot, catalogue: str, model_id: str) -> tuple[np.ndarray, np.ndarray, CodesMeta]:
    """Read codes sorted by row_id, plus their metadata."""
    meta = read_codes_meta(root, catalogue, model_id)
    row_ids, codes = read_code_arrays(root, catalogue, model_id)
    return row_ids, codes, meta


def read_row_index(root: StorageRoot, catalogue: str, model_id: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(row_ids, image_hash or None) of the live codes, sorted by row_id, without reading the codes."""
    dataset, _ = codes_dataset(root, catalogue, model_id)
    has_hash = "image_hash" in dataset.schema.names
    table = dataset.to_table(columns=["row_id", "image_hash"] if has_hash else ["row_id"])
    row_ids = table["row_id"].to_numpy()
    hashes = table["image_hash"].to_numpy() if has_hash else None
    order = np.argsort(row_ids, kind="stable")
    return row_ids[order], (hashes[order] if hashes is not None else None)


def rewrite_without(
    root: StorageRoot, catalogue: str, model_id: str, drop: np.ndarray, bits: int, batch_rows: int = 1 << 18
) -> tuple[str, int]:
    """Copy the live codes minus the rows in ``drop`` (sorted int64) into one new, not yet live part (no
    inference: rows are copied). Returns (part name, rows written)."""
    extra = read_codes_meta(root, catalogue, model_id).writer_extra
    dataset, _ = codes_dataset(root, catalogue, model_id)
    names = dataset.schema.names
    has_hash = "image_hash" in names
    after = [n for n in names if n not in ("row_id", "code", "image_hash")]  # e.g. stored embeddings
    writer = PartWriter(root, catalogue, model_id, bits, extra, with_image_hash=has_hash)
    try:
        for batch in iter_codes(root, catalogue, model_id, batch_rows, columns=tuple(names)):
            r, c = codes_to_numpy(batch)
            keep = ~np.isin(r, drop)
            h = batch.column("image_hash").to_numpy()[keep] if has_hash else None
            mask = pa.array(keep)
            writer.write(r[keep], c[keep], h, {n: batch.column(n).filter(mask) for n in after})
        return writer.close(), writer.rows
    except BaseException:
        writer.abort()
        raise
