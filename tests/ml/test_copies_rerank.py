"""The seeded copy generator and re-ranking against brute-force re-scoring of the same candidates."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.transforms import FAMILIES, make_copies, parse_families, transformed_copy
from ml.rerank import CandidateTable, dequantise, quantise, rerank, rerank_search, unpack_signs


def _images(channels: int, n: int = 6, size: int = 32) -> np.ndarray:
    """Smooth seeded images (a blob on a gradient): transforms must change pixels without destroying them."""
    rng = np.random.default_rng(channels)
    yy, xx = np.mgrid[:size, :size] / size
    out = np.empty((n, channels, size, size), np.uint8)
    for i in range(n):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        blob = 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.03) + 40 * xx
        out[i] = np.clip(blob + rng.uniform(0, 10, (channels, 1, 1)), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_copies_are_seeded_checked_images(channels):
    images = _images(channels)
    fams = parse_families("easy+hard")
    a, fa = make_copies(images, fams, seed=7)
    b, _ = make_copies(images, fams, seed=7)
    c, _ = make_copies(images, fams, seed=8)
    assert fa == ["easy", "hard"] * 3
    assert a.tobytes() == b.tobytes()  # same seed, same bytes
    assert a.tobytes() != c.tobytes()
    assert a.shape == images.shape and a.dtype == np.uint8
    for i in range(len(images)):
        assert not np.array_equal(a[i], images[i])  # a transform changed the pixels
    # copy i depends on (seed, i) only, not on the other images generated with it
    assert np.array_equal(transformed_copy(images[3], "hard", 7, 3), a[3])
    # easy copies stay close to their source, closer than to the other images
    diff = lambda x, y: np.abs(x.astype(float) - y.astype(float)).mean()  # noqa: E731
    for i in range(0, len(images), 2):
        own = diff(a[i], images[i])
        assert own < 30
        assert own < min(diff(a[i], images[j]) for j in range(len(images)) if j != i)


def test_every_family_and_bad_names():
    img = _images(1, n=1)[0]
    for fam in FAMILIES:
        assert transformed_copy(img, fam, 0, 0).shape == img.shape
    with pytest.raises(ValueError, match="unknown family medium"):
        parse_families("easy+medium")
    with pytest.raises(ValueError, match="uint8"):
        transformed_copy(img.astype(np.float32), "easy", 0, 0)


def _table(rng, n=40, bits=16):
    codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    codes[5] = codes[9] = codes[17]  # equal codes: exact score ties
    u = rng.normal(size=(n, bits)).astype(np.float32)
    row_ids = np.arange(n) * 3 + 100
    return CandidateTable(row_ids, codes, bits, u), u


def _brute_rerank(scorer, q_u, cand_ids, cand_h, table, k):
    out = []
    for qi in range(len(cand_ids)):
        rows = []
        for rid, h in zip(cand_ids[qi], cand_h[qi], strict=True):
            pos = int(np.flatnonzero(table.row_ids == rid)[0])
            if scorer == "asymmetric":
                signs = unpack_signs(table.codes[pos], table.bits).astype(float)
                s = sum(abs(q_u[qi, b]) for b in range(table.bits) if (signs[b] > 0) != (q_u[qi, b] >= 0))
            elif scorer == "stored":
                e = table.embeddings[pos].astype(float)
                q = q_u[qi].astype(float)
                s = 1 - float(q @ e) / (np.linalg.norm(q) * np.linalg.norm(e))
            else:
                s = float(h)
            rows.append((round(s, 9), int(h), int(rid)))
        out.append([r[2] for r in sorted(rows)[:k]])
    return np.array(out)


@pytest.mark.parametrize("scorer", ["none", "asymmetric", "stored"])
def test_rerank_equals_brute_force_rescoring(scorer):
    rng = np.random.default_rng(0)
    table, u = _table(rng)
    nq, R, k = 7, 12, 5
    cand_pos = np.stack([rng.choice(len(table.row_ids), R, replace=False) for _ in range(nq)])
    cand_pos[0, :3] = [5, 9, 17]  # tied candidates
    cand_ids = table.row_ids[cand_pos]
    q_codes = np.packbits(u[:nq] >= 0, axis=1)
    cand_h = np.bitwise_count(q_codes[:, None, :] ^ table.codes[cand_pos]).sum(-1)
    ids, scores, hams = rerank(scorer, u[:nq], cand_ids, cand_h, table, k)
    assert np.array_equal(ids, _brute_rerank(scorer, u[:nq], cand_ids, cand_h, table, k))
    assert np.all(np.diff(scores, axis=1) >= 0)
    if scorer == "asymmetric":
        tied = [list(ids[0]).index(r) for r in table.row_ids[[5, 9, 17]] if r in ids[0]]
        assert tied == sorted(tied)  # equal codes: ordered by row id


def test_rerank_search_asks_for_oversampled_shortlist():
    rng = np.random.default_rng(1)
    table, u = _table(rng)
    table.codes = np.packbits(u >= 0, axis=1)  # codes that are the signs of the outputs
    asked = []

    def search(codes, r):
        asked.append(r)
        d = np.bitwise_count(codes[:, None, :] ^ table.codes[None]).sum(-1)
        order = np.lexsort((np.broadcast_to(table.row_ids, d.shape), d), axis=1)[:, :r]
        return np.take_along_axis(d, order, 1), table.row_ids[order]

    codes = np.packbits(u[:3] >= 0, axis=1)
    ids, _, _ = rerank_search(search, codes, u[:3], 4, 8, "asymmetric", table)
    assert asked == [32] and ids.shape == (3, 4)
    assert np.all(ids[:, 0] == table.row_ids[:3])  # each query's own row is its best match


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
def test_quantise_round_trip(dtype):
    u = np.random.default_rng(2).normal(size=(10, 32)).astype(np.float32) * 3
    data, scale = quantise(u, dtype)
    assert data.dtype == np.uint8 and data.shape == (10, 32 * (1 if dtype == "int8" else 2))
    back = dequantise(data, scale, dtype)
    assert np.abs(back - u).max() <= (np.abs(u).max(1).max() / 127 if dtype == "int8" else 0.01)


def test_encode_outputs_are_the_pass_behind_the_codes():
    from types import SimpleNamespace

    import torch

    from ml.encode import encode_images, encode_outputs

    class Linear(torch.nn.Module):
        spec = SimpleNamespace(bits=16, flip_tta=False)

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 16)

        def forward(self, x):
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    model = Linear()
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 8, 8), dtype=np.uint8)
    codes, u = encode_outputs(model, images, torch.device("cpu"), batch_size=4)
    assert u.shape == (10, 16) and u.dtype == np.float32
    assert np.array_equal(codes, encode_images(model, images, torch.device("cpu")))
    assert np.array_equal(codes, np.packbits(u >= 0, axis=1))
