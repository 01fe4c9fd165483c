"""Index files on a storage root: written atomically with a manifest, published by moving ``CURRENT``.

Layout: ``indexes/<catalogue>/<model_id>/<kind>.faiss`` (or ``<kind>.b.faiss``, see ``write_index``), its
companion file where the kind has one, a delta segment ``<kind>.delta.faiss`` (or ``.delta.b.faiss``) beside it
after appends (``storage.index.segments``), ``<kind>.manifest.json`` for the latest build, ``<file>.json`` per
file, and ``indexes/<catalogue>/CURRENT`` naming the served (model_id, kind, version, params): its ``sha256`` is
the manifest's ``version``, the main file's sha256 when there is no delta."""

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

FILE_FIELDS = ("file", "sha256", "companion_file", "companion_sha256")  # one index file and its companion


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
    # the delta segment written beside the main file, if any: file, sha256, companion_file, companion_sha256,
    # ntotal, bytes; ``file``/``sha256``/``companion_*`` above are then the main file's, ``ntotal`` and
    # ``file_bytes`` count both
    delta: dict = dataclasses.field(default_factory=dict)

    @property
    def main_files(self) -> dict:
        """The main file's entry, keyed as a ``delta`` entry is: file, sha256, companion_file, companion_sha256."""
        return {k: getattr(self, k) for k in FILE_FIELDS}

    @property
    def last_file(self) -> str:
        """The file this build wrote last: its delta where it has one, else its main file; ``<last_file>.json``
        is this build's manifest."""
        return self.delta["file"] if self.delta else self.file

    @property
    def files(self) -> set[str]:
        """Every file of this build, manifests included (the main file's own as well)."""
        out = {self.file, self.companion_file, f"{self.file}.json", f"{self.last_file}.json"}
        if self.delta:
            out |= {self.delta["file"], self.delta.get("companion_file", "")}
        return out - {""}

    @property
    def version(self) -> str:
        """What ``CURRENT`` names: the main file's sha256, combined with the delta's when there is one."""
        if not self.delta:
            return self.sha256
        return hashlib.sha256(f"{self.sha256}+{self.delta['sha256']}".encode()).hexdigest()

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
    from storage.index.segments import Segmented

    if params is None:
        params = index.params
    parts = index_dir(catalogue, model_id)
    published = _published_manifest_of(root, catalogue, model_id, kind)
    delta = {}
    if isinstance(index, Segmented):  # the main file stays as it was loaded; only the delta is written
        main = index.main.stored
        if main is None or main.delta:
            raise ValueError(f"{kind} index of {catalogue!r}: a delta needs the main file it was loaded from")
        delta_slot = (
            f"{kind}.delta.b"
            if published and published.delta.get("file") == f"{kind}.delta.faiss"
            else f"{kind}.delta"
        )
        written = _write_files(root, parts, index.delta, delta_slot)
        delta = {**written, "ntotal": int(index.delta.ntotal)}
        files = main.main_files
        size, faiss_class = main.file_bytes + written["bytes"], main.faiss_class
    else:
        slot = f"{kind}.b" if published and published.file == f"{kind}.faiss" else kind
        files = _write_files(root, parts, index, slot)
        size, faiss_class = files.pop("bytes"), type(index.writable()).__name__
    manifest = IndexManifest(
        kind=kind,
        bits=bits,
        ntotal=int(index.ntotal),
        codes_rows=codes_rows,
        build_seconds=round(float(build_seconds), 4),
        catalogue=catalogue,
        model_id=model_id,
        params=params or {},
        created_at=datetime.now(UTC).isoformat(),
        file_bytes=int(size),
        faiss_class=faiss_class,
        mode=mode,
        source=source or {},
        delta=delta,
        **files,
    )
    text = json.dumps(asdict(manifest), indent=2)
    root.write_text(text, *parts, f"{manifest.last_file}.json")  # for readers of the published build
    root.write_text(text, *parts, f"{kind}.manifest.json")
    root.write_text(text, *parts, "manifest.json")
    return manifest


def _write_files(root: StorageRoot, parts: tuple[str, ...], index: BinaryIndex, slot: str) -> dict:
    """Write ``index`` as ``<slot>.faiss`` (and its companion), each serialised, hashed and written in one
    pass; returns file, sha256, companion_file, companion_sha256 and bytes (both files)."""
    import faiss

    with root.atomic_open(*parts, f"{slot}.faiss") as dst:
        out = HashingWriter(dst)
        faiss.write_index_binary(index.writable(), faiss.PyCallbackIOWriter(out.write, 1 << 22))
    written = {
        "file": f"{slot}.faiss",
        "sha256": out.sha.hexdigest(),
        "companion_file": "",
        "companion_sha256": "",
    }
    size = out.size
    if index.companion_name:
        written["companion_file"] = f"{slot}.{index.companion_name}.npy"
        with root.atomic_open(*parts, written["companion_file"]) as dst:
            out = HashingWriter(dst)
            np.save(out, index.companion())
        written["companion_sha256"], size = out.sha.hexdigest(), size + out.size
    return {**written, "bytes": size}


def _published_manifest_of(
    root: StorageRoot, catalogue: str, model_id: str, kind: str
) -> IndexManifest | None:
    """The manifest of the index ``CURRENT`` serves if it is this model's ``kind``, else None (when its manifest
    is gone, one naming the default files, so that they are not overwritten)."""
    if not root.exists("indexes", catalogue, "CURRENT"):
        return None
    pointer = current(root, catalogue)
    if pointer.get("model_id") != model_id or pointer.get("kind") != kind:
        return None
    manifest = published_manifest(root, catalogue, pointer)
    if manifest is None:
        blank = dict.fromkeys(("bits", "ntotal", "codes_rows", "build_seconds"), 0)
        return IndexManifest(
            kind=kind,
            sha256="",
            catalogue=catalogue,
            model_id=model_id,
            file=f"{kind}.faiss",
            params={},
            created_at="",
            delta={"file": f"{kind}.delta.faiss", "sha256": ""},
            **blank,
        )
    return manifest


def published_manifest(root: StorageRoot, catalogue: str, pointer: dict) -> IndexManifest | None:
    """The manifest of the index ``pointer`` (CURRENT) serves: the latest build's, else the one of either
    file slot, whichever has the pointer's sha256."""
    parts = index_dir(catalogue, pointer["model_id"])
    kind = pointer["kind"]
    for slot in ("manifest", "faiss", "b.faiss", "delta.faiss", "delta.b.faiss"):
        name = f"{kind}.{slot}.json"
        if root.exists(*parts, name):
            manifest = IndexManifest.from_json(root.read_text(*parts, name))
            if manifest.version == pointer["sha256"]:
                return manifest
    return None


def publish(root: StorageRoot, manifest: IndexManifest) -> str:
    """Point ``indexes/<catalogue>/CURRENT`` at this index (atomic replace); call only after checks pass."""
    pointer = {
        "model_id": manifest.model_id,
        "kind": manifest.kind,
        "sha256": manifest.version,
        "params": manifest.params,
        "published_at": datetime.now(UTC).isoformat(),
    }
    return root.write_text(json.dumps(pointer, indent=2), "indexes", manifest.catalogue, "CURRENT")


def current(root: StorageRoot, catalogue: str) -> dict:
    """The published pointer of a catalogue (model_id, kind, sha256 = the manifest's ``version``, params)."""
    if not root.exists("indexes", catalogue, "CURRENT"):
        raise FileNotFoundError(
            f"catalogue {catalogue!r} has no published index (no {root.url('indexes', catalogue, 'CURRENT')})"
        )
    return json.loads(root.read_text("indexes", catalogue, "CURRENT"))


def read_manifest(
    root: StorageRoot, catalogue: str, model_id: str, kind: str = DEFAULT_KIND
) -> IndexManifest:
    return IndexManifest.from_json(root.read_text(*index_dir(catalogue, model_id), f"{kind}.manifest.json"))
