"""A main index and a small delta of the same kind, searched as one: appends write only the delta.

Re-indexing a large catalogue after a small append used to load, extend and rewrite the whole index file (1.5 GB
at 100M codes). Kinds that can start an empty index sharing the main one's trained structure (``empty_like``:
``ivf`` and ``ivf-dedup`` share the coarse quantizer, so a query probes the same lists in both) instead put the
new rows in a delta, written beside the untouched main file; the delta grows with each append until it holds
more than ``DELTA_MAX_FRACTION`` of the main's rows, then the re-index folds it into the main and writes that
whole (an LSM tree with one level). Deletes, updates and rebuilds fold it first.

A search asks each part for its top k and merges them by (distance, row_id): exact kinds stay exact, and an
approximate kind returns what each part returns.
"""

from __future__ import annotations

import numpy as np

from storage.index.base import BinaryIndex, merge_top_k

DELTA_MAX_FRACTION = 0.1  # the delta is folded into the main index past this share of its rows


class Segmented(BinaryIndex):
    """``main`` and ``delta`` (same kind, bits and parameters) as one index; new rows go to the delta."""

    def __init__(self, main: BinaryIndex, delta: BinaryIndex):
        if main.kind != delta.kind or main.bits != delta.bits:
            raise ValueError(
                f"segments must share kind and bits, got {main.kind}/{main.bits} and {delta.kind}/{delta.bits}"
            )
        self.main, self.delta = main, delta
        self.kind, self.exact = main.kind, main.exact
        self.removable, self.selector_search = main.removable, main.selector_search
        self.incremental_add, self.supports_delta = main.incremental_add, main.supports_delta
        super().__init__(None, main.bits, main.params)
        self.params = main.params  # one dict: a search-time change (nprobe) reaches both parts in configure()

    def configure(self) -> None:
        self.delta.params.update(self.params)
        for part in (self.main, self.delta):
            part.configure()

    @property
    def ntotal(self) -> int:
        return self.main.ntotal + self.delta.ntotal

    def ids(self) -> np.ndarray:
        return np.concatenate(self.id_parts())

    def id_parts(self) -> list[np.ndarray]:
        return self.main.id_parts() + self.delta.id_parts()

    def row_codes(self) -> tuple[np.ndarray, np.ndarray]:
        (a, ca), (b, cb) = self.main.row_codes(), self.delta.row_codes()
        return np.concatenate((a, b)), np.concatenate((ca, cb))

    def add(self, row_ids: np.ndarray, codes: np.ndarray) -> None:
        self.delta.add(row_ids, codes)

    def remove(self, row_ids: np.ndarray) -> int:
        return self.main.remove(row_ids) + self.delta.remove(row_ids)

    def _search_batch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for part in (self.main, self.delta):
            if part.ntotal:
                part.query_batch, part.threads = self.query_batch, self.threads  # as set on the whole
                parts.append(part.search(queries, k))
        return parts[0] if len(parts) == 1 else merge_top_k(parts, k)

    def range_search(self, queries: np.ndarray, radius: int):
        (la, da, ia), (lb, db, ib) = (p.range_search(queries, radius) for p in (self.main, self.delta))
        la, lb = np.asarray(la, np.int64), np.asarray(lb, np.int64)
        # per query: its main results, then its delta results
        owner = np.concatenate(
            (np.repeat(np.arange(len(la) - 1), np.diff(la)), np.repeat(np.arange(len(lb) - 1), np.diff(lb)))
        )
        order = np.argsort(owner, kind="stable")
        lims = la + lb
        return lims, np.concatenate((da, db))[order], np.concatenate((ia, ib))[order]

    def restricted(self, allow: np.ndarray | None, exclude: np.ndarray | None) -> BinaryIndex:
        return Segmented(self.main.restricted(allow, exclude), self.delta.restricted(allow, exclude))

    def memory_bytes(self) -> int:
        return self.main.memory_bytes() + self.delta.memory_bytes()

    def writable(self):
        raise TypeError("a segmented index is written as its parts (storage.index.publish.write_index)")

    def folded(self) -> BinaryIndex:
        """The main index holding the delta's rows too (the delta's codes added to it)."""
        if self.delta.ntotal:
            self.main.add(*self.delta.row_codes())
        return self.main


def unsegmented(index: BinaryIndex) -> BinaryIndex:
    """``index`` as one index: a segmented one folded, any other as it is."""
    return index.folded() if isinstance(index, Segmented) else index


def append_rows(prev: BinaryIndex, row_ids: np.ndarray, codes: np.ndarray) -> BinaryIndex:
    """``prev`` with rows appended: into a delta beside the main index where the kind allows one and the delta
    stays within ``DELTA_MAX_FRACTION`` of the main's rows, else into the (folded) index itself."""
    main = prev.main if isinstance(prev, Segmented) else prev
    held = prev.delta.ntotal if isinstance(prev, Segmented) else 0
    if main.supports_delta and held + len(row_ids) <= DELTA_MAX_FRACTION * main.ntotal:
        out = prev if isinstance(prev, Segmented) else Segmented(prev, prev.empty_like())
    else:
        out = unsegmented(prev)
    if len(row_ids):
        out.add(row_ids, codes)
    return out
