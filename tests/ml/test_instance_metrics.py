"""Instance metrics against brute force: every tie rule on tiny rankings full of ties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ml.instance_metrics import (
    instance_counts,
    instance_metrics,
    summarise_ties,
    tie_statistics,
)


def _rank(order: list[int], relevant: np.ndarray) -> float:
    for pos, j in enumerate(order, 1):
        if relevant[j]:
            return float(pos)
    return np.inf


def _brute(scores: np.ndarray, relevant: np.ndarray, ks=(1, 2, 4)) -> dict:
    """Per rule: recall@k and MRR by explicit sorting (expected: the mean over every order of the items)."""
    n = scores.shape[1]
    out = {r: {"ranks": []} for r in ("optimistic", "pessimistic", "listed")}
    exp_rec = {k: 0.0 for k in ks}
    exp_rr = 0.0
    for s, rel in zip(scores, relevant, strict=True):
        ok = [j for j in range(n) if np.isfinite(s[j])]  # an inf item was never returned
        rel = rel & np.isfinite(s)
        out["optimistic"]["ranks"].append(_rank(sorted(ok, key=lambda j: (s[j], not rel[j])), rel))
        out["pessimistic"]["ranks"].append(_rank(sorted(ok, key=lambda j: (s[j], bool(rel[j]))), rel))
        out["listed"]["ranks"].append(_rank(sorted(ok, key=lambda j: (s[j], j)), rel))
        perms = list(itertools.permutations(range(n)))
        ranks = [_rank(sorted(ok, key=lambda j, p=p: (s[j], p[j])), rel) for p in perms]
        for k in ks:
            exp_rec[k] += np.mean([r <= k for r in ranks])
        exp_rr += np.mean([1.0 / r for r in ranks])
    res = {}
    for rule, d in out.items():
        r = np.array(d["ranks"])
        res[rule] = ({k: float(np.mean(r <= k)) for k in ks}, float(np.mean(1.0 / r)))
    nq = len(scores)
    res["expected"] = ({k: v / nq for k, v in exp_rec.items()}, exp_rr / nq)
    return res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_rule_matches_brute_force_on_ties(seed):
    rng = np.random.default_rng(seed)
    nq, n = 12, 6
    scores = rng.integers(0, 3, (nq, n)).astype(float)  # three values: ties everywhere
    relevant = rng.random((nq, n)) < 0.3
    relevant[0] = False  # a query without ground truth
    relevant[1, :] = False
    relevant[1, 2] = True
    scores[1, 2] = np.inf  # its ground truth was never returned
    relevant[2] = True  # every item relevant
    ks = (1, 2, 4)
    got = instance_metrics(instance_counts(scores, relevant), ks)
    ref = _brute(scores, relevant, ks)
    for rule, (rec, mrr) in ref.items():
        assert got.recall[rule] == pytest.approx(rec), rule
        assert got.mrr[rule] == pytest.approx(mrr), rule
    # the rules are ordered: optimistic >= expected >= pessimistic
    assert got.mrr["optimistic"] >= got.mrr["expected"] >= got.mrr["pessimistic"]
    assert got.mrr["optimistic"] > got.mrr["pessimistic"]  # there were ties to break


def test_listed_rank_is_column_order():
    scores = np.array([[1.0, 0.0, 0.0, 0.0]])
    relevant = np.array([[True, False, False, True]])
    c = instance_counts(scores, relevant)
    m = instance_metrics(c, ks=(1, 3))
    assert (int(c.less[0]), int(c.tied[0]), int(c.gt_tied[0]), int(c.listed_before[0])) == (0, 2, 1, 2)
    assert m.mrr["listed"] == pytest.approx(1 / 3)
    assert m.mrr["pessimistic"] == pytest.approx(1 / 3)
    assert m.mrr["optimistic"] == 1.0
    assert m.mrr["expected"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert m.recall["expected"][1] == pytest.approx(1 / 3)


def test_tie_statistics_brute_force():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (20, 30)).astype(float)
    stats = tie_statistics(scores, k=5)
    for s, ft, dk in zip(scores, stats["first_ties"], stats["distinct_top_k"], strict=True):
        assert ft == sum(v == s.min() for v in s) - 1
        assert dk == len(set(sorted(s)[:5]))
    summary = summarise_ties(stats, k=5)
    assert summary["first_ties_ge_10"] == pytest.approx(
        np.mean([sum(v == s.min() for v in s) - 1 >= 10 for s in scores])
    )
    assert summary["distinct_top_5"] == pytest.approx(np.mean(stats["distinct_top_k"]))
