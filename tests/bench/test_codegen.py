"""The fitted code generator: seeded and chunk-invariant, and a fit recovers a planted mixture of
independent-bit groups (weights, per-bit rates, neighbour distances)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.codegen import CodeModel, fit_code_model, fit_report, neighbour_profile


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of 4 well-separated groups (weights 0.4/0.3/0.2/0.1), each bit flipped from its group centre
    with probability 0.05: (codes, weights, ones-rates)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (4, 64))
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    rates = np.where(centres == 1, 0.95, 0.05)
    group = rng.choice(4, n, p=weights)
    bits = rng.random((n, 64)) < rates[group]
    return np.packbits(bits, axis=1), weights, rates


def test_samples_are_seeded_chunk_invariant_and_fresh_per_offset():
    codes, _, _ = planted(4000)
    model = fit_code_model(codes, components=4, seed=0)
    a = model.sample(3000, seed=1)
    b = np.concatenate(list(model.chunks(3000, seed=1, chunk=1000)))
    assert a.shape == (3000, 8) and a.dtype == np.uint8
    # chunks of another size draw other numbers; the same chunking gives the same codes
    assert np.array_equal(a, model.sample(3000, seed=1))
    assert np.array_equal(b, np.concatenate(list(model.chunks(3000, seed=1, chunk=1000))))
    assert not np.array_equal(a, model.sample(3000, seed=2))
    assert not np.array_equal(a, model.sample(3000, seed=1, offset=1 << 40))


def test_fit_recovers_a_planted_mixture():
    codes, weights, rates = planted(8000)
    model = fit_code_model(codes, components=4, seed=0, source="planted")
    assert model.bits == 64 and model.source == "planted"
    order = np.argsort(-model.weights)
    assert np.allclose(model.weights[order] / model.weights.sum(), weights, atol=0.02)
    # each fitted group is one planted group: its rates within 0.03 of the planted ones
    fitted = model.ones[order]
    true = rates[np.argsort(-weights)]
    assert np.abs(fitted - true).max() < 0.03
    report = fit_report(model, codes, queries=500)
    assert report["components"] == 4
    # the generated codes sit as far from their neighbours as the real ones (independent bits both)
    for k in (1, 10, 100):
        assert report[f"generated_nn{k}_hamming"] == pytest.approx(report[f"real_nn{k}_hamming"], rel=0.15)
    assert report["group_spread_hamming"] == pytest.approx(64 * 2 * 0.05 * 0.95, rel=0.1)


def test_neighbour_profile_against_brute_force():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    codes[100:110] = codes[0]  # duplicates
    queries = codes[:20] ^ np.uint8(1)
    got = neighbour_profile(queries, codes, ks=(1, 5))
    d = np.unpackbits(queries[:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)
    d.sort(axis=1)
    assert got["nn1_hamming"] == pytest.approx(d[:, 0].mean())
    assert got["nn5_hamming"] == pytest.approx(d[:, 4].mean())
    assert got["distinct_share"] == pytest.approx(len(np.unique(codes, axis=0)) / 300)


def test_too_few_codes_is_a_clear_error():
    with pytest.raises(ValueError, match="10 codes are too few to fit"):
        fit_code_model(np.zeros((10, 8), np.uint8))
    model = CodeModel(np.ones(1), np.full((1, 16), 0.5, np.float32), "x")
    assert model.sample(0).shape == (0, 2)
