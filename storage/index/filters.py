"""Search restricted to some rows: deleted rows hidden, catalogue filters (``--where``), updated codes served
beside the index.

An allow-list (a ``--where`` filter) is searched by scanning the allowed rows' codes exactly, except on
``hnsw``, which searches through a faiss IDSelector over its distinct codes. Hidden rows (deletes) are dropped
from a top k + margin the index returns (the margin doubling for queries left short), or, when there are more
than ``OVERSAMPLE_MAX`` of them, filtered by an IDSelector on the kinds with ``selector_search`` (flat,
flat-dedup, hnsw; faiss 1.15 takes no selector in a binary IVF or multi-hash search, so those keep the margin). Exact kinds stay exact, ties ranked by row_id; results are as
wide as the most rows any query found (at most k): a filter matching nothing gives (nq, 0) arrays.
"""

from __future__ import annotations

import numpy as np

from storage.fs import StorageRoot
from storage.index.base import BinaryIndex, merge_top_k, u8

MISSING = np.iinfo(np.int32).max  # distance of a missing result (id -1)
# Hidden rows up to which asking the index for k + hidden rows beats an IDSelector (faiss' binary flat scan
# slows down several times with a selector); beyond it, kinds with a selector use it
OVERSAMPLE_MAX = 1024


def exact_search(
    row_ids: np.ndarray, codes: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over (row_ids, codes) ranked by (distance, row_id): faiss' counting top-k over the codes in
    row_id order keeps, per distance, the first rows in storage order."""
    import faiss

    nq, nbytes = len(queries), queries.shape[1]
    k = int(min(k, len(row_ids)))
    if k <= 0:
        return np.zeros((nq, 0), np.int32), np.zeros((nq, 0), np.int64)
    order = np.argsort(row_ids, kind="stable")
    flat = faiss.IndexBinaryFlat(8 * nbytes)
    flat.use_heap = False
    flat.add(u8(np.asarray(codes)[order]))
    dist, pos = flat.search(u8(queries), k)
    return dist, np.where(pos >= 0, np.asarray(row_ids, np.int64)[order][np.maximum(pos, 0)], -1)


def _trim(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the columns no query filled; missing results keep id -1 and distance MISSING."""
    width = int((ids >= 0).sum(axis=1).max(initial=0))
    ids = ids[:, :width]
    return np.where(ids < 0, MISSING, dist[:, :width]).astype(np.int32), ids.astype(np.int64)


def _oversampled(index: BinaryIndex, queries: np.ndarray, k: int, exclude: np.ndarray):
    """Top-k of what is left once hidden rows are dropped: ask the index for k + m rows, drop the hidden ones,
    and ask again with twice the margin m for the queries left with fewer than k (at most k + all hidden
    rows, which always leaves k). m starts at twice the hidden rows expected among k + 32, so a few hidden
    rows out of many cost one search."""
    nq, hidden = len(queries), len(exclude)
    margin = min(hidden, 2 * int(np.ceil((k + 32) * hidden / max(index.ntotal, 1))) + 32)
    dist = np.full((nq, k), MISSING, np.int32)
    ids = np.full((nq, k), -1, np.int64)
    todo = np.arange(nq)
    while len(todo):
        want = int(min(k + margin, index.ntotal))
        got_d, got_i = index.search(queries[todo], want)
        drop = (got_i < 0) | np.isin(got_i, exclude)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept rows first, in their ranked order
        kept = ~np.take_along_axis(drop, order, 1)
        full = kept.all(axis=1) | (margin >= hidden) | (want >= index.ntotal)
        done = todo[full]
        dist[done] = np.where(kept[full], np.take_along_axis(got_d, order, 1)[full], MISSING)
        ids[done] = np.where(kept[full], np.take_along_axis(got_i, order, 1)[full], -1)
        todo, margin = todo[~full], min(hidden, 2 * margin)
    return dist, ids


def search_rows(
    index: BinaryIndex,
    queries: np.ndarray,
    k: int,
    allow: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (distances, row_ids) of ``index`` among the rows in ``allow`` (None = all) and not in
    ``exclude``, merged with ``extra`` = (row_ids, codes) served beside the index (searched exactly, filtered
    by ``allow`` too; their rows belong in ``exclude`` when the index holds older codes of them)."""
    queries = u8(queries).reshape(-1, index.nbytes)
    nq = len(queries)
    exclude = np.unique(np.asarray(exclude, np.int64)) if exclude is not None and len(exclude) else None
    extra_allow = None
    if allow is not None:
        allow = extra_allow = np.unique(np.asarray(allow, np.int64))
        if exclude is not None:
            allow = np.setdiff1d(allow, exclude, assume_unique=True)
    if k <= 0 or nq == 0:
        return np.zeros((nq, 0), np.int32), np.zeros((nq, 0), np.int64)
    if allow is not None and len(allow) == 0:
        dist, ids = np.zeros((nq, 0), np.int32), np.zeros((nq, 0), np.int64)
    elif allow is None and exclude is None:
        dist, ids = index.search(queries, k)
    elif allow is not None and (index.exact or not index.selector_search):
        rows, codes = index.row_codes()  # scan the allowed rows' codes: exact, and cheaper than a selector
        pick = np.isin(rows, allow)
        dist, ids = exact_search(rows[pick], codes[pick], queries, k)
    elif index.selector_search and (allow is not None or len(exclude) > OVERSAMPLE_MAX):
        dist, ids = index.restricted(allow, exclude).search(queries, k)
    else:
        dist, ids = _oversampled(index, queries, k, exclude)
    if extra is not None and len(extra[0]):
        rows, codes = np.asarray(extra[0], np.int64), u8(extra[1]).reshape(-1, index.nbytes)
        if extra_allow is not None:
            pick = np.isin(rows, extra_allow)
            rows, codes = rows[pick], codes[pick]
        dist, ids = merge_top_k([(dist, ids), exact_search(rows, codes, queries, k)], k)
    return _trim(dist, ids)


def rows_where(root: StorageRoot, catalogue: str, predicate: str) -> np.ndarray:
    """Sorted row_ids of the catalogue rows where the SQL ``predicate`` holds, evaluated by DuckDB over the
    catalogue's columns (all but the image bytes) plus ``label`` (the first label id) and ``label_name``;
    raises ValueError with DuckDB's one-line reason for a bad predicate."""
    import duckdb
    import pyarrow as pa

    from storage.catalogue import SCHEMA, read_catalogue

    table, info = read_catalogue(root, catalogue, columns=[c for c in SCHEMA.names if c != "image"])
    labels = table["labels"].combine_chunks()
    lengths = np.diff(labels.offsets.to_numpy())
    flat = labels.flatten().to_numpy(zero_copy_only=False)
    first = np.full(len(labels), -1, np.int64)
    first[lengths > 0] = flat[labels.offsets.to_numpy()[:-1][lengths > 0]]
    has = first >= 0
    names = np.array(info.label_names + [""], dtype=object)[np.where(has, first, len(info.label_names))]
    table = table.append_column("label", pa.array(first, pa.int64(), mask=~has))
    table = table.append_column("label_name", pa.array(names.tolist(), pa.string(), mask=~has))
    sql = f"SELECT row_id FROM catalogue WHERE ({predicate}) ORDER BY row_id"
    con = duckdb.connect()
    try:
        con.register("catalogue", table)
        con.execute("SET enable_external_access = false")  # the predicate sees the catalogue, no files
        con.execute("SET lock_configuration = true")
        statements = con.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ValueError(f"--where {predicate!r}: not a single SQL predicate")
        rows = con.execute(sql).fetchnumpy()["row_id"]
    except duckdb.Error as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--where {predicate!r}: {reason}") from None
    finally:
        con.close()
    return np.asarray(rows, np.int64)


def search_published(
    root: StorageRoot,
    catalogue: str,
    queries: np.ndarray,
    k: int,
    allow: np.ndarray | None = None,
    index: BinaryIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the published index of ``catalogue`` with its tombstones applied (deleted rows hidden, updated
    codes served), restricted to ``allow`` if given. ``index``: the published index if already loaded."""
    from storage.index.load import load_index_cached
    from storage.index.publish import current
    from storage.index.tombstones import read_tombstones

    pointer = current(root, catalogue)
    if index is None:
        index, _ = load_index_cached(root, catalogue)
    stones = read_tombstones(root, catalogue)
    if stones is None:
        return search_rows(index, queries, k, allow)
    return search_rows(index, queries, k, allow, stones.hidden(pointer), stones.served(pointer))
