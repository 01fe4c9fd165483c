"""The catalogue table (docs/ARCHITECTURE.md, "Schemas"): images, labels, protocol membership; stored as Parquet."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.fs import StorageRoot

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


def catalogue_parts(name: str) -> tuple[str, ...]:
    return ("catalogues", name, "catalogue.parquet")


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


def validate_catalogue(table: pa.Table) -> None:
    """Raise ValueError naming the first broken invariant of a catalogue table."""
    if table.num_rows == 0:
        raise ValueError("catalogue is empty")
    for col in ("row_id", "image_id"):
        if pc.count_distinct(table[col]).as_py() != table.num_rows:
            raise ValueError(f"catalogue column {col!r} has duplicate values")
    if pc.any(pc.is_null(table["row_id"])).as_py():
        raise ValueError("catalogue has null row_id")
    if not pc.any(table["in_query"]).as_py():
        raise ValueError("catalogue protocol has no query images")
    if not pc.any(table["in_database"]).as_py():
        raise ValueError("catalogue protocol has no database images")
    if not pc.any(table["in_train"]).as_py():
        raise ValueError("catalogue protocol has no training images")
    no_image = pc.and_(pc.is_null(table["image"]), pc.is_null(table["uri"]))
    if pc.any(no_image).as_py():
        bad = table.filter(no_image)["image_id"][0].as_py()
        raise ValueError(f"catalogue item {bad!r} has neither image bytes nor a uri")


def write_catalogue(root: StorageRoot, table: pa.Table, info: CatalogueInfo) -> str:
    """Validate and atomically write ``catalogues/<name>/catalogue.parquet``; returns its URI."""
    missing = set(SCHEMA.names) - set(table.column_names)
    if missing:
        raise ValueError(f"catalogue table lacks columns {sorted(missing)}")
    table = table.select(SCHEMA.names).cast(SCHEMA).sort_by("row_id")
    validate_catalogue(table)
    table = table.replace_schema_metadata(info.to_metadata())
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=16384, write_page_checksum=True)
    return root.write_bytes(buf.getvalue(), *catalogue_parts(info.name))


# How pyarrow reports a damaged Parquet file through OSError (a failed page CRC, an undecodable header).
DAMAGE = re.compile(r"checksum|thrift|parquet|page", re.IGNORECASE)


def read_catalogue(
    root: StorageRoot, name: str, columns: list[str] | None = None
) -> tuple[pa.Table, CatalogueInfo]:
    """Read a catalogue (all or some columns), sorted by row_id, with its metadata."""
    path = root.path(*catalogue_parts(name))
    if not root.fs.exists(path):
        raise FileNotFoundError(
            f"catalogue {name!r} not found at {root.url(*catalogue_parts(name))}; ingest it first"
        )
    try:
        with root.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f, page_checksum_verification=True)  # the CRC of every page written
            info = CatalogueInfo.from_metadata(pf.schema_arrow.metadata)
            table = pf.read(columns=columns)
    except (OSError, pa.ArrowException) as err:
        if not isinstance(err, pa.ArrowException) and not DAMAGE.search(str(err)):
            raise  # e.g. the network: not the file's fault
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{root.url(*catalogue_parts(name))}: damaged or partly copied ({reason}); "
            f"ingest it again: vitrieve ingest --catalogue {name} --source SOURCE"
        ) from None
    return table, info


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
    """Content fingerprint of a catalogue: rows, ids, image hashes, labels and protocol membership."""
    import hashlib

    h = hashlib.sha256()
    for col in ("row_id", "sha256", "labels", "in_train", "in_query", "in_database"):
        for chunk in table[col].chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(buf)
    return h.hexdigest()[:16]
