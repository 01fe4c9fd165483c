"""Deletes and updates of a catalogue's search results without a rebuild: tombstones next to the published index.

``indexes/<catalogue>/TOMBSTONES.npz`` (written atomically) holds the rows deleted from search and the rows
whose code was replaced (update = delete + add of the new code). Searches read it with ``CURRENT``, so a
change is visible at once: hidden rows are filtered out (``storage/index/filters.py``) and updated codes are
searched exactly beside the index. The next re-index (``binary_index``) compacts them: deleted rows are left
out of the new index (dropped in place with faiss ``remove_ids`` where the kind is ``removable``), updated
codes replace the stored ones, and the file then records that the published index already holds them.

Deleted rows stay deleted while they are database rows of the catalogue; an update lasts while the model is
unchanged and the stored code is still the one it replaced (re-encoding a changed image supersedes it).
One writer at a time: a delete racing another delete may lose one of them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace

import numpy as np

from storage.fs import StorageRoot
from storage.index.publish import IndexManifest, current

TOMBSTONES = "TOMBSTONES.npz"


def _rows(a) -> np.ndarray:
    return np.unique(np.asarray(a, np.int64).ravel())


@dataclass
class Tombstones:
    """Changes of a catalogue's search results since (or beside) its published index."""

    model_id: str
    bits: int
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted row_ids
    updated: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted row_ids
    codes: np.ndarray | None = None  # (len(updated), bits/8) uint8: their new codes
    base: np.ndarray | None = None  # the stored codes they replaced
    index_sha256: str = ""  # the published index that holds every change but ``pending`` ("" = none)
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        empty = np.zeros((len(self.updated), self.bits // 8), np.uint8)
        self.codes = empty if self.codes is None else np.asarray(self.codes, np.uint8)
        self.base = empty.copy() if self.base is None else np.asarray(self.base, np.uint8)

    # - what a search applies
    def hidden(self, pointer: dict) -> np.ndarray:
        """Rows the index served by ``pointer`` (CURRENT) may hold but must not return."""
        if pointer.get("model_id") != self.model_id:  # another model's index: its codes of updated rows stand
            return self.deleted
        if pointer.get("sha256") == self.index_sha256:
            return self.pending
        return np.union1d(self.deleted, self.updated)

    def served(self, pointer: dict) -> tuple[np.ndarray, np.ndarray]:
        """(row_ids, codes) of the updated rows to search beside the index served by ``pointer``."""
        if pointer.get("model_id") != self.model_id:
            return np.zeros(0, np.int64), np.zeros((0, self.bits // 8), np.uint8)
        pick = np.isin(self.updated, self.hidden(pointer))
        return self.updated[pick], self.codes[pick]

    def held(self, pointer: dict, row_ids: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row_ids, codes) the index served by ``pointer`` holds, from the database's stored rows and codes
        (sorted by row_id): the compacted deletes left out, the compacted updates in place."""
        if pointer.get("model_id") != self.model_id or pointer.get("sha256") != self.index_sha256:
            return row_ids, codes  # an index these tombstones were never compacted into
        keep = ~np.isin(row_ids, np.setdiff1d(self.deleted, self.pending))
        row_ids, codes = row_ids[keep], np.array(codes[keep])
        done = ~np.isin(self.updated, self.pending)
        rows, new = self.updated[done], self.codes[done]
        pos = np.searchsorted(row_ids, rows)
        hit = pos < len(row_ids)
        hit[hit] = row_ids[pos[hit]] == rows[hit]
        codes[pos[hit]] = new[hit]
        return row_ids, codes

    # - changes
    def _touch(self, pointer: dict, rows: np.ndarray) -> Tombstones:
        """The tombstones after changing ``rows`` on top of the index served by ``pointer``."""
        same = pointer.get("sha256") == self.index_sha256 and pointer.get("model_id") == self.model_id
        return replace(
            self,
            index_sha256=self.index_sha256 if same else "",
            pending=np.union1d(self.pending, rows) if same else np.zeros(0, np.int64),
        )

    def _without_updates(self, rows: np.ndarray) -> Tombstones:
        keep = ~np.isin(self.updated, rows)
        return replace(self, updated=self.updated[keep], codes=self.codes[keep], base=self.base[keep])

    # - the re-index
    def keep(self, database_rows: np.ndarray) -> np.ndarray:
        """The database rows a new index should hold (sorted)."""
        return np.setdiff1d(database_rows, self.deleted, assume_unique=True)

    def overrides(self, root: StorageRoot, catalogue: str, model_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(row_ids, codes) the re-index puts in place of the stored codes: updates of ``model_id`` whose stored
        code is still the one they replaced."""
        from storage.codes import read_code_arrays

        if model_id != self.model_id or not len(self.updated):
            return np.zeros(0, np.int64), np.zeros((0, self.bits // 8), np.uint8)
        rows, stored = read_code_arrays(root, catalogue, model_id, keep=self.updated)
        pos = np.searchsorted(self.updated, rows)
        still = np.all(stored == self.base[pos], axis=1)
        return rows[still], self.codes[pos[still]]


def read_tombstones(root: StorageRoot, catalogue: str) -> Tombstones | None:
    """The catalogue's tombstones, or None if it has none."""
    if not root.exists("indexes", catalogue, TOMBSTONES):
        return None
    try:
        with np.load(io.BytesIO(root.read_bytes("indexes", catalogue, TOMBSTONES)), allow_pickle=False) as z:
            data = {name: z[name] for name in z.files}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{root.url('indexes', catalogue, TOMBSTONES)}: unreadable ({err})") from None
    return Tombstones(
        model_id=str(data["model_id"]),
        bits=int(data["bits"]),
        deleted=data["deleted"].astype(np.int64),
        updated=data["updated"].astype(np.int64),
        codes=data["codes"],
        base=data["base"],
        index_sha256=str(data["index_sha256"]),
        pending=data["pending"].astype(np.int64),
    )


def write_tombstones(root: StorageRoot, catalogue: str, stones: Tombstones) -> str:
    """Replace the catalogue's tombstones atomically; returns the file's URL."""
    buf = io.BytesIO()
    np.savez(
        buf,
        model_id=np.array(stones.model_id),
        bits=np.array(stones.bits),
        deleted=stones.deleted,
        updated=stones.updated,
        codes=stones.codes,
        base=stones.base,
        index_sha256=np.array(stones.index_sha256),
        pending=stones.pending,
    )
    return root.write_bytes(buf.getvalue(), "indexes", catalogue, TOMBSTONES)


def _start(root: StorageRoot, catalogue: str) -> tuple[dict, Tombstones]:
    """(CURRENT, the tombstones to change); a model change drops the old model's updates."""
    from storage.codes import read_codes_meta

    pointer = current(root, catalogue)
    model_id = pointer["model_id"]
    stones = read_tombstones(root, catalogue)
    if stones is None:  # the published index holds every row: it is the one later changes apply on
        bits = read_codes_meta(root, catalogue, model_id).bits
        stones = Tombstones(model_id=model_id, bits=bits, index_sha256=pointer["sha256"])
    elif stones.model_id != model_id:  # unknown which deletes the index holds: all are hidden
        bits = read_codes_meta(root, catalogue, model_id).bits
        stones = Tombstones(model_id=model_id, bits=bits, deleted=stones.deleted)
    return pointer, stones


def _catalogue_rows(root: StorageRoot, catalogue: str, rows: np.ndarray, database: bool) -> None:
    from storage.catalogue import read_catalogue

    table, _ = read_catalogue(root, catalogue, columns=["row_id", "in_database"])
    known = table["row_id"].to_numpy()
    if database:
        known = known[table["in_database"].to_numpy(zero_copy_only=False)]
    unknown = np.setdiff1d(rows, known)
    if len(unknown):
        what = "database rows" if database else "rows"
        raise ValueError(
            f"catalogue {catalogue!r}: row ids {unknown[:5].tolist()} are not {what} of it "
            f"({len(unknown)} of {len(rows)})"
        )


def delete_rows(root: StorageRoot, catalogue: str, row_ids) -> Tombstones:
    """Hide ``row_ids`` from every later search of ``catalogue`` (at once; compacted at the next re-index)."""
    rows = _rows(row_ids)
    _catalogue_rows(root, catalogue, rows, database=False)
    pointer, stones = _start(root, catalogue)
    stones = stones._without_updates(rows)._touch(pointer, rows)
    stones = replace(stones, deleted=np.union1d(stones.deleted, rows))
    write_tombstones(root, catalogue, stones)
    return stones


def update_rows(root: StorageRoot, catalogue: str, row_ids, codes: np.ndarray) -> Tombstones:
    """Replace the codes of database rows ``row_ids`` (already encoded by the published model) with ``codes``
    for every later search: delete + add of the new code, at once; merged into the index at the re-index."""
    from storage.codes import read_code_arrays

    given = np.asarray(row_ids, np.int64).ravel()
    rows, first = np.unique(given, return_index=True)
    if len(rows) != len(given):
        raise ValueError(f"catalogue {catalogue!r}: update_rows got a row id more than once")
    _catalogue_rows(root, catalogue, rows, database=True)
    pointer, stones = _start(root, catalogue)
    nbytes = stones.bits // 8
    codes = (
        np.asarray(codes, np.uint8).reshape(len(given), -1)[first]
        if len(given)
        else np.zeros((0, nbytes), np.uint8)
    )
    if codes.shape[1] != nbytes:
        raise ValueError(
            f"catalogue {catalogue!r}: codes have {codes.shape[1]} bytes, the published model "
            f"{stones.model_id} has {nbytes}"
        )
    stored_rows, stored = read_code_arrays(root, catalogue, stones.model_id, keep=rows)
    if len(stored_rows) != len(rows):
        missing = np.setdiff1d(rows, stored_rows)[:5].tolist()
        raise ValueError(f"catalogue {catalogue!r}: rows {missing} have no stored code to update yet")
    stones = stones._without_updates(rows)._touch(pointer, rows)
    updated = np.concatenate((stones.updated, rows))
    order = np.argsort(updated, kind="stable")
    stones = replace(
        stones,
        deleted=np.setdiff1d(stones.deleted, rows),
        updated=updated[order],
        codes=np.concatenate((stones.codes, codes.astype(np.uint8)))[order],
        base=np.concatenate((stones.base, stored))[order],
    )
    write_tombstones(root, catalogue, stones)
    return stones


def compact_tombstones(
    root: StorageRoot,
    catalogue: str,
    snapshot: Tombstones,
    manifest: IndexManifest,
    database_rows: np.ndarray,
    applied: np.ndarray,
) -> Tombstones | None:
    """After a re-index published ``manifest`` from ``snapshot`` (its deletes left out, the updates in
    ``applied`` merged): record that this index holds them, keep only what a later re-index still needs
    (deletes of database rows, updates of this model still applied) and leave what changed since as pending."""
    now = read_tombstones(root, catalogue)
    if now is None:
        return None
    later = np.setdiff1d(now.deleted, snapshot.deleted)
    was = np.searchsorted(snapshot.updated, now.updated)
    was_ok = was < len(snapshot.updated)
    same = np.zeros(len(now.updated), bool)
    same[was_ok] = (snapshot.updated[was[was_ok]] == now.updated[was_ok]) & np.all(
        snapshot.codes[was[was_ok]] == now.codes[was_ok], axis=1
    )
    if now.model_id != manifest.model_id:  # a new model: its codes come from the store, deletes carry over
        stones = Tombstones(
            model_id=manifest.model_id,
            bits=manifest.bits,
            deleted=np.intersect1d(now.deleted, database_rows),
            index_sha256=manifest.version,
            pending=later,
        )
        write_tombstones(root, catalogue, stones)
        return stones
    later = np.union1d(later, now.updated[~same])
    keep_update = np.isin(now.updated, applied) | ~same
    stones = replace(
        now._without_updates(now.updated[~keep_update]),
        deleted=np.intersect1d(now.deleted, database_rows),
        index_sha256=manifest.version,
        pending=later,
    )
    write_tombstones(root, catalogue, stones)
    return stones
