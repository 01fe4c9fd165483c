"""The copies protocol glue: sources, duplicates as ground truth, Hamming scan and shortlist vs brute force."""

from __future__ import annotations

import numpy as np
import pytest

from ml.copies import _shortlist, evaluate_copies, make_copy_queries, pick_sources
from ml.instance_metrics import instance_counts, instance_metrics
from ml.rerank import CandidateTable


def _setup(n=50, bits=16, m=20, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, (n, bits // 8), dtype=np.uint8)  # few distinct codes: many ties
    codes[7] = codes[30]
    group = np.arange(n)
    group[30] = group[7]  # row 30 is an exact duplicate of row 7
    images = rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8)
    queries = make_copy_queries(lambda pos: images[pos], n, m, "easy+hard", seed)
    flip = rng.integers(0, 2, (m, bits // 8), dtype=np.uint8)
    q_codes = codes[queries.source] ^ flip  # a copy's code: its source's with a bit or two changed
    u = np.where(np.unpackbits(q_codes, axis=1) > 0, 1.0, -1.0) * rng.uniform(0.1, 2, (m, bits))
    table = CandidateTable(np.arange(n) * 2 + 10, codes, bits)
    return queries, q_codes, u, table, group


def test_sources_are_seeded_and_capped():
    assert np.array_equal(pick_sources(100, 10, 1), pick_sources(100, 10, 1))
    assert not np.array_equal(pick_sources(100, 10, 1), pick_sources(100, 10, 2))
    assert len(pick_sources(5, 10, 0)) == 5


def test_hamming_ranking_matches_brute_force_per_family():
    queries, q_codes, u, table, group = _setup()
    result = evaluate_copies(queries, q_codes, u, table, group, ("none", "asymmetric"), oversample=1)
    d = np.array([[bin(int.from_bytes(a ^ b, "big")).count("1") for b in table.codes] for a in q_codes])
    rel = group[None, :] == group[queries.source][:, None]
    fams = np.array(queries.families)
    for family in ("all", "easy", "hard"):
        mask = np.ones(len(fams), bool) if family == "all" else fams == family
        ref = instance_metrics(instance_counts(d[mask], rel[mask]))
        got = result.metrics[("none", family)]
        assert got.n == mask.sum()
        for rule in ref.recall:
            assert got.recall[rule] == pytest.approx(ref.recall[rule])
            assert got.mrr[rule] == pytest.approx(ref.mrr[rule])
        first_ties = (d[mask] == d[mask].min(1, keepdims=True)).sum(1) - 1
        assert got.ties["first_ties_ge_10"] == pytest.approx(np.mean(first_ties >= 10))
    assert ("asymmetric", "all") in result.metrics
    assert {r[0] for r in result.rows()} == {"none", "asymmetric"}
    assert (
        result.headline()["copy_recall@1_expected"] == result.metrics[("none", "all")].recall["expected"][1]
    )


def test_shortlist_is_hamming_then_row_id():
    queries, q_codes, _, table, _ = _setup()
    dist, ids = _shortlist(q_codes, table.codes, table.row_ids, 12)
    for qc, dd, ii in zip(q_codes, dist, ids, strict=True):
        d = [bin(int.from_bytes(qc ^ c, "big")).count("1") for c in table.codes]
        ref = sorted(zip(d, table.row_ids, strict=True))[:12]
        assert [x[1] for x in ref] == list(ii) and [x[0] for x in ref] == list(dd)


def test_bad_settings_are_named():
    queries, q_codes, u, table, group = _setup()
    with pytest.raises(ValueError, match="re-ranking cosine"):
        evaluate_copies(queries, q_codes, u, table, group, ("none", "cosine"))
    with pytest.raises(ValueError, match="copies >= 1"):
        make_copy_queries(lambda p: p, 10, 0, "easy", 0)
