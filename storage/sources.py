"""Catalogue sources: list the items (file, labels, split) of an image folder or a CSV / Parquet manifest.

Listing reads no image. In a folder, files that are not images are skipped, not rejected (see
``storage.folder_rules``): hidden and system files and those left out by ``include`` / ``exclude`` globs when
listing, others by their content at ingest (``Item.sniff``). An item with a problem of its own (a path that escapes the source root, a label that
does not parse) comes back marked with a rejection; a source unusable as a whole raises :class:`SourceError`.
Local paths and any fsspec URI (``s3://bucket/key``; endpoint and credentials from the usual environment
variables) are read the same way.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from imaging.formats import has_image_extension
from storage.folder_rules import FOLDER_LABELS, Skip, folder_labels, listing_skip, skip_counts

# Split names a source may use, and the protocol role each maps to.
SPLIT_NAMES = {
    "train": "train",
    "query": "query",
    "test": "query",
    "database": "database",
    "db": "database",
    "validation": "validation",
    "val": "validation",
}
LABEL_FORMATS = ("values", "one_hot")
_TRUE, _FALSE = {"1", "true", "yes", "y", "t"}, {"0", "false", "no", "n", "f", ""}


class SourceError(ValueError):
    """The source cannot be used at all (missing, empty, unreadable manifest, missing columns)."""


@dataclass
class Item:
    """One listed image: ``image_id`` (unique key), ``uri`` (as stored in the catalogue), ``path`` (in the
    source filesystem), label names, the source's split name if any, and a listing-time rejection."""

    image_id: str
    uri: str
    path: str
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    size: int | None = None
    reject: tuple[str, str] | None = None
    sniff: bool = False  # a folder file not named like an image: skipped at ingest unless its content is one


@dataclass
class Source:
    """Listed items, the files skipped while listing, and the filesystem their ``path`` lives in."""

    uri: str
    kind: str
    fs: fsspec.AbstractFileSystem
    items: list[Item]
    skipped: list[Skip] = field(default_factory=list)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _under(fs: fsspec.AbstractFileSystem, path: str, root: str) -> bool:
    """Whether ``path`` (symlinks resolved on local disks, ``..`` collapsed) lies inside ``root``."""
    if _is_local(fs):
        path, root = os.path.realpath(path), os.path.realpath(root)
        return os.path.commonpath([path, root]) == root
    path, root = posixpath.normpath(path), posixpath.normpath(root).rstrip("/")
    return path == root or path.startswith(root + "/")


def _natural_key(name: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def natural_sorted(names) -> list[str]:
    """Label names in natural order ("2" before "10", "cat" before "dog")."""
    return sorted(names, key=_natural_key)


# -------------------------------------------------------------------------------------------- folders


def list_folder(
    uri: str,
    explicit_splits: bool = False,
    labels: str = "top",
    include: list[str] | tuple[str, ...] = (),
    exclude: list[str] | tuple[str, ...] = (),
) -> Source:
    """Items of ``<root>/<class>/**/<file>`` (or ``<root>/<split>/<class>/**/<file>`` with ``explicit_splits``).

    ``labels``: ``top`` (the first folder below the root or split), ``deepest`` (the folder holding the file)
    or ``every_level`` (one label per folder level: several labels per image); see
    ``storage.folder_rules.folder_labels``. Hidden files and folders, system files (Thumbs.db, .DS_Store,
    desktop.ini, ...) and files left out by the ``include`` / ``exclude`` globs are skipped (``skipped``);
    files not named like an image are marked ``sniff``. Files outside a class folder and symlinks leading
    out of the root are rejected."""
    if labels not in FOLDER_LABELS:
        raise SourceError(f"folder labels {labels!r} is not one of {FOLDER_LABELS}")
    fs, root = fsspec.core.url_to_fs(uri)
    root = os.path.abspath(root) if _is_local(fs) else root.rstrip("/")
    if not fs.isdir(root):
        raise SourceError(f"image folder {uri!r} does not exist or is not a folder")
    items, skipped = [], []
    for path, size in _walk(fs, root):
        rel = os.path.relpath(path, root).replace(os.sep, "/") if _is_local(fs) else path[len(root) + 1 :]
        parts = rel.split("/")
        why = listing_skip(parts, include, exclude)
        if why:
            skipped.append(Skip(rel, why))
            continue
        item = Item(image_id=rel, uri=_uri(fs, path), path=path, size=size)
        depth = 2 if explicit_splits else 1
        if not _under(fs, path, root):
            item.reject = ("escapes-root", f"symlink resolves to {os.path.realpath(path)}, outside {root}")
            items.append(item)
            continue
        item.sniff = not has_image_extension(parts[-1])
        if len(parts) <= depth:
            where = "<split>/<class>/" if explicit_splits else "<class>/"
            item.reject = ("no-label", f"not inside a {where} folder")
        elif explicit_splits and parts[0].lower() not in SPLIT_NAMES:
            item.reject = ("bad-split", f"split folder {parts[0]!r} is not one of {sorted(SPLIT_NAMES)}")
        else:
            item.split = SPLIT_NAMES[parts[0].lower()] if explicit_splits else None
            item.labels = folder_labels(parts[depth - 1 : -1], labels)
        items.append(item)
    if not items:
        also = f" besides {len(skipped)} skipped ({skip_counts(skipped)})" if skipped else ""
        raise SourceError(f"image folder {uri!r} holds no files{also}")
    return Source(uri=_uri(fs, root), kind="folder", fs=fs, items=items, skipped=skipped)


def _walk(fs: fsspec.AbstractFileSystem, root: str):
    """(path, size) of every file under ``root``; on local disks symlinked folders are not descended, but a
    symlinked folder leading out of the root is reported (as a path, to be rejected)."""
    if not _is_local(fs):
        for path, info in sorted(fs.find(root, detail=True).items()):
            yield path, info.get("size")
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.islink(full) and not _under(fs, full, root):
                yield full, None
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            yield full, (os.path.getsize(full) if os.path.exists(full) else None)


# ------------------------------------------------------------------------------------------ manifests


def read_manifest_table(uri: str, columns: list[str]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The ``columns`` of a CSV (any delimiter pyarrow detects with ``,``; ``.tsv`` uses tabs) or Parquet
    manifest, CSV columns as strings. Returns the table and the CSV rows that could not be parsed."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.isfile(path):
        raise SourceError(f"manifest {uri!r} does not exist")
    bad_rows: list[tuple[int, str]] = []
    try:
        with fs.open(path, "rb") as f:
            if path.lower().endswith((".parquet", ".pq")):
                schema = pq.read_schema(f)
                _require_columns(uri, columns, schema.names)
                f.seek(0)
                return pq.read_table(f, columns=columns), bad_rows

            def skip(row) -> str:
                bad_rows.append((row.number or -1, row.text))
                return "skip"

            delimiter = "\t" if path.lower().endswith((".tsv", ".tsv.gz")) else ","
            compression = "gzip" if path.lower().endswith(".gz") else None
            stream = pa.CompressedInputStream(f, compression) if compression else f
            table = pcsv.read_csv(
                stream,
                parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=skip),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in columns}, strings_can_be_null=True
                ),
            )
    except SourceError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
        raise SourceError(f"manifest {uri!r} cannot be read: {err}") from err
    _require_columns(uri, columns, table.column_names)
    return table.select(columns), bad_rows


def _require_columns(uri: str, wanted: list[str], present: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise SourceError(f"manifest {uri!r} lacks column(s) {missing}; it has {present}")


def parse_labels(cell, column: str, label_format: str, sep: str) -> list[str]:
    """Label names of one manifest cell; ValueError if it does not parse.

    ``values``: the cell holds label names or integer ids (a string split on ``sep``, a number, or a list).
    ``one_hot``: the cell is a 0/1 flag and ``column`` is the label's name."""
    if label_format == "one_hot":
        if isinstance(cell, bool):
            return [column] if cell else []
        if isinstance(cell, int | float) and cell in (0, 1):
            return [column] if cell else []
        text = "" if cell is None else str(cell).strip().lower()
        if text in _TRUE | _FALSE:
            return [column] if text in _TRUE else []
        raise ValueError(f"column {column!r}: {cell!r} is not a 0/1 flag")
    if cell is None:
        return []
    if isinstance(cell, list | tuple):
        return [name for value in cell for name in parse_labels(value, column, label_format, sep)]
    if isinstance(cell, bool):
        raise ValueError(f"column {column!r}: boolean {cell!r} is not a label (use label_format='one_hot')")
    if isinstance(cell, float):
        if not math.isfinite(cell) or cell != int(cell):
            raise ValueError(f"column {column!r}: {cell!r} is not a label name or integer id")
        cell = int(cell)
    if isinstance(cell, int):
        return [str(cell)]
    names = [t.strip() for t in str(cell).split(sep)] if sep else [str(cell).strip()]
    bad = [t for t in names if any(ord(ch) < 32 for ch in t)]
    if bad:
        raise ValueError(f"column {column!r}: label {bad[0]!r} contains control characters")
    return [t for t in names if t]


def _resolve(ref: str, manifest_fs, manifest_dir: str, root_fs, root: str) -> str:
    """Path in ``root_fs`` of a manifest reference (relative to the manifest, absolute, or a URI);
    ValueError if it lies outside ``root``."""
    if "://" in ref:
        fs, path = fsspec.core.url_to_fs(ref)
        if type(fs) is not type(root_fs):
            raise ValueError(f"{ref!r} is not on the source root's filesystem ({_uri(root_fs, root)})")
    elif os.path.isabs(ref) and _is_local(root_fs):
        path = os.path.normpath(ref)
    else:
        if type(manifest_fs) is not type(root_fs):
            raise ValueError(
                f"relative {ref!r} next to the manifest is outside the source root {_uri(root_fs, root)}"
            )
        path = (
            os.path.normpath(os.path.join(manifest_dir, ref))
            if _is_local(root_fs)
            else posixpath.normpath(posixpath.join(manifest_dir, ref))
        )
    if not _under(root_fs, path, root):
        raise ValueError(f"{ref!r} resolves outside the source root {_uri(root_fs, root)}")
    return path


def list_manifest(
    uri: str,
    uri_column: str = "uri",
    label_columns: list[str] | tuple[str, ...] = ("label",),
    label_format: str = "values",
    label_sep: str = "|",
    split_column: str = "",
    id_column: str = "",
    source_root: str = "",
) -> Source:
    """Items of a CSV / Parquet manifest: one row per image, ``uri_column`` relative to the manifest's folder
    or absolute, labels from ``label_columns`` (see :func:`parse_labels`), optional split and id columns
    (default id: the uri as written). Every image must lie under ``source_root`` (default: the manifest's
    folder)."""
    if label_format not in LABEL_FORMATS:
        raise SourceError(f"label_format {label_format!r} is not one of {LABEL_FORMATS}")
    if not label_columns:
        raise SourceError("a manifest needs at least one label column")
    columns = list(dict.fromkeys([uri_column, *label_columns, *(c for c in (split_column, id_column) if c)]))
    table, bad_rows = read_manifest_table(uri, columns)
    if table.num_rows == 0 and not bad_rows:
        raise SourceError(f"manifest {uri!r} has no rows")
    manifest_fs, manifest_path = fsspec.core.url_to_fs(uri)
    manifest_dir = (
        os.path.dirname(manifest_path) if _is_local(manifest_fs) else posixpath.dirname(manifest_path)
    )
    root_fs, root = fsspec.core.url_to_fs(source_root) if source_root else (manifest_fs, manifest_dir)
    root = os.path.abspath(root) if _is_local(root_fs) else root.rstrip("/")
    name = posixpath.basename(manifest_path)
    items = [
        Item(image_id=f"{name}:line {n}", uri="", path="", reject=("bad-row", text[:200]))
        for n, text in bad_rows
    ]
    data = table.to_pydict()
    for i in range(table.num_rows):
        ref = data[uri_column][i]
        ref = None if ref is None else str(ref).strip()
        image_id = str(data[id_column][i]).strip() if id_column and data[id_column][i] is not None else ref
        item = Item(image_id=image_id or f"{name}:row {i + 1}", uri="", path="")
        items.append(item)
        if not ref:
            item.reject = ("missing", f"row {i + 1}: empty {uri_column!r}")
            continue
        try:
            item.path = _resolve(ref, manifest_fs, manifest_dir, root_fs, root)
            item.uri = _uri(root_fs, item.path)
        except ValueError as err:
            item.reject = ("escapes-root", str(err))
            continue
        try:
            labels = [
                n for col in label_columns for n in parse_labels(data[col][i], col, label_format, label_sep)
            ]
        except ValueError as err:
            item.reject = ("bad-label", str(err))
            continue
        item.labels = list(dict.fromkeys(labels))
        if not item.labels:
            item.reject = ("no-label", f"no label in {list(label_columns)}")
            continue
        if split_column:
            split = (data[split_column][i] or "").strip().lower()
            if split not in SPLIT_NAMES:
                item.reject = (
                    "bad-split",
                    f"split {data[split_column][i]!r} is not one of {sorted(SPLIT_NAMES)}",
                )
                continue
            item.split = SPLIT_NAMES[split]
        if id_column and data[id_column][i] is None:
            item.reject = ("bad-id", f"row {i + 1}: empty {id_column!r}")
    return Source(uri=_uri(manifest_fs, manifest_path), kind="manifest", fs=root_fs, items=items)


def detect_kind(uri: str) -> str:
    """``manifest`` for .csv/.tsv/.parquet files, ``idx`` for a folder of IDX files, else ``folder``."""
    lower = uri.lower().rstrip("/")
    if lower.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")):
        return "manifest"
    fs, path = fsspec.core.url_to_fs(uri)
    for stem in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"):
        if fs.exists(posixpath.join(path, stem) if not _is_local(fs) else os.path.join(path, stem)):
            return "idx"
    return "folder"
