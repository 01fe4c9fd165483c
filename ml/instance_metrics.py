"""Instance retrieval metrics (copy detection) that are honest about ties. NumPy only.

Each query has a ground truth: its source database row and any exact duplicates of it. A ranking is a score
per database item (lower is better: a Hamming distance, a re-ranking score, ``inf`` for an item a re-ranked
list never returned) in *listed order*: for a full Hamming scan the columns are the database in row_id order,
for a re-ranked list the columns are the list itself. With ``s*`` the best score of a ground-truth item,
``less`` the non-ground-truth items scoring below ``s*``, ``t`` those scoring exactly ``s*`` and ``g`` the
ground-truth items at ``s*``, the rank of the source (of its first ground-truth item) is, by tie rule:

* ``optimistic``: ``1 + less`` (every tie broken in the query's favour; an upper bound, for reference);
* ``pessimistic``: ``1 + less + t`` (every tie broken against it);
* ``expected``: the rank under a uniformly random order of the tied items: the metrics are exact
  expectations (recall@k is ``P(rank <= k)``, MRR is ``E[1 / rank]``), not the metric of the mean rank;
* ``listed``: the rank in listed order, i.e. what a search returns today (ties by row_id for a Hamming scan).

A query whose ground truth all scores ``inf`` (never returned) has rank ``inf`` under every rule.
Tie statistics: the share of queries whose first result ties with >= 10 / >= 99 others (items with the same
best score), and the mean number of distinct scores among the top k.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "RULES",
    "InstanceCounts",
    "InstanceMetrics",
    "instance_counts",
    "instance_metrics",
    "metric_rows",
    "summarise_ties",
    "tie_statistics",
]

RULES = ("optimistic", "pessimistic", "expected", "listed")
KS = (1, 10, 100)
TIE_OTHERS = (10, 99)


@dataclass
class InstanceCounts:
    """Per query: ``less``, ``tied`` (non-ground-truth at ``s*``), ``gt_tied`` (ground truth at ``s*``),
    ``listed_before`` (tied non-ground-truth listed before the first tied ground truth), ``found``."""

    less: np.ndarray
    tied: np.ndarray
    gt_tied: np.ndarray
    listed_before: np.ndarray
    found: np.ndarray

    def concat(self, other: InstanceCounts) -> InstanceCounts:
        return InstanceCounts(
            *(np.concatenate([getattr(self, f), getattr(other, f)]) for f in self.__dataclass_fields__)
        )


def instance_counts(scores: np.ndarray, relevant: np.ndarray) -> InstanceCounts:
    """Counts of each query (row) of ``scores`` (nq, n; lower is better, columns in listed order) against
    the ground-truth mask ``relevant`` (nq, n)."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be the same (nq, n)")
    gt_scores = np.where(relevant, scores, np.inf)
    best = gt_scores.min(axis=1, initial=np.inf)
    found = np.isfinite(best)
    at = scores == best[:, None]
    less = ((scores < best[:, None]) & ~relevant).sum(1)
    tied = (at & ~relevant).sum(1)
    gt_at = at & relevant
    gt_tied = gt_at.sum(1)
    first = np.where(gt_at.any(1), gt_at.argmax(1), scores.shape[1])
    before = at & ~relevant & (np.arange(scores.shape[1])[None, :] < first[:, None])
    return InstanceCounts(less, tied, gt_tied, before.sum(1), found)


def _ranks(c: InstanceCounts, rule: str) -> np.ndarray:
    extra = {"optimistic": 0, "pessimistic": c.tied, "listed": c.listed_before}[rule]
    return np.where(c.found, 1.0 + c.less + extra, np.inf)


def _p_first_after(t: int, g: int, m: int) -> float:
    """P(the first m of a random order of t non-relevant and g relevant items are all non-relevant)."""
    if m <= 0:
        return 1.0
    if m > t:
        return 0.0
    i = np.arange(m)
    return float(np.prod((t - i) / (t + g - i)))


def _first_position_pmf(t: int, g: int) -> np.ndarray:
    """P(X = j), j = 0..t, X the non-relevant items before the first relevant one in a random order."""
    j = np.arange(t + 1)
    ratio = np.ones(t + 2)
    ratio[1:] = np.cumprod(np.maximum(t - j, 0) / (t + g - j))  # ratio[j] = P(X >= j)
    return ratio[:-1] - ratio[1:]


@dataclass
class InstanceMetrics:
    """recall@k and MRR under each tie rule, and the tie statistics; ``n`` queries."""

    n: int
    recall: dict[str, dict[int, float]] = field(default_factory=dict)  # rule -> k -> value
    mrr: dict[str, float] = field(default_factory=dict)
    ties: dict[str, float] = field(default_factory=dict)


def instance_metrics(
    counts: InstanceCounts, ks: Sequence[int] = KS, ties: dict[str, float] | None = None
) -> InstanceMetrics:
    """recall@k and MRR of the source under every rule in ``RULES`` (see the module docstring)."""
    n = len(counts.less)
    out = InstanceMetrics(n=n, ties=dict(ties or {}))
    if n == 0:
        return out
    for rule in ("optimistic", "pessimistic", "listed"):
        r = _ranks(counts, rule)
        out.recall[rule] = {k: float(np.mean(r <= k)) for k in ks}
        out.mrr[rule] = float(np.mean(1.0 / r))
    rec = {k: 0.0 for k in ks}
    rr = 0.0
    for less, t, g, found in zip(counts.less, counts.tied, counts.gt_tied, counts.found, strict=True):
        if not found:
            continue
        t, g = int(t), int(g)
        for k in ks:
            rec[k] += 1.0 - _p_first_after(t, g, k - int(less))
        p = _first_position_pmf(t, g)
        rr += float(np.sum(p / (1.0 + less + np.arange(t + 1))))
    out.recall["expected"] = {k: v / n for k, v in rec.items()}
    out.mrr["expected"] = rr / n
    return out


def tie_statistics(scores: np.ndarray, k: int = 100) -> dict[str, np.ndarray]:
    """Per query of ``scores`` (nq, n): ``first_ties`` (other items with the best score) and
    ``distinct_top_k`` (distinct scores among the k best)."""
    scores = np.asarray(scores, dtype=np.float64)
    kk = min(k, scores.shape[1])
    if kk == 0:
        z = np.zeros(len(scores), np.int64)
        return {"first_ties": z, "distinct_top_k": z}
    best = scores.min(axis=1)
    first_ties = (scores == best[:, None]).sum(1) - 1
    top = np.sort(np.partition(scores, kk - 1, axis=1)[:, :kk], axis=1)
    distinct = 1 + (np.diff(top, axis=1) != 0).sum(1)
    return {"first_ties": first_ties, "distinct_top_k": distinct}


def summarise_ties(stats: dict[str, np.ndarray], k: int = 100) -> dict[str, float]:
    """Shares of queries whose first result ties with >= 10 / >= 99 others; mean distinct scores in the top k."""
    ft = stats["first_ties"]
    if len(ft) == 0:
        return {}
    out = {f"first_ties_ge_{o}": float(np.mean(ft >= o)) for o in TIE_OTHERS}
    out[f"distinct_top_{k}"] = float(np.mean(stats["distinct_top_k"]))
    return out


def metric_rows(
    m: InstanceMetrics, scorer: str, family: str
) -> Iterable[tuple[str, str, str, str, int | None, float]]:
    """``(scorer, family, rule, name, k, value)`` rows for the ``instance_metrics`` table (tie statistics
    under rule ``''``)."""
    for rule, by_k in m.recall.items():
        for k, v in by_k.items():
            yield scorer, family, rule, "recall", k, v
    for rule, v in m.mrr.items():
        yield scorer, family, rule, "mrr", None, v
    for name, v in m.ties.items():
        yield scorer, family, "", name, None, v
    yield scorer, family, "", "queries", None, float(m.n)
