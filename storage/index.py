"""FAISS binary indexes with ids = row_id, written atomically with a manifest and published via CURRENT."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np

from storage.fs import StorageRoot

KINDS = ("flat",)


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


def index_dir(catalogue: str, model_id: str) -> tuple[str, ...]:
    return ("indexes", catalogue, model_id)


def build_index(row_ids: np.ndarray, codes: np.ndarray, bits: int, kind: str = "flat"):
    """A FAISS binary index over ``codes`` whose ids are ``row_ids``."""
    import faiss

    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {KINDS}")
    index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
    index.add_with_ids(np.ascontiguousarray(codes, dtype=np.uint8), np.ascontiguousarray(row_ids, dtype=np.int64))
    return index


def verify_index(index, row_ids: np.ndarray, codes: np.ndarray, probes: int = 256, seed: int = 0) -> list[str]:
    """Problems found (empty = good): ntotal must equal the codes' rows, and sampled codes must find
    their own row at Hamming distance 0."""
    problems = []
    if index.ntotal != len(row_ids):
        problems.append(f"index holds {index.ntotal} codes but the database has {len(row_ids)}")
    if len(row_ids) == 0:
        return problems
    pick = np.random.default_rng(seed).choice(len(row_ids), size=min(probes, len(row_ids)), replace=False)
    lims, dist, ids = index.range_search(np.ascontiguousarray(codes[pick]), 1)
    for j, i in enumerate(pick):
        found = ids[lims[j] : lims[j + 1]]
        if row_ids[i] not in found:
            problems.append(f"row {row_ids[i]} does not find itself at distance 0")
            break
    return problems


def write_index(root: StorageRoot, index, catalogue: str, model_id: str, kind: str, bits: int, codes_rows: int,
                build_seconds: float, params: dict | None = None) -> IndexManifest:
    """Serialise ``index`` and its manifest atomically under ``indexes/<catalogue>/<model_id>/``."""
    import faiss

    with tempfile.TemporaryDirectory(prefix="vitrieve-index-") as tmp:
        local = os.path.join(tmp, f"{kind}.faiss")
        faiss.write_index_binary(index, local)
        with open(local, "rb") as f:
            data = f.read()
    manifest = IndexManifest(
        kind=kind, bits=bits, ntotal=int(index.ntotal), codes_rows=codes_rows,
        sha256=hashlib.sha256(data).hexdigest(), build_seconds=build_seconds, catalogue=catalogue,
        model_id=model_id, file=f"{kind}.faiss", params=params or {}, created_at=datetime.now(UTC).isoformat(),
    )  # fmt: skip
    parts = index_dir(catalogue, model_id)
    root.write_bytes(data, *parts, manifest.file)
    root.write_text(json.dumps(asdict(manifest), indent=2), *parts, f"{kind}.manifest.json")
    root.write_text(json.dumps(asdict(manifest), indent=2), *parts, "manifest.json")
    return manifest


def publish(root: StorageRoot, manifest: IndexManifest) -> str:
    """Point ``indexes/<catalogue>/CURRENT`` at this index (atomic replace); call only after checks pass."""
    pointer = {"model_id": manifest.model_id, "kind": manifest.kind, "sha256": manifest.sha256,
               "published_at": datetime.now(UTC).isoformat()}  # fmt: skip
    return root.write_text(json.dumps(pointer, indent=2), "indexes", manifest.catalogue, "CURRENT")


def current(root: StorageRoot, catalogue: str) -> dict:
    """The published pointer of a catalogue (model_id, kind, sha256)."""
    if not root.exists("indexes", catalogue, "CURRENT"):
        raise FileNotFoundError(f"catalogue {catalogue!r} has no published index (no {root.url('indexes', catalogue, 'CURRENT')})")
    return json.loads(root.read_text("indexes", catalogue, "CURRENT"))


def load_index(root: StorageRoot, catalogue: str, model_id: str | None = None, kind: str | None = None):
    """Load an index (default: the published one) and its manifest; checks the file's sha256."""
    import faiss

    if model_id is None:
        pointer = current(root, catalogue)
        model_id, kind = pointer["model_id"], pointer["kind"]
    parts = index_dir(catalogue, model_id)
    manifest = IndexManifest(**json.loads(root.read_text(*parts, f"{kind or 'flat'}.manifest.json")))
    data = root.read_bytes(*parts, manifest.file)
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise ValueError(f"index file {root.url(*parts, manifest.file)} does not match its manifest's sha256")
    index = faiss.deserialize_index_binary(np.frombuffer(data, dtype=np.uint8))
    return index, manifest


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (distances, row_ids) per query, ranked by Hamming distance then row_id ascending
    (DESIGN.md), exact across ties at the k-th distance (the heap alone cuts ties arbitrarily)."""
    k = min(k, index.ntotal)
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    dist, ids = index.search(queries, k)
    if k == 0:
        return dist, ids
    out_d, out_i = np.empty_like(dist), np.empty_like(ids)
    kth = dist[:, -1]
    for radius in np.unique(kth):  # one range search per distinct k-th distance
        group = np.flatnonzero(kth == radius)
        lims, rdist, rids = index.range_search(queries[group], int(radius) + 1)
        for j, q in enumerate(group):
            d, i = rdist[lims[j] : lims[j + 1]], rids[lims[j] : lims[j + 1]]
            order = np.lexsort((i, d))[:k]
            out_d[q], out_i[q] = d[order], i[order]
    return out_d, out_i
