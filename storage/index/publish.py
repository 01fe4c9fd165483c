"""Index files on a storage root: written atomically with a manifest, published by moving ``CURRENT``.

Layout: ``indexes/<catalogue>/<model_id>/<kind>.faiss`` (or ``<kind>.b.faiss``, see ``write_index``), its
companion file where the kind has one, ``<kind>.manifest.json`` for the latest build, ``<file>.json`` per file,
and ``indexes/<catalogue>/CURRENT`` naming the served (model_id, kind, sha256, params)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np

from storage.fs import StorageRoot
from storage.index.base import BinaryIndex
from storage.index.registry import DEFAULT_KIND


@dataclass
class IndexManifest:
    kind: str
    bits: int
    ntotal: int
    codes_rows: int
    sha256: str
    build_seconds: float
    catalogue: str
    model_id: str
    file: str
    params: dict
    created_at: str
    file_bytes: int = 0
    faiss_class: str = ""
    mode: str = "rebuild"
    companion_file: str = ""  # e.g. hnsw: rows per distinct code (.npy), sha256-checked like the index file
    companion_sha256: str = ""
    source: dict = dataclasses.field(
        default_factory=dict
    )  # what it was built from (storage.index.incremental)

    @classmethod
    def from_json(cls, text: str) -> IndexManifest:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def index_dir(catalogue: str, model_id: str) -> tuple[str, ...]:
    return ("indexes", catalogue, model_id)


class HashingWriter:
    """A binary writer that passes bytes on to ``dst`` and hashes (sha256) and counts them on the way, so a
    file is written and hashed in one pass."""

    def __init__(self, dst) -> None:
        self.dst, self.sha, self.size = dst, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.dst.write(data)
        self.size += len(data)
        return len(data)


def hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_index(
    root: StorageRoot,
    index: BinaryIndex,
    catalogue: str,
    model_id: str,
    kind: str,
    bits: int,
    codes_rows: int,
    build_seconds: float,
    params: dict | None = None,
    mode: str = "rebuild",
    source: dict | None = None,
) -> IndexManifest:
    """Serialise ``index`` and its manifest atomically under ``indexes/<catalogue>/<model_id>/``.

    Never overwrites the published file: if ``CURRENT`` points at ``<kind>.faiss`` of this model, the build
    goes to ``<kind>.b.faiss`` (and back again next time), so a run killed or failing its checks before
    ``publish`` leaves the published index whole. ``<kind>.manifest.json`` describes the latest build,
    ``<file>.json`` each file."""
    import faiss

    fidx = index.writable()
    if params is None:
        params = index.params
    parts = index_dir(catalogue, model_id)
    slot = f"{kind}.b" if _published_file(root, catalogue, model_id, kind) == f"{kind}.faiss" else kind
    with root.atomic_open(*parts, f"{slot}.faiss") as dst:  # serialised, hashed and written in one pass
        out = HashingWriter(dst)
        faiss.write_index_binary(fidx, faiss.PyCallbackIOWriter(out.write, 1 << 22))
    sha, size = out.sha.hexdigest(), out.size
    companion_file = companion_sha = ""
    if index.companion_name:
        companion_file = f"{slot}.{index.companion_name}.npy"
        with root.atomic_open(*parts, companion_file) as dst:
            out = HashingWriter(dst)
            np.save(out, index.companion())
        companion_sha, size = out.sha.hexdigest(), size + out.size
    manifest = IndexManifest(
        kind=kind,
        bits=bits,
        ntotal=int(index.ntotal),
        codes_rows=codes_rows,
        sha256=sha,
        build_seconds=round(float(build_seconds), 4),
        catalogue=catalogue,
        model_id=model_id,
        file=f"{slot}.faiss",
        params=params or {},
        created_at=datetime.now(UTC).isoformat(),
        file_bytes=int(size),
        faiss_class=type(fidx).__name__,
        mode=mode,
        companion_file=companion_file,
        companion_sha256=companion_sha,
        source=source or {},
    )
    text = json.dumps(asdict(manifest), indent=2)
    root.write_text(
        text, *parts, f"{slot}.faiss.json"
    )  # this file's manifest, for readers of the published index
    root.write_text(text, *parts, f"{kind}.manifest.json")
    root.write_text(text, *parts, "manifest.json")
    return manifest


def _published_file(root: StorageRoot, catalogue: str, model_id: str, kind: str) -> str | None:
    """The index file ``CURRENT`` serves if it is this model's ``kind``, else None."""
    if not root.exists("indexes", catalogue, "CURRENT"):
        return None
    pointer = current(root, catalogue)
    if pointer.get("model_id") != model_id or pointer.get("kind") != kind:
        return None
    manifest = published_manifest(root, catalogue, pointer)
    return manifest.file if manifest else f"{kind}.faiss"


def published_manifest(root: StorageRoot, catalogue: str, pointer: dict) -> IndexManifest | None:
    """The manifest of the index ``pointer`` (CURRENT) serves: the latest build's, else the one of either
    file slot, whichever has the pointer's sha256."""
    parts = index_dir(catalogue, pointer["model_id"])
    kind = pointer["kind"]
    for name in (f"{kind}.manifest.json", f"{kind}.faiss.json", f"{kind}.b.faiss.json"):
        if root.exists(*parts, name):
            manifest = IndexManifest.from_json(root.read_text(*parts, name))
            if manifest.sha256 == pointer["sha256"]:
                return manifest
    return None


def publish(root: StorageRoot, manifest: IndexManifest) -> str:
    """Point ``indexes/<catalogue>/CURRENT`` at this index (atomic replace); call only after checks pass."""
    pointer = {
        "model_id": manifest.model_id,
        "kind": manifest.kind,
        "sha256": manifest.sha256,
        "params": manifest.params,
        "published_at": datetime.now(UTC).isoformat(),
    }
    return root.write_text(json.dumps(pointer, indent=2), "indexes", manifest.catalogue, "CURRENT")


def current(root: StorageRoot, catalogue: str) -> dict:
    """The published pointer of a catalogue (model_id, kind, sha256, params)."""
    if not root.exists("indexes", catalogue, "CURRENT"):
        raise FileNotFoundError(
            f"catalogue {catalogue!r} has no published index (no {root.url('indexes', catalogue, 'CURRENT')})"
        )
    return json.loads(root.read_text("indexes", catalogue, "CURRENT"))


def read_manifest(
    root: StorageRoot, catalogue: str, model_id: str, kind: str = DEFAULT_KIND
) -> IndexManifest:
    return IndexManifest.from_json(root.read_text(*index_dir(catalogue, model_id), f"{kind}.manifest.json"))
