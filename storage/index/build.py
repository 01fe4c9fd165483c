"""Build, check and search an index of any registered kind."""

from __future__ import annotations

import numpy as np

from storage.index.base import BinaryIndex, u8
from storage.index.registry import DEFAULT_KIND, get_kind


def resolve_params(kind: str, params: dict | None, ntotal: int, bits: int, item: str = "index") -> dict:
    """Complete and check the parameters of ``kind`` for ``ntotal`` codes of ``bits`` bits; raises ValueError
    naming ``item`` and the reason."""
    cls = get_kind(kind, item)
    defaults = cls.default_params()
    given = {k: v for k, v in (params or {}).items() if v is not None}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"{item}: parameters {unknown} do not apply to kind {kind!r} "
            f"(it takes {sorted(defaults) or 'none'})"
        )
    p = {**defaults, **given}
    for k, v in p.items():
        if v is not None and (not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{item}: {kind} parameter {k}={v!r} must be a positive integer")
    if bits % 8 or bits < 8:
        raise ValueError(f"{item}: code length {bits} bits is not a positive multiple of 8")
    p = cls.derive_params(p, ntotal, bits, item)
    return {k: (int(v) if v is not None else None) for k, v in p.items()}


def build_index(
    row_ids: np.ndarray,
    codes: np.ndarray,
    bits: int,
    kind: str = DEFAULT_KIND,
    params: dict | None = None,
    item: str = "index",
    seed: int = 0,
) -> BinaryIndex:
    """A binary index of ``kind`` over ``codes`` whose ids are ``row_ids`` (params checked, see ``resolve_params``)."""
    row_ids = np.ascontiguousarray(row_ids, dtype=np.int64)
    codes = u8(codes).reshape(len(row_ids), -1) if len(row_ids) else u8(codes).reshape(0, bits // 8)
    if codes.shape[1] != bits // 8:
        raise ValueError(f"{item}: codes have {codes.shape[1]} bytes, expected {bits // 8} for {bits} bits")
    increasing = len(row_ids) < 2 or bool(np.all(row_ids[1:] > row_ids[:-1]))
    if not increasing and len(np.unique(row_ids)) != len(row_ids):
        raise ValueError(f"{item}: duplicate row_ids among the codes to index")
    p = resolve_params(kind, params, len(row_ids), bits, item)
    return get_kind(kind, item).from_codes(row_ids, codes, bits, p, increasing, seed)


def _same_rows(held: list[np.ndarray], ref: np.ndarray) -> bool:
    """Whether the row_ids in the arrays ``held`` (an index's parts) and ``ref`` are the same set, as many
    each: a mark per row_id where the ids are dense enough (linear time, no sort or copy of a 100M-row
    index), else sorted and compared."""
    if sum(len(h) for h in held) != len(ref):
        return False
    if not len(ref):
        return True
    held = [h for h in held if len(h)]
    lo = int(min(ref.min(), *(h.min() for h in held)))
    hi = int(max(ref.max(), *(h.max() for h in held)))
    if lo >= 0 and hi < 8 * len(ref) + (1 << 20):
        seen = np.zeros(hi + 1, np.bool_)
        for h in held:
            seen[h] = True
        return bool(seen[ref].all()) and int(np.count_nonzero(seen)) == len(ref)
    return bool(np.array_equal(np.sort(np.concatenate(held)), np.sort(ref)))


def verify_index(
    index: BinaryIndex,
    row_ids: np.ndarray,
    codes: np.ndarray,
    probes: int = 256,
    seed: int = 0,
    min_self_found: float = 0.99,
) -> list[str]:
    """Problems found (empty = good): the index must hold exactly the codes' rows, and sampled codes must
    find their own row at Hamming distance 0 (approximate kinds: find their code at distance 0 for at least
    ``min_self_found`` of the probes)."""
    problems = []
    if index.ntotal != len(row_ids):
        problems.append(f"index holds {index.ntotal} codes but the database has {len(row_ids)}")
    if len(row_ids) == 0:
        return problems
    if not problems and not _same_rows(index.id_parts(), np.asarray(row_ids, np.int64)):
        missing = np.setdiff1d(row_ids, index.ids())
        problems.append(
            f"index ids differ from the database rows ({len(missing)} rows missing, e.g. {missing[:3].tolist()})"
        )
    pick = np.random.default_rng(seed).choice(len(row_ids), size=min(probes, len(row_ids)), replace=False)
    return problems + index.self_probe_problems(u8(codes[pick]), np.asarray(row_ids)[pick], min_self_found)


def search(index: BinaryIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (distances, row_ids) per query, ranked by Hamming distance then row_id ascending; exact across
    ties at the k-th distance for exact kinds."""
    return index.search(queries, k)
