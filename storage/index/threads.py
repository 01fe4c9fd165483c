"""Search threads: a process-wide thread count, and a thread pool that scans chunks of queries."""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np

ENV_THREADS = "VITRIEVE_SEARCH_THREADS"
ENV_BATCH = "VITRIEVE_SEARCH_BATCH"
DEFAULT_QUERY_BATCH = 256

_THREADS: list[int] = []  # search threads set for this process (empty = faiss' OpenMP default)


def set_search_threads(threads: int | None = None) -> int:
    """Threads for searching and building (``threads`` or $VITRIEVE_SEARCH_THREADS; 0/None = leave as is,
    default = faiss' OpenMP thread count); returns the count in force."""
    import faiss

    threads = threads or int(os.environ.get(ENV_THREADS, "0") or 0)
    if threads:
        faiss.omp_set_num_threads(int(threads))
        _THREADS[:] = [int(threads)]
    return search_threads()


def search_threads() -> int:
    """Threads a search uses: set_search_threads(), else $VITRIEVE_SEARCH_THREADS, else faiss' OpenMP count."""
    import faiss

    return (
        _THREADS[0]
        if _THREADS
        else (int(os.environ.get(ENV_THREADS, "0") or 0) or faiss.omp_get_max_threads())
    )


def default_query_batch() -> int:
    return int(os.environ.get(ENV_BATCH, "0") or 0) or DEFAULT_QUERY_BATCH


@functools.lru_cache(maxsize=4)
def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(threads, thread_name_prefix="vitrieve-search", initializer=_one_omp_thread)


def _one_omp_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # OpenMP's thread count is per OS thread: the pool's workers scan alone


@contextlib.contextmanager
def omp_threads(n: int):
    """OpenMP threads of the calling OS thread for the block (the setting is per thread in libgomp)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def run_chunked(fn, queries: np.ndarray, k: int, threads: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``fn(queries, k)`` over chunks of ``chunk`` queries on ``threads`` pool threads (faiss and NumPy release
    the GIL). Dynamic chunks instead of OpenMP's static split keep both cores useful when another process
    takes one: 2-thread OpenMP search then loses up to 10x, the pool degrades gracefully."""
    if threads <= 1 or len(queries) <= 1:  # one scanning thread: no OpenMP team to wait for
        with omp_threads(1):
            return fn(queries, k)
    chunk = max(1, min(chunk, -(-len(queries) // threads)))
    pieces = [queries[lo : lo + chunk] for lo in range(0, len(queries), chunk)]
    parts = list(_pool(threads).map(lambda q: fn(q, k), pieces))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
