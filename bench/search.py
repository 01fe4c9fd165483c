"""``vitrieve bench search``: build, size, latency, throughput and recall of every index kind, against exact
search and a plain NumPy scan, on the real Fashion-MNIST database codes and on synthetic clustered codes.

Each dataset runs in a fresh process (so its peak RSS is its own); codes are streamed from Parquet into the
index builders exactly as the ``binary_index`` asset does. No Dagster in here.

Recall@k is reported two ways: ``recall`` counts a returned row as correct when its distance level still has
room in the exact top-k (i.e. ties at the k-th distance are interchangeable: any of them is a correct k-th
neighbour), ``recall_ids`` is the plain overlap of row ids with the exact top-k (ties broken by row_id); both
come from ``storage.search_eval``, which the ``retrieval_diagnostics`` asset shares.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from storage.index import kind_names
from storage.search_eval import exact_topk_numpy, recall_at_k, time_batches

REFERENCE_QPS = 5754.0  # exact search QPS of the published reference system (docs/BENCHMARKS.md)
SYNTHETIC = {"synthetic-1m": 1_000_000, "synthetic-10m": 10_000_000}
FULL_DATASETS = ("fashion-mnist", "synthetic-1m", "synthetic-10m")
ALL_KINDS = kind_names()


def _stock_heap_search(index):
    """The stock faiss call on a ``flat`` index: heap top-k, no re-ranking (ties not by row_id)."""
    index.inner.use_heap = True
    return index.index.search


#: bench-only rows, each measured just before the kind it is built as: row label -> (kind, its search call)
REFERENCE_VARIANTS = {"flat-heap": ("flat", _stock_heap_search)}


# --------------------------------------------------------------------------------------------- data


def clustered_chunks(
    n: int,
    bits: int = 64,
    centres: int = 100,
    flip_p: float = 0.03,
    seed: int = 0,
    offset: int = 0,
    chunk: int = 1 << 20,
):
    """Yield uint8 codes (m, bits/8) in chunks: each item is one of ``centres`` random centres (seeded, drawn
    with uneven Dirichlet weights) with each bit flipped independently with probability ``flip_p``. The same
    (seed, offset, chunk) give the same codes; a different ``offset`` gives fresh items of the same clusters."""
    words = -(-bits // 64)
    crng = np.random.default_rng(seed)
    centre_words = crng.integers(0, 1 << 63, (centres, words), dtype=np.int64).view(np.uint64)
    centre_words ^= crng.integers(0, 2, (centres, words), dtype=np.uint64) << np.uint64(63)
    weights = crng.dirichlet(np.full(centres, 2.0))
    cum = np.cumsum(weights)
    nbytes = bits // 8
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        rng = np.random.default_rng([seed, 7919, offset + lo])
        assign = np.minimum(np.searchsorted(cum, rng.random(m)), centres - 1)
        w = centre_words[assign].copy()
        nflip = rng.binomial(bits, flip_p, m)
        item = np.repeat(np.arange(m), nflip)
        pos = rng.integers(0, bits, int(nflip.sum()))
        np.bitwise_xor.at(
            w, (item, pos // 64), np.left_shift(np.uint64(1), (63 - pos % 64).astype(np.uint64))
        )
        yield np.ascontiguousarray(w.astype(">u8").view(np.uint8)[:, :nbytes])


def clustered_codes(
    n: int, bits: int = 64, centres: int = 100, flip_p: float = 0.03, seed: int = 0, offset: int = 0
) -> np.ndarray:
    return np.concatenate(
        list(clustered_chunks(n, bits, centres, flip_p, seed, offset)) or [np.zeros((0, bits // 8), np.uint8)]
    )


# --------------------------------------------------------------------------------------------- memory


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
    with contextlib.suppress(OSError), open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return _rss_mib()


class PeakRSS:
    """Peak resident memory per phase: the kernel's high-water mark (VmHWM) is reset at each ``start`` where
    Linux allows it (``/proc/self/clear_refs``), so a phase's peak is its own, not the process' so far."""

    def __init__(self) -> None:
        self.overall = _rss_mib()
        self.resettable = True

    def _hwm_mib(self) -> float:
        with contextlib.suppress(OSError), open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        return _rss_mib()

    def start(self) -> float:
        """Begin a phase; returns the memory already resident (what the phase did not allocate)."""
        self.overall = max(self.overall, self._hwm_mib())
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.resettable = False
        return _current_rss_mib()

    def peak(self) -> float:
        """Peak of the current phase (the process' peak so far where the mark cannot be reset)."""
        peak = self._hwm_mib()
        self.overall = max(self.overall, peak)
        return peak


# --------------------------------------------------------------------------------------------- config


@dataclass
class DatasetSpec:
    name: str
    n: int = 0  # synthetic size (0 = real)
    queries: int = 1000
    latency_queries: int = 200
    numpy_queries: int = 1000
    kinds: tuple[str, ...] = ALL_KINDS
    params: dict = field(default_factory=dict)  # kind -> params
    k: int = 100
    threads: int = 2
    large_batch: int = 10_000
    bits: int = 64
    centres: int = 0
    flip_p: float = 0.03
    seed: int = 0
    reindex_fraction: float = 0.0  # >0: after the build, add this fraction of new rows and re-index
    delete_fraction: float = 0.0  # >0: then hide this fraction of rows (search at once), then re-index
    reindex_kinds: tuple[str, ...] = ()
    search_params: dict = field(default_factory=dict)  # kind -> search-time variants, e.g. [{"nprobe": 16}]
    generator: str = "clustered"  # clustered (random centres, uniform flips) | fitted (bench.codegen)
    fit_root: str = ""  # fitted: storage root whose published codes of fit_catalogue are fitted ("": bundled)
    fit_catalogue: str = ""
    components: int = 256
    root: str = ""  # real data: storage root holding the published catalogue
    catalogue: str = "fashion-mnist"
    workdir: str = ""


def fitted_spec(name: str, n: int) -> DatasetSpec:
    """A dataset of ``n`` codes drawn from the generator fitted to real codes (``bench.codegen``): flat (exact),
    ivf and ivf-dedup, each IVF searched at several nprobe from one build, then +1 % rows and -1 % rows
    re-indexed. The IVFs have ~n/24k lists (at most 4,096: the coarse assignment of every code costs n x nlist
    distances)."""
    nlist = int(min(4096, max(16, 2 ** round(np.log2(max(n / 24_000, 1))))))
    probes = [p for p in (2, 4, 8, 16, 32, 64) if p <= nlist // 2] or [1]
    return DatasetSpec(
        name=name,
        n=n,
        generator="fitted",
        queries=1000,
        latency_queries=200 if n <= 10_000_000 else 100,
        numpy_queries=500 if n <= 1_000_000 else 10,
        large_batch=1000,
        kinds=("flat", "ivf", "ivf-dedup"),
        params={kind: {"nlist": nlist, "nprobe": probes[len(probes) // 2]} for kind in ("ivf", "ivf-dedup")},
        search_params={kind: [{"nprobe": p} for p in probes] for kind in ("ivf", "ivf-dedup")},
        reindex_fraction=0.01,
        delete_fraction=0.01,
        reindex_kinds=("flat", "ivf", "ivf-dedup"),
    )


def default_specs(
    quick: bool,
    datasets: list[str] | None,
    root: str,
    threads: int,
    k: int,
    kinds: list[str] | None = None,
    fit: str | None = None,
) -> list[DatasetSpec]:
    """The benchmark plan: ``--quick`` = small synthetic N (CI), clustered and fitted; otherwise Fashion-MNIST
    + 1M + 10M."""
    names = datasets or (["synthetic-20k", "fitted-20k"] if quick else list(FULL_DATASETS))
    specs = []
    for name in names:
        if name in ("fashion-mnist", "real") or name.startswith("real:"):
            cat = name.split(":", 1)[1] if name.startswith("real:") else "fashion-mnist"
            spec = DatasetSpec(
                name=cat,
                root=root,
                catalogue=cat,
                queries=10_000,
                latency_queries=1000,
                numpy_queries=10_000,
                large_batch=10_000,
                params={"ivf": {"nlist": 256, "nprobe": 16}, "hnsw": {"m": 16, "ef_search": 256}},
            )
            if quick:
                spec.queries, spec.latency_queries, spec.numpy_queries = 1000, 100, 300
        elif name in SYNTHETIC:
            n = SYNTHETIC[name]
            spec = DatasetSpec(
                name=name,
                n=n,
                centres=max(16, n // 10_000),
                queries=1000,
                latency_queries=200,
                numpy_queries=1000 if n <= 1_000_000 else 50,
                large_batch=1000,
                params={"ivf": {"nlist": 1024, "nprobe": 8}, "hnsw": {"m": 16, "ef_search": 200}},
            )
            if n >= 10_000_000:
                spec.kinds = ("flat", "flat-dedup", "ivf")
                spec.reindex_fraction = 0.01
                spec.reindex_kinds = ("flat", "flat-dedup", "ivf")
                spec.latency_queries = 100
        elif name.startswith("fitted-") and name[-1] in "km" and name[len("fitted-") : -1].isdigit():
            n = int(name[len("fitted-") : -1]) * (1000 if name.endswith("k") else 1_000_000)
            spec = fitted_spec(name, n)
            if fit:
                spec.fit_root, spec.fit_catalogue = root, fit
        elif name.startswith("synthetic-") and name.endswith("k"):
            n = int(name[len("synthetic-") : -1]) * 1000
            spec = DatasetSpec(
                name=name,
                n=n,
                centres=max(8, n // 1000),
                queries=500,
                latency_queries=100,
                numpy_queries=500,
                large_batch=500,
                reindex_fraction=0.01,
                reindex_kinds=("flat", "flat-dedup", "ivf"),
                params={"ivf": {"nlist": 64, "nprobe": 8}, "hnsw": {"m": 16, "ef_search": 200}},
            )
        else:
            raise ValueError(
                f"bench search: unknown dataset {name!r} (fashion-mnist, real:<catalogue>, "
                f"{', '.join(SYNTHETIC)}, synthetic-<N>k, fitted-<N>k, fitted-<N>m)"
            )
        spec.threads, spec.k = threads, k
        if kinds:
            bad = sorted(set(kinds) - set(ALL_KINDS))
            if bad:
                raise ValueError(
                    f"bench search: unknown index kinds {bad}; choose from {', '.join(ALL_KINDS)}"
                )
            spec.kinds = tuple(kinds)
            spec.reindex_kinds = tuple(x for x in spec.reindex_kinds if x in kinds)
        specs.append(spec)
    return specs


# --------------------------------------------------------------------------------------------- one dataset


def _load_real(spec: DatasetSpec):
    """(root, catalogue, model_id, database row_ids (sorted), query codes) of a published catalogue."""
    from storage.catalogue import read_catalogue
    from storage.codes import read_code_arrays
    from storage.fs import StorageRoot
    from storage.index import current

    root = StorageRoot(spec.root)
    model_id = current(root, spec.catalogue)["model_id"]
    flags, _ = read_catalogue(root, spec.catalogue, columns=["row_id", "in_database", "in_query"])
    rid = flags["row_id"].to_numpy()
    db = np.sort(rid[flags["in_database"].to_numpy(zero_copy_only=False)])
    qids = np.sort(rid[flags["in_query"].to_numpy(zero_copy_only=False)])
    _, qcodes = read_code_arrays(root, spec.catalogue, model_id, keep=qids)
    return root, spec.catalogue, model_id, db, qcodes[: spec.queries]


BUNDLED_FIT = os.path.join(os.path.dirname(__file__), "data", "openclipart-64b.npy")


def code_source(spec: DatasetSpec):
    """(chunks, facts) of the synthetic dataset: ``chunks(n, offset)`` yields its codes (the same for the same
    offset, fresh items of the same distribution for another one); facts say where the codes come from."""
    if spec.generator == "clustered":
        facts = {"generator": f"clustered: {spec.centres} random centres, bits flipped with p={spec.flip_p}"}
        return (
            lambda n, offset=0: clustered_chunks(n, spec.bits, spec.centres, spec.flip_p, spec.seed, offset),
            facts,
        )
    if spec.generator != "fitted":
        raise ValueError(f"bench search: unknown code generator {spec.generator!r} (clustered, fitted)")
    from bench.codegen import fit_code_model, fit_report

    if spec.fit_root:
        from storage.codes import read_code_arrays
        from storage.fs import StorageRoot
        from storage.index import current

        root = StorageRoot(spec.fit_root)
        model_id = current(root, spec.fit_catalogue)["model_id"]
        _, real = read_code_arrays(root, spec.fit_catalogue, model_id)
        source = f"{spec.fit_catalogue}/{model_id} ({len(real)} codes)"
    else:
        with open(BUNDLED_FIT.replace(".npy", ".json")) as f:
            about = json.load(f)
        real = np.load(BUNDLED_FIT)
        source = f"bundled {about['catalogue']}, model {about['model_id']}"
    if real.shape[1] * 8 != spec.bits:
        raise ValueError(f"bench search: the fitted codes have {real.shape[1] * 8} bits, not {spec.bits}")
    model = fit_code_model(real, spec.components, spec.seed, source)
    facts = {"generator": f"fitted: {source}"} | {
        f"fit/{k}": v for k, v in fit_report(model, real, seed=spec.seed).items() if k != "source"
    }
    return (lambda n, offset=0: model.chunks(n, spec.seed, offset)), facts


def _sample(chunks, n: int, offset: int, nbytes: int) -> np.ndarray:
    parts = list(chunks(n, offset))
    return np.concatenate(parts) if parts else np.zeros((0, nbytes), np.uint8)


def _write_synthetic(spec: DatasetSpec, workdir: str, chunks):
    """Write the synthetic database as Parquet codes (streamed, 1M rows per part) and return its handle."""
    from storage.codes import PartWriter, commit_parts
    from storage.fs import StorageRoot

    root = StorageRoot(workdir)
    cat, model_id = spec.name, f"{spec.generator}-{spec.bits}b-seed{spec.seed}"
    parts, lo = [], 0
    for chunk in chunks(spec.n):
        w = PartWriter(root, cat, model_id, spec.bits)
        w.write(np.arange(lo, lo + len(chunk), dtype=np.int64), chunk)
        parts.append(w.close())
        lo += len(chunk)
    commit_parts(root, cat, model_id, parts, spec.bits, spec.n)
    queries = _sample(chunks, spec.queries, 1 << 40, spec.bits // 8)
    return root, cat, model_id, None, queries


def run_dataset(spec: DatasetSpec) -> dict:
    """Benchmark every kind on one dataset; returns {"rows": [...], "metrics": [...], "facts": {...}, "checks": [...]}."""
    import faiss

    from storage.index import index_from_codes, load_index, publish, verify_index, write_index

    faiss.omp_set_num_threads(spec.threads)
    rss_start = _current_rss_mib()
    rss = PeakRSS()
    workdir = tempfile.mkdtemp(prefix="vitrieve-bench-", dir=spec.workdir or None)
    rows, metrics, checks, facts = [], [], [], {"dataset": spec.name, "threads": spec.threads, "k": spec.k}
    try:
        t = time.perf_counter()
        if spec.n:
            chunks, about = code_source(spec)
            facts |= about
            root, cat, model_id, keep, queries = _write_synthetic(spec, workdir, chunks)
            facts["generate_seconds"] = time.perf_counter() - t
        else:
            root, cat, model_id, keep, queries = _load_real(spec)
        facts["model_id"] = model_id
        k = spec.k
        # exact reference (flat, counting top-k): the ground truth for recall and the consistency checks
        flat, db_ids, db_codes, rep = index_from_codes(root, cat, model_id, "flat", keep_rows=keep)
        facts["n_database"] = n = len(db_ids)
        facts["read_seconds"] = rep.read_seconds
        facts["distinct_codes"] = int(len(np.unique(db_codes.view(np.uint64)))) if spec.bits == 64 else None
        facts["n_queries"] = len(queries)
        facts["distinct_queries"] = int(len(np.unique(queries.view(np.uint64)))) if spec.bits == 64 else None
        exact_d, exact_i = flat.search(queries, k)
        del flat
        gc.collect()

        # plain NumPy baseline (same run): XOR + popcount + argpartition
        nq_np = min(spec.numpy_queries, len(queries))
        t = time.perf_counter()
        np_d, np_i = exact_topk_numpy(db_ids, db_codes, queries[:nq_np], k)
        np_s = time.perf_counter() - t
        same = bool(np.array_equal(np_i, exact_i[:nq_np]) and np.array_equal(np_d, exact_d[:nq_np]))
        checks.append(("numpy baseline equals flat (ids and distances, ties by row_id)", same))
        rows.append(
            {
                "index_kind": "numpy",
                "threads": 1,
                "batch": min(nq_np, 64),
                "p50_ms": 1000 * np_s / nq_np,
                "p99_ms": 1000 * np_s / nq_np,
                "qps": nq_np / np_s,
                "recall_at_k": 1.0,
                "recall_ids": 1.0,
                "k": k,
                "n_database": n,
                "n_queries": nq_np,
                "build_s": 0.0,
                "bytes_per_image": db_codes.shape[1],
            }
        )
        numpy_qps = nq_np / np_s
        facts["rss_peak/reference"] = round(rss.peak())
        plan = []  # (row label, kind built, bench-only search call or None)
        for real_kind in spec.kinds:
            plan += [
                (label, base, how) for label, (base, how) in REFERENCE_VARIANTS.items() if base == real_kind
            ]
            plan.append((real_kind, real_kind, None))
        for kind, real_kind, stock_search in plan:
            gc.collect()
            facts[f"rss_base/{kind}"] = round(rss.start())
            params = spec.params.get(real_kind)
            index, _, _, rep = index_from_codes(root, cat, model_id, real_kind, params, keep_rows=keep)
            build_s = rep.build_seconds
            manifest = write_index(
                root, index, cat, model_id, real_kind, spec.bits, n, build_s, source=rep.source
            )
            problems = verify_index(index, db_ids, db_codes)
            checks.append((f"{kind}: verifies (ids, self at distance 0)", not problems))
            publish(root, manifest)
            del index
            gc.collect()
            index, _ = load_index(root, cat)  # as served: sha256-checked, memory-mapped where faiss allows
            search = stock_search(index) if stock_search else index.search
            search(queries[:8], k)  # warm-up (page in a memory-mapped file)
            nl = min(spec.latency_queries, len(queries))
            b1 = time_batches(search, queries[:nl], k, 1)
            big = time_batches(search, queries, k, min(spec.large_batch, len(queries)))
            got_d, got_i = search(queries, k)
            tie, ids = recall_at_k(exact_d, exact_i, got_d, got_i)
            if index.exact and not stock_search:
                checks.append(
                    (
                        f"{kind}: equals exact flat (ids and distances)",
                        bool(np.array_equal(got_i, exact_i) and np.array_equal(got_d, exact_d)),
                    )
                )
            common = {
                "index_kind": kind,
                "threads": spec.threads,
                "recall_at_k": tie,
                "recall_ids": ids,
                "k": k,
                "n_database": n,
                "build_s": build_s,
                "bytes_per_image": manifest.file_bytes / max(n, 1),
                "params": manifest.params,
            }
            rows.append({**common, **b1})
            rows.append(
                {
                    **common,
                    **big,
                    "x_numpy": big["qps"] / numpy_qps,
                    "x_reference": big["qps"] / REFERENCE_QPS,
                }
            )
            if not stock_search:
                rows += _search_variants(spec, real_kind, index, queries, exact_d, exact_i, common, numpy_qps)
            metrics += [
                (f"build_seconds/{kind}", None, build_s),
                (f"bytes_per_image/{kind}", None, common["bytes_per_image"]),
                (f"recall_ids/{kind}", k, ids),
            ]
            del index, search
            gc.collect()
            facts[f"rss_peak/{kind}"] = round(rss.peak())
        # incremental re-index: new rows arrive (1%); old rows are neither re-encoded nor re-added
        if spec.reindex_fraction and spec.n:
            rss.start()
            metrics += _reindex(spec, root, cat, model_id, n, checks, facts, chunks)
            facts["rss_peak/reindex"] = round(rss.peak())
        if spec.delete_fraction and spec.n:
            rss.start()
            found, more = _delete_reindex(spec, root, cat, model_id, queries, checks, facts)
            rows += found
            metrics += more
            facts["rss_peak/delete"] = round(rss.peak())
        rss.peak()
        facts["peak_rss_mib"] = rss.overall
        facts["peak_rss_per_phase"] = rss.resettable
        facts["start_rss_mib"] = rss_start
        facts["index_mib"] = n * (spec.bits // 8 + 8) / 2**20
        metrics += [("peak_rss_mib", None, facts["peak_rss_mib"]), ("numpy_qps", k, numpy_qps)]
        return {"rows": rows, "metrics": metrics, "facts": facts, "checks": checks, "spec": asdict(spec)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _reindex_published(spec: DatasetSpec, root, cat: str, model_id: str, kind: str, prev, keep_rows=None):
    """Re-index ``kind`` from its previous index ``prev`` (rows ``keep_rows``, None = all), verify, write and
    publish it as the ``binary_index`` asset does; returns (index, row_ids, codes, report, problems)."""
    from storage.index import index_from_codes, publish, verify_index, write_index

    index, ids, codes, rep = index_from_codes(
        root, cat, model_id, kind, spec.params.get(kind), keep_rows=keep_rows, previous=prev
    )
    problems = verify_index(index, ids, codes)
    manifest = write_index(
        root,
        index,
        cat,
        model_id,
        kind,
        spec.bits,
        len(ids),
        rep.build_seconds,
        mode=rep.mode,
        source=rep.source,
    )
    publish(root, manifest)
    return index, ids, codes, rep, problems


def _reindex(
    spec: DatasetSpec, root, cat: str, model_id: str, n: int, checks: list, facts: dict, chunks
) -> list:
    """Append ``reindex_fraction`` new rows as a new Parquet part, then re-index each kind from the published
    index (adds only the new rows) and compare with a from-scratch build."""
    from storage.codes import PartWriter, commit_parts, parts_manifest, read_code_arrays
    from storage.index import load_index

    extra = max(1, int(n * spec.reindex_fraction))
    new_codes = _sample(chunks, extra, 1 << 41, spec.bits // 8)
    w = PartWriter(root, cat, model_id, spec.bits)
    w.write(np.arange(n, n + extra, dtype=np.int64), new_codes)
    parts = parts_manifest(root, cat, model_id)["parts"] + [w.close()]
    commit_parts(root, cat, model_id, parts, spec.bits, n + extra)
    out = []
    probe = _sample(chunks, 50, 1 << 42, spec.bits // 8)
    for kind in spec.reindex_kinds:
        if kind not in spec.kinds:
            continue
        gc.collect()
        t = (
            time.perf_counter()
        )  # the index of the original rows, written by the main loop, is the previous one
        prev = load_index(root, cat, model_id, kind, mmap=False)
        index, ids, codes, rep, problems = _reindex_published(spec, root, cat, model_id, kind, prev)
        seconds = time.perf_counter() - t
        if index.incremental_add:
            checks.append(
                (
                    f"{kind}: re-index added only the {extra} new rows",
                    rep.mode == "incremental" and rep.added_rows == extra,
                )
            )
        else:
            checks.append((f"{kind}: re-index rebuilt from stored codes", rep.mode == "rebuild"))
        checks.append((f"{kind}: re-indexed index verifies", not problems))
        if index.exact:  # equal to a from-scratch exact search over old + new rows
            if n + extra <= 2_000_000:
                from storage.index import build_index

                all_ids, all_codes = read_code_arrays(root, cat, model_id)
                base = build_index(all_ids, all_codes, spec.bits, "flat")
                same = np.array_equal(index.search(probe, spec.k)[1], base.search(probe, spec.k)[1])
                del base, all_codes, all_ids
            else:  # large N: the exact kinds must agree with each other
                got = index.search(probe, spec.k)[1]
                earlier = facts.setdefault("_reindexed", {})
                same = all(np.array_equal(got, ref) for ref in earlier.values())
                earlier[kind] = got
            checks.append((f"{kind}: re-indexed results equal a from-scratch exact search", bool(same)))
        facts[f"reindex_seconds/{kind}"] = seconds
        facts[f"reindex_add_seconds/{kind}"] = rep.build_seconds
        out += [
            (f"reindex_seconds/{kind}", None, seconds),
            (f"reindex_add_seconds/{kind}", None, rep.build_seconds),
        ]
        del index, prev
        gc.collect()
    facts.pop("_reindexed", None)
    return out


def _search_variants(spec, kind, index, queries, exact_d, exact_i, common, numpy_qps) -> list[dict]:
    """Rows of ``index`` searched with each of the kind's search-time variants (``spec.search_params``) other
    than the one it was built with: one build, a recall / speed curve."""
    out, built = [], dict(index.params)
    for variant in spec.search_params.get(kind, []):
        if all(built.get(key) == value for key, value in variant.items()):
            continue
        index.params.update(variant)
        index.configure()
        label = f"{kind} " + ",".join(f"{key}={value}" for key, value in variant.items())
        nl = min(spec.latency_queries, len(queries))
        b1 = time_batches(index.search, queries[:nl], spec.k, 1)
        big = time_batches(index.search, queries, spec.k, min(spec.large_batch, len(queries)))
        tie, ids = recall_at_k(exact_d, exact_i, *index.search(queries, spec.k))
        row = {
            **common,
            "index_kind": label,
            "recall_at_k": tie,
            "recall_ids": ids,
            "params": {**built, **variant},
        }
        out += [{**row, **b1}, {**row, **big, "x_numpy": big["qps"] / numpy_qps}]
    index.params.clear()
    index.params.update(built)
    index.configure()
    return out


def _delete_reindex(spec: DatasetSpec, root, cat: str, model_id: str, queries, checks: list, facts: dict):
    """Delete ``delete_fraction`` of the rows: search each kind at once with them hidden (as tombstones are
    served), then re-index from the published index (rows dropped in place where the kind can remove).
    Returns (search rows, metrics)."""
    from storage.codes import count_codes
    from storage.index.filters import exact_search, search_rows
    from storage.index.load import load_index

    total = count_codes(root, cat, model_id)  # synthetic row_ids are 0 .. total-1
    rng = np.random.default_rng([spec.seed, 31337])
    gone = np.sort(rng.choice(total, max(1, int(total * spec.delete_fraction)), replace=False))
    keep = np.setdiff1d(np.arange(total, dtype=np.int64), gone, assume_unique=True)
    rows, metrics, hidden_exact = [], [], None
    for kind in (x for x in spec.reindex_kinds if x in spec.kinds):
        gc.collect()
        prev = load_index(root, cat, model_id, kind, mmap=False)
        index = prev[0]
        hide = lambda q, k, index=index: search_rows(index, q, k, exclude=gone)  # noqa: E731
        big = time_batches(hide, queries, spec.k, min(spec.large_batch, len(queries)))
        got_d, got_i = hide(queries, spec.k)
        checks.append((f"{kind}: no deleted row is returned once hidden", not np.isin(got_i, gone).any()))
        if index.exact and hidden_exact is None:
            if total <= 2_000_000:
                from storage.codes import read_code_arrays

                ids, codes = read_code_arrays(root, cat, model_id, keep=keep)
                same = exact_search(ids, codes, queries, spec.k)
                checks.append(
                    (
                        f"{kind}: search with rows hidden equals brute force over the rest",
                        bool(np.array_equal(same[1], got_i) and np.array_equal(same[0], got_d)),
                    )
                )
                del ids, codes
            hidden_exact = (got_d, got_i)
        tie, ids_recall = recall_at_k(*hidden_exact, got_d, got_i) if hidden_exact else (None, None)
        rows.append(
            {
                "index_kind": f"{kind} -{spec.delete_fraction:.0%} hidden",
                "threads": spec.threads,
                "recall_at_k": tie,
                "recall_ids": ids_recall,
                "k": spec.k,
                "n_database": len(keep),
                "build_s": 0.0,
                "bytes_per_image": 0.0,
                **big,
            }
        )
        t = time.perf_counter()
        index, ids, codes, rep, problems = _reindex_published(spec, root, cat, model_id, kind, prev, keep)
        seconds = time.perf_counter() - t
        checks.append((f"{kind}: re-index after deletes verifies", not problems))
        if index.removable:
            checks.append(
                (
                    f"{kind}: re-index dropped the {len(gone)} deleted rows in place",
                    rep.mode == "incremental" and rep.removed_rows == len(gone),
                )
            )
        after = index.search(queries, spec.k)
        checks.append(
            (
                f"{kind}: after the re-index, results equal the hidden-row search",
                bool(np.array_equal(after[1], got_i)) if index.exact else not np.isin(after[1], gone).any(),
            )
        )
        facts[f"delete_reindex_seconds/{kind}"] = seconds
        facts[f"delete_reindex_remove_seconds/{kind}"] = rep.build_seconds
        metrics += [
            (f"delete_reindex_seconds/{kind}", None, seconds),
            (f"hidden_search_qps/{kind}", spec.k, big["qps"]),
        ]
        del index, prev, codes, ids
        gc.collect()
    facts["deleted_rows"] = len(gone)
    return rows, metrics


def _run_isolated(spec: DatasetSpec) -> dict:
    """``run_dataset`` in a fresh process, so peak RSS and faiss threads are the dataset's own."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_dataset, spec).result()


# --------------------------------------------------------------------------------------------- driver


def machine_facts() -> dict:
    import faiss

    return {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run_bench(
    specs: list[DatasetSpec], db_path: str | None = None, isolate: bool = True, log=print
) -> list[dict]:
    """Run every dataset, record a ``bench-search`` run per dataset in DuckDB, return the results."""
    results = []
    for spec in specs:
        if not spec.n and not spec.root:
            raise ValueError(
                f"bench search: dataset {spec.name!r} needs a storage root with a published index"
            )
        log(
            f"[bench search] {spec.name}: kinds {', '.join(spec.kinds)}, k={spec.k}, threads={spec.threads} ..."
        )
        t = time.perf_counter()
        res = _run_isolated(spec) if isolate else run_dataset(spec)
        res["facts"]["wall_seconds"] = time.perf_counter() - t
        res["facts"].update(machine_facts())
        results.append(res)
        if db_path:
            res["run_id"] = record(db_path, res)
    return results


def record(db_path: str, res: dict) -> str:
    from storage.diagnostics import DiagnosticsDB, insert_metrics, insert_search_latency

    keys = (
        "index_kind",
        "threads",
        "batch",
        "p50_ms",
        "p99_ms",
        "qps",
        "recall_at_k",
        "k",
        "n_database",
        "n_queries",
    )
    rows = [{key: r.get(key) for key in keys} for r in res["rows"]]

    def write(run_id: str, con) -> None:
        insert_search_latency(con, run_id, rows)
        insert_metrics(con, run_id, [(name, k, float(v)) for name, k, v in res["metrics"] if v is not None])

    config = {
        "spec": res["spec"],
        "facts": res["facts"],
        "checks": [[c, bool(ok)] for c, ok in res["checks"]],
    }
    return DiagnosticsDB(db_path).record(
        "bench-search",
        res["facts"]["dataset"],
        res["facts"].get("model_id"),
        json.loads(json.dumps(config, default=str)),
        None,
        write,
    )


def _recall(value: float | None) -> str:
    """A recall cell; empty where there was no reference (rows hidden without an exact kind run)."""
    return "" if value is None else f"{value:.4f}"


def format_table(results: list[dict]) -> str:
    from tabulate import tabulate

    table = []
    for res in results:
        by_kind: dict[str, dict] = {}
        for r in res["rows"]:
            by_kind.setdefault(r["index_kind"], {})[
                1 if r["batch"] == 1 and r["index_kind"] != "numpy" else 0
            ] = r
        for kind, rr in by_kind.items():
            big, one = rr.get(0), rr.get(1)
            table.append(
                [
                    res["facts"]["dataset"],
                    kind,
                    f"{big['n_database']:,}",
                    f"{big['build_s']:.2f}",
                    f"{big['bytes_per_image']:.1f}",
                    f"{one['p50_ms']:.3f}" if one else "",
                    f"{one['p99_ms']:.3f}" if one else "",
                    f"{one['qps']:,.0f}" if one else "",
                    f"{big['qps']:,.0f}",
                    big["batch"],
                    _recall(big["recall_at_k"]),
                    _recall(big.get("recall_ids", 1.0)),
                    f"{big['qps'] / by_kind['numpy'][0]['qps']:.1f}",
                ]
            )
    headers = [
        "dataset",
        "kind",
        "N",
        "build s",
        "B/img",
        "p50 ms b1",
        "p99 ms b1",
        "QPS b1",
        "QPS large",
        "large batch",
        "recall@k",
        "recall@k ids",
        "x numpy",
    ]
    out = [tabulate(table, headers=headers, disable_numparse=True, stralign="right")]
    for res in results:
        f = res["facts"]
        extra = [
            f"{key}={f[key]:.2f}" if isinstance(f[key], float) else f"{key}={f[key]}"
            for key in sorted(f)
            if key not in ("dataset",)
        ]
        out.append(f"{f['dataset']}: " + ", ".join(extra))
        failed = [c for c, ok in res["checks"] if not ok]
        out.append(
            f"{f['dataset']}: checks {len(res['checks']) - len(failed)}/{len(res['checks'])} passed"
            + (f"; FAILED: {'; '.join(failed)}" if failed else "")
        )
    return "\n".join(out)


def quick_assertions(results: list[dict], min_recall: float = 0.9) -> list[str]:
    """What ``--quick`` insists on: every consistency check passes, ANN recall@k >= ``min_recall``."""
    problems = []
    for res in results:
        name = res["facts"]["dataset"]
        problems += [f"{name}: {c}" for c, ok in res["checks"] if not ok]
        for r in res["rows"]:
            if r["recall_at_k"] is not None and r["recall_at_k"] < min_recall:
                problems.append(
                    f"{name}: {r['index_kind']} recall@{r['k']} = {r['recall_at_k']:.3f} < {min_recall}"
                )
    return sorted(set(problems))


def run_search_bench(
    root: str,
    db_path: str,
    quick: bool = False,
    datasets: list[str] | None = None,
    kinds: list[str] | None = None,
    k: int = 100,
    threads: int = 2,
    min_recall: float = 0.9,
    in_process: bool = False,
    json_path: str | None = None,
    fit: str | None = None,
) -> int:
    """``vitrieve bench search``: run the plan, print the table (progress and failures on stderr), record the
    rows in ``db_path``; the exit code (2: bad dataset or kind, 1: a ``quick`` check failed)."""
    try:
        specs = default_specs(quick, datasets, root, threads, k, kinds, fit)
    except ValueError as err:
        print(f"vitrieve {err}", file=sys.stderr)
        return 2
    results = run_bench(specs, db_path, isolate=not in_process, log=lambda m: print(m, file=sys.stderr))
    print(format_table(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2, default=str)
    problems = quick_assertions(results, min_recall) if quick else []
    for problem in problems:
        print(f"vitrieve bench search: FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0
