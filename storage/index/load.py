"""Loading indexes: sha256-checked against their manifest, memory-mapped where the kind allows (S3 roots copy
to a local cache file first), and loaded once per process and published version where it matters."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile

import numpy as np

from storage.fs import StorageRoot
from storage.index.base import BinaryIndex
from storage.index.publish import (
    IndexManifest,
    current,
    hash_file,
    index_dir,
    published_manifest,
    read_manifest,
)
from storage.index.registry import DEFAULT_KIND, get_kind
from storage.index.segments import Segmented


def cache_dir() -> str:
    return os.environ.get("VITRIEVE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vitrieve"))


def _local_verified_copy(root: StorageRoot, parts: tuple[str, ...], file: str, sha256: str) -> str:
    """A local file holding ``file``'s bytes, whose sha256 matched (local root: the file itself; S3: a
    copy in the local cache, named by its sha256)."""
    url = root.url(*parts, file)
    if root.is_local:
        path = root.path(*parts, file)
        if hash_file(path) != sha256:
            raise ValueError(f"index file {url} does not match its manifest's sha256")
        return path
    target_dir = os.path.join(cache_dir(), "indexes")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{sha256}{os.path.splitext(file)[1]}")
    if os.path.exists(target) and hash_file(target) == sha256:
        return target
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target_dir, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, root.fs.open(root.path(*parts, file), "rb") as src:
            while chunk := src.read(1 << 22):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise ValueError(f"index file {url} does not match its manifest's sha256")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_index_file(
    path: str, kind: str, bits: int, params: dict, mmap: bool = True, companion: str | None = None
) -> BinaryIndex:
    """Open a serialised index of ``kind`` (with its companion file, if the kind has one); memory-mapped
    when ``mmap`` and the kind has read flags for it."""
    import faiss

    cls = get_kind(kind, f"index file {path}")
    flags = cls.read_flags()
    fidx = faiss.read_index_binary(path, flags) if (mmap and flags) else faiss.read_index_binary(path)
    rows = None
    if cls.companion_name:
        if not companion:
            raise ValueError(
                f"index file {path}: an {kind} index needs its {cls.companion_name} companion file"
            )
        rows = np.load(companion, mmap_mode="r" if mmap else None)
    return cls.open(fidx, bits, params, rows)


def load_index(
    root: StorageRoot, catalogue: str, model_id: str | None = None, kind: str | None = None, mmap: bool = True
) -> tuple[BinaryIndex, IndexManifest]:
    """Load an index (default: the published one) and its manifest; checks the file's sha256 first."""
    manifest = None
    if model_id is None:
        pointer = current(root, catalogue)
        model_id, kind = pointer["model_id"], pointer["kind"]
        manifest = published_manifest(root, catalogue, pointer)
    parts = index_dir(catalogue, model_id)
    manifest = manifest or read_manifest(root, catalogue, model_id, kind or DEFAULT_KIND)
    index = _read_part(root, parts, manifest, manifest.main_files, mmap)
    if manifest.delta:
        d = manifest.delta
        delta = _read_part(root, parts, manifest, d, mmap)
        index.stored = dataclasses.replace(
            manifest,
            delta={},
            ntotal=manifest.ntotal - d["ntotal"],
            file_bytes=manifest.file_bytes - d["bytes"],
        )
        index = Segmented(index, delta)
    index.stored = manifest
    return index, manifest


def _read_part(root, parts, manifest: IndexManifest, entry: dict, mmap: bool) -> BinaryIndex:
    """One sha256-checked index file of ``manifest`` and its companion (``entry``: its ``main_files`` or
    ``delta``)."""
    path = _local_verified_copy(root, parts, entry["file"], entry["sha256"])
    companion = entry["companion_file"]
    if companion:
        companion = _local_verified_copy(root, parts, companion, entry["companion_sha256"])
    return read_index_file(path, manifest.kind, manifest.bits, manifest.params, mmap, companion or None)


@functools.lru_cache(maxsize=8)
def _cached(
    uri: str, catalogue: str, model_id: str, kind: str, sha256: str
) -> tuple[BinaryIndex, IndexManifest]:
    index, manifest = load_index(StorageRoot(uri), catalogue)  # the published one; the key pins its version
    if manifest.version != sha256:
        raise ValueError(
            f"index of {catalogue!r} changed while loading (version {manifest.version} != {sha256})"
        )
    return index, manifest


def load_index_cached(root: StorageRoot, catalogue: str) -> tuple[BinaryIndex, IndexManifest]:
    """The published index of ``catalogue``, loaded (and sha256-checked, memory-mapped) once per process and
    published version: each call reads only the small ``CURRENT`` pointer."""
    pointer = current(root, catalogue)
    return _cached(root.uri, catalogue, pointer["model_id"], pointer["kind"], pointer["sha256"])
