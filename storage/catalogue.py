"""The catalogue table (docs/ARCHITECTURE.md, "Schemas"): images, labels, protocol membership; stored as Parquet."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from storage.fs import StorageRoot
from storage.part_checks import CHECKS, verify_parts

MANIFEST = "catalogue.json"
LEGACY_FILE = "catalogue.parquet"  # one file with the metadata in its footer, as written before shard files
FORMAT = 2
SHARD_ROWS = 1 << 18  # row ids per shard file (and the codes' default shard)
ROW_GROUP_ROWS = 16_384
_SHARD_RE = re.compile(r"^shard-\d{5,}-[0-9a-f]+\.parquet$")

SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("image_id", pa.string()),
        ("uri", pa.string()),
        ("image", pa.binary()),
        ("labels", pa.list_(pa.int32())),
        ("split", pa.string()),  # train | database (held-out validation slice, database only) | query
        ("in_train", pa.bool_()),
        ("in_validation", pa.bool_()),
        ("in_query", pa.bool_()),
        ("in_database", pa.bool_()),
        ("sha256", pa.binary(32)),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("channels", pa.int32()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)


def catalogue_dir(name: str) -> tuple[str, ...]:
    return ("catalogues", name)


def catalogue_manifest(name: str) -> tuple[str, ...]:
    """The catalogue's manifest: its metadata and the shard files that hold its rows."""
    return (*catalogue_dir(name), MANIFEST)


@dataclass
class CatalogueInfo:
    """Table-level facts stored in the Parquet key-value metadata."""

    name: str
    label_names: list[str]
    protocol: dict
    source: str
    next_row_id: int | None = None  # first row_id never used yet (row_ids of removed rows are not reused)
    label_splits: list[dict] | None = None  # per label: images, query, train, validation, database, note
    image_checks: int | None = None  # version of the checks its images passed (storage.images.IMAGE_CHECKS)

    def to_metadata(self) -> dict[bytes, bytes]:
        meta = {
            b"vitrieve.catalogue": self.name.encode(),
            b"vitrieve.label_names": json.dumps(self.label_names).encode(),
            b"vitrieve.protocol": json.dumps(self.protocol, sort_keys=True).encode(),
            b"vitrieve.source": self.source.encode(),
        }
        if self.next_row_id is not None:
            meta[b"vitrieve.next_row_id"] = str(self.next_row_id).encode()
        if self.label_splits is not None:
            meta[b"vitrieve.label_splits"] = json.dumps(self.label_splits).encode()
        if self.image_checks is not None:
            meta[b"vitrieve.image_checks"] = str(self.image_checks).encode()
        return meta

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_metadata(cls, meta: dict[bytes, bytes]) -> CatalogueInfo:
        return cls(
            name=meta[b"vitrieve.catalogue"].decode(),
            label_names=json.loads(meta[b"vitrieve.label_names"]),
            protocol=json.loads(meta[b"vitrieve.protocol"]),
            source=meta[b"vitrieve.source"].decode(),
            next_row_id=int(meta[b"vitrieve.next_row_id"]) if b"vitrieve.next_row_id" in meta else None,
            label_splits=json.loads(meta[b"vitrieve.label_splits"])
            if b"vitrieve.label_splits" in meta
            else None,
            image_checks=int(meta[b"vitrieve.image_checks"]) if b"vitrieve.image_checks" in meta else None,
        )


_id_hash = hash  # 64 bits, fixed within a process: all a writer needs to compare its own ids


class CatalogueWriter:
    """Write a catalogue shard by shard: rows arrive in ``row_id`` order (any batch size); each full shard
    (``row_id // shard_rows``) becomes one Parquet file ``shard-kkkkk-<sha256>.parquet``, so memory holds one
    shard and an 8-byte hash per image id (to refuse a repeated one). :meth:`commit` checks the table-wide
    invariants, writes ``catalogue.json`` atomically (the switch readers see) and removes the files it no
    longer lists. A shard whose file is already stored byte for byte (an unchanged shard on re-ingest) is not
    written again. Every invariant of a catalogue is checked here (each with a one-line ``ValueError``); a
    write refused before the commit leaves the stored catalogue as it was, and :meth:`abort` removes the files
    it had written."""

    def __init__(self, root: StorageRoot, info: CatalogueInfo, shard_rows: int = SHARD_ROWS) -> None:
        if shard_rows <= 0:
            raise ValueError(f"shard_rows {shard_rows}: must be positive")
        self.root, self.info, self.shard_rows = root, info, shard_rows
        self._pending: list[pa.Table] = []
        self._shard = -1
        self._last_row_id = -1
        self._id_hashes: list[np.ndarray] = []  # 64-bit hashes of the image ids, to find a repeated one
        self._roles = dict.fromkeys(("in_query", "in_database", "in_train"), False)
        self.parts: list[str] = []
        self.checks: dict[str, dict] = {}
        self.rows = 0
        self._written: list[str] = []  # files this writer created (an unchanged shard's file is not one)
        self._committed = False

    def write(self, rows: pa.Table | pa.RecordBatch) -> None:
        """Add rows whose row ids ascend from where the previous ones stopped."""
        table = _conform(pa.table(rows) if isinstance(rows, pa.RecordBatch) else rows)
        if table.num_rows == 0:
            return
        self._check(table)
        number = table["row_id"].to_numpy() // self.shard_rows
        cuts = np.flatnonzero(number[1:] != number[:-1]) + 1
        for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(number)].tolist(), strict=True):
            if int(number[lo]) != self._shard:
                self._flush()
                self._shard = int(number[lo])
            self._pending.append(table.slice(lo, hi - lo))

    def _check(self, table: pa.Table) -> None:
        if table["row_id"].null_count:
            raise ValueError("catalogue has null row_id")
        row_ids = np.r_[self._last_row_id, table["row_id"].to_numpy()]
        step = np.diff(row_ids)
        if not bool(np.all(step > 0)):
            at = int(np.argmax(step <= 0))
            if step[at] == 0:
                raise ValueError("catalogue column 'row_id' has duplicate values")
            raise ValueError(
                f"catalogue rows must come in row_id order: {row_ids[at + 1]} after {row_ids[at]}"
            )
        self._last_row_id = int(row_ids[-1])
        ids = table["image_id"].to_pylist()
        self._id_hashes.append(np.fromiter(map(_id_hash, ids), np.int64, table.num_rows))
        no_image = pc.and_(pc.is_null(table["image"]), pc.is_null(table["uri"]))
        if pc.any(no_image).as_py():
            bad = table.filter(no_image)["image_id"][0].as_py()
            raise ValueError(f"catalogue item {bad!r} has neither image bytes nor a uri")
        for role in self._roles:
            self._roles[role] = self._roles[role] or bool(pc.any(table[role]).as_py())
        self.rows += table.num_rows

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._pending = []
        buf = io.BytesIO()
        pq.write_table(
            table, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_page_checksum=True
        )
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        name = f"shard-{self._shard:05d}-{sha[:16]}.parquet"
        folder = catalogue_dir(self.info.name)
        if not (self.root.exists(*folder, name) and self.root.sha256(*folder, name) == sha):
            self.root.write_bytes(data, *folder, name)
            self._written.append(name)
        self.parts.append(name)
        self.checks[name] = {"sha256": sha, "rows": table.num_rows}

    def _check_image_ids(self) -> None:
        """Refuse a repeated image id: equal hashes, then (rarely) the ids behind them read back to compare."""
        hashes = np.sort(np.concatenate(self._id_hashes))
        suspects = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
        if not suspects:
            return
        ids = _files_dataset(self.root, self.info.name, self.parts).to_table(columns=["image_id"])["image_id"]
        seen: set[str] = set()
        for image_id in ids.to_pylist():
            if _id_hash(image_id) in suspects:
                if image_id in seen:
                    raise ValueError("catalogue column 'image_id' has duplicate values")
                seen.add(image_id)

    def commit(self) -> str:
        """Write the last shard and ``catalogue.json``; returns the manifest's URI."""
        self._flush()
        if self.rows == 0:
            raise ValueError("catalogue is empty")
        self._check_image_ids()
        for role, what in (("in_query", "query"), ("in_database", "database"), ("in_train", "training")):
            if not self._roles[role]:
                raise ValueError(f"catalogue protocol has no {what} images")
        manifest = {
            "format": FORMAT,
            "rows": self.rows,
            "shard_rows": self.shard_rows,
            "parts": self.parts,
            CHECKS: self.checks,
            "info": self.info.to_dict(),
        }
        folder = catalogue_dir(self.info.name)
        uri = self.root.write_text(json.dumps(manifest, indent=1), *folder, MANIFEST)
        self._committed = True
        for name in self.root.names(*folder):
            if (_SHARD_RE.match(name) and name not in self.checks) or name == LEGACY_FILE:
                with contextlib.suppress(FileNotFoundError):
                    self.root.fs.rm(self.root.path(*folder, name))
        return uri

    def abort(self) -> None:
        """Remove the shard files this writer created, unless it committed them."""
        if self._committed:
            return
        for name in self._written:
            with contextlib.suppress(FileNotFoundError):
                self.root.fs.rm(self.root.path(*catalogue_dir(self.info.name), name))


def _conform(table: pa.Table) -> pa.Table:
    missing = set(SCHEMA.names) - set(table.column_names)
    if missing:
        raise ValueError(f"catalogue table lacks columns {sorted(missing)}")
    return table.select(SCHEMA.names).cast(SCHEMA)


def write_catalogue(
    root: StorageRoot,
    rows: pa.Table | Iterable[pa.RecordBatch],
    info: CatalogueInfo,
    shard_rows: int = SHARD_ROWS,
) -> str:
    """Validate and write ``catalogues/<name>/``: a whole table (sorted here) or record batches in ``row_id``
    order, streamed through :class:`CatalogueWriter`; returns the manifest's URI. Refused rows leave the folder
    as it was."""
    if isinstance(rows, pa.Table):
        rows = _conform(rows).sort_by("row_id").to_batches(max_chunksize=ROW_GROUP_ROWS)
    writer = CatalogueWriter(root, info, shard_rows)
    try:
        for batch in rows:
            writer.write(batch)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


# How pyarrow reports a damaged Parquet file through OSError (a failed page CRC, an undecodable header).
DAMAGE = re.compile(r"checksum|thrift|parquet|page", re.IGNORECASE)


def _again(name: str) -> str:
    return f"ingest it again: vitrieve ingest --catalogue {name} --source SOURCE"


def catalogue_exists(root: StorageRoot, name: str) -> bool:
    return root.exists(*catalogue_manifest(name)) or root.exists(*catalogue_dir(name), LEGACY_FILE)


def _stored(root: StorageRoot, name: str, check: bool = True) -> tuple[list[str], CatalogueInfo | None]:
    """(the files holding the rows, in row-id order; the metadata, None for a legacy file whose footer has
    it); with ``check``, every shard file checked against the sha256 its manifest recorded."""
    folder = catalogue_dir(name)
    if root.exists(*folder, MANIFEST):
        manifest = json.loads(root.read_text(*folder, MANIFEST))
        if check:
            verify_parts(root, folder, manifest, _again(name), listed_in=MANIFEST)
        return list(manifest["parts"]), CatalogueInfo(**manifest["info"])
    if root.exists(*folder, LEGACY_FILE):
        return [LEGACY_FILE], None
    raise FileNotFoundError(f"catalogue {name!r} not found at {root.url(*folder)}; ingest it first")


def _read_file(
    root: StorageRoot, name: str, file: str, columns: list[str] | None
) -> tuple[pa.Table, CatalogueInfo | None]:
    path = (*catalogue_dir(name), file)
    try:
        with root.fs.open(root.path(*path), "rb") as f:
            pf = pq.ParquetFile(f, page_checksum_verification=True)  # the CRC of every page written
            meta = pf.schema_arrow.metadata or {}
            info = CatalogueInfo.from_metadata(meta) if b"vitrieve.catalogue" in meta else None
            return pf.read(columns=columns), info
    except (OSError, pa.ArrowException) as err:
        if not isinstance(err, pa.ArrowException) and not DAMAGE.search(str(err)):
            raise  # e.g. the network: not the file's fault
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{root.url(*path)}: damaged or partly copied ({reason}); {_again(name)}") from None


def read_catalogue(
    root: StorageRoot, name: str, columns: list[str] | None = None
) -> tuple[pa.Table, CatalogueInfo]:
    """Read a catalogue (all or some columns), sorted by row_id, with its metadata."""
    files, info = _stored(root, name)
    tables = []
    for file in files:
        table, footer = _read_file(root, name, file, columns)
        tables.append(table)
        info = info or footer
    if info is None:
        raise ValueError(f"{root.url(*catalogue_dir(name), files[0])}: no catalogue metadata; {_again(name)}")
    return pa.concat_tables(tables), info


def catalogue_facts(root: StorageRoot, name: str) -> dict[str, int | str]:
    """``bytes`` of the stored catalogue (all its files), its ``shard_files`` and the ``sha256`` of the file
    that pins its content (the manifest, which records every shard's sha256; the files are not read)."""
    files, info = _stored(root, name, check=False)
    folder = catalogue_dir(name)
    pin = files[0] if info is None else MANIFEST  # a legacy file pins itself
    stored = files if info is None else [*files, MANIFEST]
    return {
        "bytes": sum(int(root.fs.size(root.path(*folder, f))) for f in stored),
        "shard_files": len(files),
        "sha256": root.sha256(*folder, pin),
    }


def catalogue_dataset(root: StorageRoot, name: str) -> pds.Dataset:
    """A pyarrow dataset over the catalogue's files (checked as :func:`read_catalogue` does), for scans that
    read only the row groups a filter needs."""
    return _files_dataset(root, name, _stored(root, name)[0])


def _files_dataset(root: StorageRoot, name: str, files: list[str]) -> pds.Dataset:
    fs = None if root.is_local else root.fs
    return pds.dataset([root.path(*catalogue_dir(name), f) for f in files], format="parquet", filesystem=fs)


def labels_matrix(table: pa.Table, num_classes: int) -> np.ndarray:
    """The ``labels`` column as a bool multi-hot matrix (n, num_classes)."""
    labels = table["labels"].combine_chunks()
    flat = labels.flatten().to_numpy(zero_copy_only=False)
    offsets = labels.offsets.to_numpy()
    rows = np.repeat(np.arange(len(labels)), np.diff(offsets))
    out = np.zeros((len(labels), num_classes), dtype=bool)
    out[rows, flat] = True
    return out


def fingerprint(table: pa.Table) -> str:
    """Content fingerprint of a catalogue: rows, ids, image hashes, labels and protocol membership. Each column
    is first concatenated into one fresh array, so how the rows are split into chunks or files (shards, row
    groups, slices) does not change it."""
    h = hashlib.sha256()
    for col in ("row_id", "sha256", "labels", "in_train", "in_query", "in_database"):
        whole = pa.concat_arrays([*table[col].chunks, pa.array([], table[col].type)])  # copies: offset 0
        for buf in whole.buffers():
            if buf is not None:
                h.update(buf)
    return h.hexdigest()[:16]
