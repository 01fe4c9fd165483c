"""The instance protocol (``copies``): seeded transformed copies of M database images are the queries; the
ground truth of a copy is its source row and every exact duplicate of it (the same image group, e.g. the
same image sha256). Rankings: the exact Hamming scan of the whole database (ties in row_id order, as the
``flat`` index returns them) and, per re-ranking scorer (``ml.rerank``), the Hamming top ``oversample x k``
re-scored. Metrics per ranking, overall and per transform family: ``ml.instance_metrics``. No storage here:
callers hand in arrays and an image reader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from imaging.transforms import make_copies, parse_families
from ml.instance_metrics import (
    InstanceCounts,
    InstanceMetrics,
    instance_counts,
    instance_metrics,
    summarise_ties,
    tie_statistics,
)
from ml.metrics import hamming_distance_matrix
from ml.rerank import SCORERS, CandidateTable, rerank

__all__ = [
    "CopyQueries",
    "CopyResult",
    "copy_headline",
    "evaluate_copies",
    "make_copy_queries",
    "pick_sources",
    "pixel_groups",
]

TOP_K = 100  # the re-ranked lists and the tie statistics look at the top 100
CELLS = 1 << 22  # (query, database item) pairs scored at a time: bounded memory whatever the database size


def _chunk(n_database: int) -> int:
    return max(1, min(256, CELLS // max(n_database, 1)))


def pixel_groups(images: np.ndarray) -> np.ndarray:
    """Group id per image (n, ...): images with the same pixels share one (exact duplicates)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    if len(flat) == 0:
        return np.zeros(0, np.int64)
    rows = flat.view(np.dtype((np.void, flat.shape[1] * flat.itemsize))).ravel()
    return np.unique(rows, return_inverse=True)[1].astype(np.int64).ravel()


def pick_sources(n_database: int, copies: int, seed: int) -> np.ndarray:
    """Sorted positions of ``min(copies, n)`` database rows, a seeded sample."""
    m = min(int(copies), n_database)
    return np.sort(np.random.default_rng((seed, 0xC0)).permutation(n_database)[:m])


@dataclass
class CopyQueries:
    """The copies (uint8 images), their family and the database position of their source."""

    images: np.ndarray
    families: list[str]
    source: np.ndarray
    family_names: tuple[str, ...]


def make_copy_queries(
    read_images: Callable[[np.ndarray], np.ndarray], n_database: int, copies: int, transforms: str, seed: int
) -> CopyQueries:
    """Pick the sources (``pick_sources``), read them (``read_images(positions)`` -> uint8 (m, c, h, w)) and copy them."""
    names = parse_families(transforms)
    if copies < 1 or n_database < 1:
        raise ValueError(
            f"the copies protocol needs copies >= 1 and a database, got {copies} and {n_database}"
        )
    source = pick_sources(n_database, copies, seed)
    images, fams = make_copies(read_images(source), names, seed)
    return CopyQueries(images, fams, source, names)


@dataclass
class CopyResult:
    """Metrics per (scorer, family); family ``all`` is every query."""

    metrics: dict[tuple[str, str], InstanceMetrics] = field(default_factory=dict)

    def rows(self):
        from ml.instance_metrics import metric_rows

        for (scorer, family), m in self.metrics.items():
            yield from metric_rows(m, scorer, family)

    def headline(self, scorer: str = "none") -> dict[str, float]:
        """recall@1/10/100 and MRR (expected and listed rank) and the tie shares of ``scorer`` over every query."""
        m = self.metrics.get((scorer, "all"))
        if m is None:
            return {}
        out = {}
        for rule in ("expected", "listed"):
            out |= {f"copy_recall@{k}_{rule}": v for k, v in m.recall[rule].items()}
            out[f"copy_mrr_{rule}"] = m.mrr[rule]
        return out | {f"copy_{k}": v for k, v in m.ties.items()}


def copy_headline(result: CopyResult) -> dict[str, float]:
    """The leaderboard columns of the copies protocol (Hamming ranking, every family)."""
    m = result.metrics[("none", "all")]
    return {
        "copy_recall_at_1": m.recall["expected"][1],
        "copy_recall_at_1_listed": m.recall["listed"][1],
        "copy_mrr": m.mrr["expected"],
        "first_ties_ge_99": m.ties.get("first_ties_ge_99", float("nan")),
    }


def _hamming_counts(
    q_codes: np.ndarray, db_codes: np.ndarray, gt_group: np.ndarray, db_group: np.ndarray
) -> tuple[InstanceCounts, dict[str, np.ndarray]]:
    parts, stats = [], []
    step = _chunk(len(db_codes))
    for lo in range(0, len(q_codes), step):
        d = hamming_distance_matrix(q_codes[lo : lo + step], db_codes)
        rel = db_group[None, :] == gt_group[lo : lo + step, None]
        parts.append(instance_counts(d, rel))
        stats.append(tie_statistics(d, TOP_K))
    counts = parts[0]
    for p in parts[1:]:
        counts = counts.concat(p)
    return counts, {k: np.concatenate([s[k] for s in stats]) for k in stats[0]}


def _shortlist(q_codes: np.ndarray, db_codes: np.ndarray, db_ids: np.ndarray, r: int):
    """Exact Hamming top r by (distance, row_id) of each query: (distances, row_ids)."""
    r = min(r, len(db_ids))
    ds, ids = [], []
    step = _chunk(len(db_codes))
    for lo in range(0, len(q_codes), step):
        d = hamming_distance_matrix(q_codes[lo : lo + step], db_codes).astype(np.int64)
        key = (d << 40) | np.arange(len(db_ids))[None, :]
        top = (
            np.sort(np.partition(key, r - 1, axis=1)[:, :r], axis=1) if r < key.shape[1] else np.sort(key, 1)
        )
        ds.append(top >> 40)
        ids.append(db_ids[top & ((1 << 40) - 1)])
    return np.concatenate(ds), np.concatenate(ids)


def evaluate_copies(
    queries: CopyQueries,
    q_codes: np.ndarray,
    q_outputs: np.ndarray | None,
    table: CandidateTable,
    db_group: np.ndarray,
    scorers: Sequence[str] = ("none",),
    oversample: int = 4,
) -> CopyResult:
    """Metrics of the copies against the database ``table`` (row_id order; ``db_group`` marks exact duplicates).
    Scorer ``none`` ranks the whole database by Hamming distance; any other re-ranks the Hamming top
    ``oversample x 100``."""
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown:
        raise ValueError(f"re-ranking {', '.join(unknown)}: expected {', '.join(SCORERS)}")
    gt_group = db_group[queries.source]
    fams = np.asarray(queries.families)
    per_family = [("all", np.ones(len(fams), bool))] + [(f, fams == f) for f in queries.family_names]
    out = CopyResult()
    for scorer in scorers:
        if scorer == "none":
            counts, stats = _hamming_counts(q_codes, table.codes, gt_group, db_group)
        else:
            dist, cand = _shortlist(q_codes, table.codes, table.row_ids, TOP_K * oversample)
            ids, scores, _ = rerank(scorer, q_outputs, cand, dist, table, dist.shape[1])
            rel = db_group[table.positions(ids)] == gt_group[:, None]
            counts = instance_counts(scores, rel & (ids >= 0))
            stats = tie_statistics(scores, TOP_K)
        for family, mask in per_family:
            if not mask.any():
                continue
            sub = InstanceCounts(*(getattr(counts, f)[mask] for f in counts.__dataclass_fields__))
            ties = summarise_ties({k: v[mask] for k, v in stats.items()}, TOP_K)
            out.metrics[(scorer, family)] = instance_metrics(sub, ties=ties)
    return out
