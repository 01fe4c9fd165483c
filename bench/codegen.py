"""Synthetic binary codes that follow a trained model's code statistics, for index benchmarks past the size of
any real catalogue here.

The generator is a mixture of independent-bit (product-Bernoulli) components fitted to real codes: k-means
(faiss, on the codes as +-1 vectors) splits them into ``components`` groups, and each group keeps its weight and
its per-bit ones-rate (Jeffreys-smoothed). A sample picks a group by weight, then each bit by that group's rate.
It keeps what decides how hard an index's job is: where the codes crowd (class and sub-class structure, with
its uneven sizes) and how far apart neighbours are inside a crowd (the per-bit spread), which clustered random
centres with uniform bit flips do not. It drops the correlations between bits inside a group, so it is
rougher than real codes there; ``fit_report`` compares the two at the source's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: quantisation of the per-bit rates: a bit is 1 when a uniform uint16 draw falls below rate * 2**16
_RATE_SCALE = 1 << 16


@dataclass(frozen=True)
class CodeModel:
    """A fitted code generator: component weights (K,) and per-bit ones-rates (K, bits), plus where it came
    from (free text, recorded with every benchmark that uses it)."""

    weights: np.ndarray
    ones: np.ndarray
    source: str

    @property
    def bits(self) -> int:
        return int(self.ones.shape[1])

    def chunks(self, n: int, seed: int = 0, offset: int = 0, chunk: int = 1 << 20) -> Iterator[np.ndarray]:
        """Yield ``n`` packed codes (uint8, (m, bits/8), ``np.packbits`` order) in chunks of ``chunk``: the same
        (seed, offset, chunk) give the same codes, another ``offset`` fresh items of the same distribution."""
        cum = np.cumsum(self.weights / self.weights.sum())
        thresholds = np.minimum(np.round(self.ones * _RATE_SCALE), _RATE_SCALE - 1).astype(np.uint16)
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            rng = np.random.default_rng([seed, 104729, offset + lo])
            comp = np.minimum(np.searchsorted(cum, rng.random(m)), len(cum) - 1)
            draws = rng.integers(0, _RATE_SCALE, (m, self.bits), dtype=np.uint16)
            yield np.packbits(draws < thresholds[comp], axis=1)

    def sample(self, n: int, seed: int = 0, offset: int = 0) -> np.ndarray:
        parts = list(self.chunks(n, seed, offset))
        return np.concatenate(parts) if parts else np.zeros((0, self.bits // 8), np.uint8)


def fit_code_model(codes: np.ndarray, components: int = 256, seed: int = 0, source: str = "") -> CodeModel:
    """Fit the mixture to packed ``codes`` (uint8, (n, bits/8)); ``components`` is capped at n / 39, the fewest
    points per centroid faiss' k-means asks for, so every group has codes to estimate its rates from."""
    import faiss

    codes = np.ascontiguousarray(codes, np.uint8)
    n = len(codes)
    if n < 39:
        raise ValueError(f"code generator: {n} codes are too few to fit (need at least 39)")
    k = int(max(1, min(components, n // 39)))
    unpacked = np.unpackbits(codes, axis=1)
    x = unpacked.astype(np.float32) * 2 - 1
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    counts = np.bincount(assign, minlength=k).astype(np.float64)
    ones = np.zeros((k, x.shape[1]), np.float64)
    np.add.at(ones, assign, unpacked)
    keep = counts > 0
    rates = (ones[keep] + 0.5) / (counts[keep, None] + 1.0)
    return CodeModel(counts[keep], rates.astype(np.float32), source or f"{n} codes")


def neighbour_profile(queries: np.ndarray, codes: np.ndarray, ks: tuple[int, ...] = (1, 10, 100)) -> dict:
    """Mean Hamming distance from each query to its k-th nearest code (exact, faiss), per k in ``ks``, and
    the share of distinct codes."""
    import faiss

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(np.ascontiguousarray(codes))
    dist, _ = index.search(np.ascontiguousarray(queries), max(ks))
    return {f"nn{k}_hamming": float(dist[:, k - 1].mean()) for k in ks} | {
        "distinct_share": len(np.unique(codes, axis=0)) / max(len(codes), 1)
    }


def fit_report(model: CodeModel, codes: np.ndarray, queries: int = 1000, seed: int = 0) -> dict:
    """The real codes against as many generated ones: neighbour distances of held-out real queries to the real
    codes and of generated queries to the generated codes (same sizes), distinct shares, mean intra-group
    spread. The figures a benchmark built on the generator should quote beside its own."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(codes))
    nq = min(queries, len(codes) // 5)
    real_q, real_db = codes[order[:nq]], codes[order[nq:]]
    fake_db = model.sample(len(real_db), seed=seed, offset=1 << 50)
    fake_q = model.sample(nq, seed=seed, offset=1 << 51)
    real, fake = neighbour_profile(real_q, real_db), neighbour_profile(fake_q, fake_db)
    spread = float((2 * model.ones * (1 - model.ones)).sum(axis=1) @ (model.weights / model.weights.sum()))
    return {
        "components": len(model.weights),
        "source": model.source,
        "group_spread_hamming": spread,
        **{f"real_{k}": v for k, v in real.items()},
        **{f"generated_{k}": v for k, v in fake.items()},
    }
