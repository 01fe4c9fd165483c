"""Index from the stored codes: rebuilt, or extended with only the new rows of a previous index."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from storage.fs import StorageRoot
from storage.index.base import BinaryIndex
from storage.index.build import build_index, resolve_params
from storage.index.publish import IndexManifest
from storage.index.registry import DEFAULT_KIND
from storage.index.segments import append_rows, unsegmented


@dataclass
class BuildReport:
    mode: str  # rebuild | incremental | unchanged
    rows: int
    added_rows: int
    read_seconds: float
    build_seconds: float
    removed_rows: int = 0  # rows dropped in place (faiss remove_ids) from the previous index
    source: dict = field(default_factory=dict)  # what the index holds, for the next re-index (build_source)


def _apply_overrides(row_ids, codes, overrides):
    """Codes with the ``overrides`` (row_ids, codes) put in place for the rows they name that are present."""
    if overrides is None or not len(overrides[0]):
        return codes
    o_rows, o_codes = np.asarray(overrides[0], np.int64), np.asarray(overrides[1], np.uint8)
    pos = np.searchsorted(row_ids, o_rows)
    hit = pos < len(row_ids)
    hit[hit] = row_ids[pos[hit]] == o_rows[hit]
    codes = codes.copy()
    codes[pos[hit]] = o_codes[hit]
    return codes


def _positions(row_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each ``wanted`` row_id in the sorted ``row_ids`` (-1 where absent): a row_id -> position
    table where the row_ids are dense enough (linear time), else a binary search."""
    if not len(row_ids) or not len(wanted):
        return np.full(len(wanted), -1, np.int64)
    lo, hi = int(row_ids[0]), int(row_ids[-1])
    if lo >= 0 and hi < 8 * len(row_ids) + (1 << 20):
        table = np.full(hi + 1, -1, np.int64)
        table[row_ids] = np.arange(len(row_ids))
        inside = (wanted >= 0) & (wanted <= hi)
        out = np.full(len(wanted), -1, np.int64)
        out[inside] = table[wanted[inside]]
        return out
    pos = np.minimum(np.searchsorted(row_ids, wanted), len(row_ids) - 1)
    return np.where(row_ids[pos] == wanted, pos, -1)


def _same_codes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise equality of two (n, nbytes) uint8 code arrays."""
    if a.shape[1] == 8:
        return (
            np.ascontiguousarray(a).view(np.uint64).ravel() == np.ascontiguousarray(b).view(np.uint64).ravel()
        )
    return np.all(a == b, axis=1)


def _changed_codes(prev: BinaryIndex, row_ids: np.ndarray, codes: np.ndarray) -> np.ndarray | None:
    """Rows ``prev`` holds with another code than ``codes`` (a changed image re-encoded, an update); None
    when its kind cannot list its codes."""
    try:
        held, held_codes = prev.row_codes()
    except NotImplementedError:
        return None
    held = np.asarray(held)
    pos = _positions(row_ids, held)
    there = np.flatnonzero(pos >= 0)
    differs = ~_same_codes(np.asarray(held_codes)[there], codes[pos[there]])
    return np.sort(held[there[differs]])


def kept_digests(keep_rows: np.ndarray | None, tops: list[int]) -> dict[int, str]:
    """sha256 of the kept rows (sorted row_ids; None = every row) up to each row_id of ``tops``, hashed in one
    pass over ``keep_rows`` (the prefixes share it)."""
    if keep_rows is None:
        return dict.fromkeys(tops, "all")
    rows = np.ascontiguousarray(keep_rows, np.int64)
    ends = {top: int(np.searchsorted(rows, top, "right")) for top in tops}
    sha, done, out = hashlib.sha256(), 0, {}
    for top in sorted(ends, key=ends.__getitem__):
        sha.update(rows[done : ends[top]])
        done = ends[top]
        out[top] = sha.copy().hexdigest()
    return out


def build_source(parts: dict, top: int, keep_sha256: str) -> dict:
    """What an index holds: the code parts read (name -> sha256), its largest row_id (-1: none) and the digest
    of the rows it was restricted to up to there (``kept_digests``)."""
    return {"parts": parts, "max_row_id": top, "keep_sha256": keep_sha256}


def _appended(
    source: dict, ntotal: int, parts: dict, keep_sha256: str, row_ids: np.ndarray
) -> np.ndarray | None:
    """The rows of ``row_ids`` a previous index built from ``source`` lacks, when they are only appended
    rows: its parts are all live and unchanged, the rows it was restricted to are the same up to its largest
    row_id (``keep_sha256``: their digest now), and it holds as many rows up to there as there are now, so it
    holds exactly those with their codes and the new rows are those past it. None when this cannot be shown
    (then codes are compared)."""
    if not source.get("parts") or any(parts.get(name) != sha for name, sha in source["parts"].items()):
        return None
    cut = int(np.searchsorted(row_ids, int(source["max_row_id"]), "right"))
    if cut != ntotal or keep_sha256 != source.get("keep_sha256"):
        return None
    return np.arange(cut, len(row_ids))


def index_from_codes(
    root: StorageRoot,
    catalogue: str,
    model_id: str,
    kind: str = DEFAULT_KIND,
    params: dict | None = None,
    keep_rows: np.ndarray | None = None,
    previous: tuple[BinaryIndex, IndexManifest] | None = None,
    item: str | None = None,
    overrides: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[BinaryIndex, np.ndarray, np.ndarray, BuildReport]:
    """Build (or extend) an index from the stored codes of (catalogue, model), streamed from Parquet in batches.

    ``keep_rows`` (sorted row_ids) restricts the index to those rows (the database less deleted rows);
    ``overrides`` (row_ids, codes) replace the stored codes of those rows (updates). With ``previous`` (an
    index of the same model, kind and parameters, loaded with ``mmap=False``), rows it already holds are not
    re-added: when it holds exactly the rows with their codes, it is returned as is ("unchanged"); when it
    holds a subset, only the new rows are added ("incremental"; into a delta segment where the kind allows,
    ``storage.index.segments``); rows it holds that are gone or whose code
    changed are dropped in place where the kind is ``removable`` ("incremental"), else it is rebuilt. Codes are
    read, never re-encoded. Returns (index, row_ids, codes, report) where row_ids/codes are the indexed rows."""
    from storage.codes import parts_manifest, read_code_arrays, read_codes_meta
    from storage.part_checks import CHECKS

    item = item or f"binary_index of {catalogue!r}"
    t0 = time.perf_counter()
    bits = read_codes_meta(root, catalogue, model_id).bits
    row_ids, codes = read_code_arrays(root, catalogue, model_id, keep=keep_rows)
    codes = _apply_overrides(row_ids, codes, overrides)
    live = parts_manifest(root, catalogue, model_id) or {}
    parts = {name: (live.get(CHECKS) or {}).get(name, {}).get("sha256") for name in live.get("parts", [])}
    top = int(row_ids[-1]) if len(row_ids) else -1
    prev_top = int((previous[1].source or {}).get("max_row_id", top)) if previous is not None else top
    digests = kept_digests(keep_rows, [top, prev_top])
    source = build_source(parts, top, digests[top])
    read_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if previous is not None:
        prev, manifest = previous
        same = (
            manifest.model_id == model_id
            and manifest.kind == kind
            and manifest.bits == bits
            and manifest.params
            == resolve_params(kind, {**manifest.params, **(params or {})}, len(row_ids), bits, item)
        )
        appended = None
        if same and (overrides is None or not len(overrides[0])) and prev.incremental_add:
            appended = _appended(manifest.source, int(prev.ntotal), parts, digests[prev_top], row_ids)
        if appended is not None:  # only rows past the previous index: add them (to a delta), compare nothing
            index = append_rows(prev, row_ids[appended], codes[appended]) if len(appended) else prev
            mode = "incremental" if len(appended) else "unchanged"
            report = BuildReport(
                mode, len(row_ids), len(appended), read_s, time.perf_counter() - t1, source=source
            )
            return index, row_ids, codes, report
        if same:
            prev = unsegmented(prev)  # deletes and updates apply to one index: the delta is folded in
        changed = _changed_codes(prev, row_ids, codes) if same else None
        if changed is not None:  # else rebuild: the codes it holds are unknown
            old = np.sort(prev.ids())
            stale = np.union1d(np.setdiff1d(old, row_ids, assume_unique=True), changed)
            new = ~np.isin(row_ids, np.setdiff1d(old, stale, assume_unique=True), assume_unique=True)
            if not len(stale) and not new.any():
                return (
                    prev,
                    row_ids,
                    codes,
                    BuildReport("unchanged", len(row_ids), 0, read_s, 0.0, source=source),
                )
            # kinds that re-sort every row on add, or cannot remove, build from the codes instead
            if (not len(stale) or prev.removable) and (not new.any() or prev.incremental_add):
                removed = prev.remove(stale) if len(stale) else 0
                if new.any():
                    prev.add(row_ids[new], codes[new])
                report = BuildReport(
                    "incremental",
                    len(row_ids),
                    int(new.sum()),
                    read_s,
                    time.perf_counter() - t1,
                    removed,
                    source,
                )
                return prev, row_ids, codes, report
    index = build_index(row_ids, codes, bits, kind, params, item)
    return (
        index,
        row_ids,
        codes,
        BuildReport("rebuild", len(row_ids), len(row_ids), read_s, time.perf_counter() - t1, source=source),
    )
