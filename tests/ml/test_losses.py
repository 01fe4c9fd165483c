"""The hashing-loss zoo (ml/losses, docs/METHODS.md "Losses"): common behaviour and each loss's defining property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml.losses import (
    DEFAULTS,
    LOSSES,
    CSQLoss,
    DCHLoss,
    GreedyHashLoss,
    HashNetLoss,
    HybridHashLoss,
    IDHNLoss,
    MemoryBank,
    TransHashLoss,
    XHashNetLoss,
    balanced_pair_weights,
    build_loss,
    dpn_targets,
    hash_centres,
    nearest_centre,
    stable_softplus,
)
from ml.losses.pairwise import cauchy_distance, cauchy_pair_nll, cauchy_probability

ALL = sorted(LOSSES)
BANKED = ["dsh", "idhn", "hybridhash"]


def _labels(n: int, classes: int = 3) -> torch.Tensor:
    return torch.eye(classes)[torch.arange(n) % classes]


def _hamming(codes: torch.Tensor) -> torch.Tensor:
    b = (codes >= 0).float()
    return (b[:, None, :] != b[None, :, :]).float().sum(-1)


def test_registry_has_every_loss_with_defaults_and_recipe():
    expected = {
        "dsh",
        "hashnet",
        "greedyhash",
        "idhn",
        "csq",
        "dpn",
        "dch",
        "transhash",
        "hybridhash",
        "xhashnet",
    }
    assert set(LOSSES) == expected == set(DEFAULTS)
    for name, cls in LOSSES.items():
        assert cls.name == name
        assert DEFAULTS[name]["optimizer"]["optimizer"] in {"rmsprop", "sgd", "adamw"}
        assert cls.__doc__ and "docs/METHODS.md" in cls.__doc__
    assert DEFAULTS["dch"]["params"] == {"gamma": 20.0, "lam": 0.1}
    assert DEFAULTS["hashnet"]["params"]["step"] == 20 and DEFAULTS["hybridhash"]["params"] == {"alpha": 0.5}


def test_build_loss_errors_name_the_bad_loss_or_param():
    with pytest.raises(ValueError, match=r"unknown loss 'hashnett'.*'csq'"):
        build_loss("hashnett", 3, 16, 10)
    with pytest.raises(ValueError, match=r"\['gama'\].*'dch'.*\['gamma', 'lam'\]"):
        build_loss("dch", 3, 16, 10, gama=3.0)
    assert build_loss("dch", 3, 16, 10, gamma=5.0).gamma == 5.0


@pytest.mark.parametrize("name", ALL)
def test_loss_is_finite_and_reaches_u(name):
    torch.manual_seed(0)
    loss_fn = build_loss(name, 3, 16, num_train=20)
    u = torch.randn(6, 16, requires_grad=True)
    loss = loss_fn(u, _labels(6), torch.arange(6) + 4)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert u.grad is not None and torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_training_lowers_loss_and_separates_classes(name):
    """Adam on a learnable u (random start, so no class structure) must lower the loss and give same-class
    codes a smaller Hamming distance than different-class codes."""
    torch.manual_seed(0)
    n, bits = 30, 16
    y = _labels(n)
    loss_fn = build_loss(name, 3, bits, num_train=n)
    u = torch.nn.Parameter(0.5 * torch.randn(n, bits))
    opt = torch.optim.Adam([u, *loss_fn.parameters()], lr=0.05)
    index = torch.arange(n)
    history = []
    for _ in range(80):
        loss = loss_fn(u, y, index)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < history[0]
    dist = _hamming(u.detach())
    same = (y @ y.T) > 0
    off_diag = ~torch.eye(n, dtype=torch.bool)
    intra, inter = dist[same & off_diag], dist[~same]
    assert intra.mean() + bits / 4 < inter.mean(), (intra.mean(), inter.mean())


def test_losses_run_in_fp32_under_autocast():
    loss_fn = build_loss("hybridhash", 3, 16, num_train=10)
    u = torch.randn(4, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(u, _labels(4), torch.arange(4))
    assert loss.dtype == torch.float32 and loss_fn.bank.codes.dtype == torch.float32


def test_shape_mismatch_and_missing_index_are_rejected():
    with pytest.raises(ValueError, match=r"\(n, 16\)"):
        build_loss("csq", 3, 16, 10)(torch.randn(4, 32), _labels(4))
    with pytest.raises(ValueError, match="needs index"):
        build_loss("dsh", 3, 16, 10)(torch.randn(4, 16), _labels(4))
    with pytest.raises(ValueError, match="num_train"):
        build_loss("dsh", 3, 16, 10)(torch.randn(4, 16), _labels(4), torch.tensor([0, 1, 2, 10]))


# --- stable softplus -------------------------------------------------------------------------------------------


def test_stable_softplus_is_finite_for_huge_inputs_and_exact_elsewhere():
    z = torch.tensor([-1e4, 1e4, -30.0, 0.0, 3.0], requires_grad=True)
    out = stable_softplus(z)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()
    assert out[0] == 0 and out[1] == 1e4
    naive = torch.log1p(torch.exp(torch.tensor([-1e4, 1e4])))
    assert not torch.isfinite(naive).all()  # the naive form overflows: the test above is meaningful
    ref = torch.relu(z) + torch.log1p(torch.exp(-z.abs()))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(z.grad, torch.sigmoid(z.detach()))


def test_likelihood_losses_stay_finite_with_huge_inner_products():
    u = torch.tensor([[1e4] * 16, [-1e4] * 16, [1e4] * 16])
    for name in ("idhn", "hashnet", "hybridhash"):
        loss = build_loss(name, 3, 16, 3, alpha=1e3)(u, _labels(3), torch.arange(3))
        assert torch.isfinite(loss), name


# --- CSQ / DPN -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 32, 48, 64])
@pytest.mark.parametrize("classes", [10, 100])
def test_csq_centres_are_at_least_a_quarter_apart(bits, classes):
    c = hash_centres(classes, bits, seed=0)
    assert c.shape == (classes, bits) and set(np.unique(c)) == {-1.0, 1.0}
    dist = (bits - c @ c.T) / 2
    np.fill_diagonal(dist, bits)
    assert dist.min() >= bits / 4


def test_48_bit_centres_fall_back_to_seeded_balanced_codes():
    c = hash_centres(10, 48, seed=3)
    assert (c.sum(axis=1) == 0).all()  # exactly 24 entries -1 per centre
    np.testing.assert_array_equal(c, hash_centres(10, 48, seed=3))
    assert not np.array_equal(c, hash_centres(10, 48, seed=4))
    assert (
        hash_centres(10, 64, balanced=False)[0] == 1
    ).all()  # reference order: Hadamard rows, row 0 all ones


@pytest.mark.parametrize("bits", [16, 32, 64])
@pytest.mark.parametrize("classes", [2, 10, 2 * 64])
def test_balanced_centres_give_every_bit_to_half_of_the_classes(bits, classes):
    c = hash_centres(min(classes, 2 * bits), bits)
    assert (c.mean(axis=0) == 0).all()  # per bit: as many classes at +1 as at -1 (per-bit entropy 1)
    assert (
        not (c == 1).all(axis=1).any() or len(c) == 2 * bits
    )  # the all-ones row only once every other is used
    ref = hash_centres(len(c), bits, balanced=False)
    assert {tuple(r) for r in c} <= {
        tuple(r) for r in np.concatenate([ref, -ref])
    }  # same rows, another order
    assert (hash_centres(10, 64, balanced=False).mean() + 1) / 2 == pytest.approx(
        0.55
    )  # the reference's skew


def test_csq_loss_is_lowest_at_the_centre():
    loss_fn = build_loss("csq", 3, 16, 0)
    y = _labels(3)
    t = loss_fn.targets(y)
    assert torch.equal(t, loss_fn.centres[:3])
    assert loss_fn(4 * t, y) < loss_fn(4 * t.roll(1, dims=0), y)


def test_csq_loss_decreases_towards_centre():
    loss = CSQLoss(num_classes=3, bits=16)
    y = torch.eye(3)[[0, 1, 2]]
    target = loss.targets(y)
    near = loss(3 * target, y)
    far = loss(-3 * target, y)
    assert near < far and torch.isfinite(near)


def test_csq_multilabel_target_is_a_sign_of_summed_centres():
    loss = CSQLoss(num_classes=3, bits=16, seed=1)
    y = torch.tensor([[1.0, 1.0, 0.0]])
    v = loss.centres[0] + loss.centres[1]
    t = loss.targets(y)[0]
    assert torch.equal(t[v > 0], torch.ones_like(t[v > 0]))
    assert torch.equal(t[v < 0], -torch.ones_like(t[v < 0]))
    assert torch.equal(t[v == 0], loss.tie_bits[v == 0])


@pytest.mark.parametrize("bits,p", [(16, 0.5), (48, 0.5), (64, 0.25), (30, 0.3)])
def test_dpn_targets_have_exactly_floor_pb_negative_entries(bits, p):
    t = dpn_targets(7, bits, p=p, seed=1)
    assert ((t == -1).sum(axis=1) == math.floor(p * bits)).all() and set(np.unique(t)) <= {-1.0, 1.0}
    loss_fn = build_loss("dpn", 7, bits, 0, p=p)
    assert ((loss_fn.centres == -1).sum(1) == math.floor(p * bits)).all()


def test_dpn_is_a_margin_loss_on_raw_u():
    loss_fn = build_loss("dpn", 3, 16, 0)
    y = _labels(3)
    t = loss_fn.targets(y)
    assert loss_fn(2 * t, y) == 0  # beyond the margin: zero loss (no tanh)
    torch.testing.assert_close(loss_fn(0.25 * t, y), torch.tensor(0.75))


# --- GreedyHash ------------------------------------------------------------------------------------------------


def test_greedyhash_backward_is_straight_through():
    torch.manual_seed(0)
    loss_fn = GreedyHashLoss(3, 16, alpha=0.0)
    u = torch.randn(5, 16, requires_grad=True)
    y = _labels(5)
    loss_fn(u, y).backward()
    b = torch.where(u.detach() >= 0, 1.0, -1.0).requires_grad_()
    F.cross_entropy(b @ loss_fn.classifier.weight.detach().T, y.argmax(1)).backward()
    torch.testing.assert_close(u.grad, b.grad)
    assert u.grad.abs().sum() > 0


def test_greedyhash_penalty_and_classifier_are_trained():
    torch.manual_seed(0)
    loss_fn = GreedyHashLoss(3, 16, alpha=0.5)
    u = torch.randn(5, 16)
    y = _labels(5)
    b = torch.where(u >= 0, 1.0, -1.0)
    expected = F.cross_entropy(loss_fn.classifier(b), y.argmax(1)) + 0.5 * (u.abs() - 1).abs().pow(3).mean()
    torch.testing.assert_close(loss_fn(u, y), expected)
    assert any(p is loss_fn.classifier.weight for p in loss_fn.parameters())
    assert loss_fn.classifier.bias is None


def test_single_label_mode_warns_on_multi_hot_and_multilabel_uses_bce():
    y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    u = torch.randn(2, 16)
    with pytest.warns(UserWarning, match="multilabel=True"):
        GreedyHashLoss(3, 16)(u, y)
    loss_fn = GreedyHashLoss(3, 16, alpha=0.0, multilabel=True)
    logits = loss_fn.classifier(torch.where(u >= 0, 1.0, -1.0))
    torch.testing.assert_close(loss_fn(u, y), F.binary_cross_entropy_with_logits(logits, y))


# --- HashNet / HybridHash (WML) --------------------------------------------------------------------------------


def _manual_likelihood(h_a, h_b, s, alpha):
    z = alpha * h_a @ h_b.T
    nll = torch.log1p(torch.exp(z)) - s * z
    s1, s0 = s.sum(), (1 - s).sum()
    w = torch.where(s > 0, s.numel() / s1, s.numel() / s0)
    return (w * nll).sum() / s.numel()


def test_hashnet_beta_schedule():
    loss_fn = HashNetLoss(3, 16)
    betas = []
    for epoch in (0, 19, 20, 40, 149):
        loss_fn.set_epoch(epoch)
        betas.append(loss_fn.beta)
    np.testing.assert_allclose(betas, [1, 1, math.sqrt(2), math.sqrt(3), math.sqrt(8)])
    fixed = HashNetLoss(3, 16, step=None)
    fixed.set_epoch(100)
    assert fixed.beta == 1.0


def test_hashnet_loss_uses_tanh_of_beta_u_over_batch_pairs():
    torch.manual_seed(0)
    u = torch.randn(6, 16)
    y = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
    s = (y @ y.T > 0).float()
    loss_fn = HashNetLoss(3, 16)
    loss_fn.set_epoch(40)
    expected = _manual_likelihood(torch.tanh(math.sqrt(3) * u), torch.tanh(math.sqrt(3) * u), s, 0.1)
    torch.testing.assert_close(loss_fn(u, y), expected)
    loss_fn.set_epoch(0)
    assert not torch.allclose(loss_fn(u, y), expected)


def test_wml_matches_the_memory_bank_likelihood_on_filled_rows():
    torch.manual_seed(0)
    loss_fn = HybridHashLoss(3, 16, num_train=50)
    u1, u2 = torch.randn(4, 16), torch.randn(3, 16)
    y1, y2 = _labels(4), _labels(3)[[2, 2, 0]]
    i1, i2 = torch.tensor([10, 11, 12, 13]), torch.tensor([13, 40, 41])
    loss_fn(u1, y1, i1)
    got = loss_fn(u2, y2, i2)
    bank_h = torch.cat([torch.tanh(u1[:3]), torch.tanh(u2)])  # row 13 overwritten by the second batch
    bank_y = torch.cat([y1[:3], y2])
    expected = _manual_likelihood(torch.tanh(u2), bank_h, (y2 @ bank_y.T > 0).float(), 0.5)
    torch.testing.assert_close(got, expected)


# --- memory banks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*BANKED, "hashnet-bank"])
def test_memory_bank_is_fp32_sized_to_num_train_and_stores_detached_outputs(name):
    loss_fn = (
        HashNetLoss(3, 16, 37, memory_bank=True) if name == "hashnet-bank" else build_loss(name, 3, 16, 37)
    )
    assert loss_fn.uses_memory_bank
    bank = loss_fn.bank
    assert bank.codes.shape == (37, 16) and bank.labels.shape == (37, 3)
    assert bank.codes.dtype == bank.labels.dtype == torch.float32
    assert not bank.filled.any() and not bank.codes.any()
    u = torch.randn(4, 16, requires_grad=True)
    index = torch.tensor([3, 30, 7, 0])
    loss_fn(u, _labels(4), index)
    assert not bank.codes.requires_grad
    squash = {"dsh": lambda v: v, "idhn": lambda v: v / (v.abs() + 1)}.get(name, torch.tanh)
    torch.testing.assert_close(bank.codes[index], squash(u.detach()))
    torch.testing.assert_close(bank.labels[index], _labels(4))
    assert bank.filled.sum() == 4 and bank.filled[index].all()
    assert not bank.codes[~bank.filled].any()


@pytest.mark.parametrize("name", BANKED)
def test_unfilled_bank_rows_are_not_fake_dissimilar_pairs(name):
    """The loss only sees filled rows: it does not depend on how many rows are still empty (the reference's
    zero rows would add dissimilar pairs, and the loss would change with num_train)."""
    torch.manual_seed(0)
    u, y, index = torch.randn(6, 16), _labels(6), torch.arange(6)
    small = build_loss(name, 3, 16, num_train=6)(u, y, index)
    large = build_loss(name, 3, 16, num_train=5000)(u, y, index)
    torch.testing.assert_close(small, large)
    quirk = build_loss(name, 3, 16, num_train=5000)
    quirk.bank.filled[:] = True  # emulate the reference: zero rows take part
    assert not torch.allclose(quirk(u, y, index), small)


def test_memory_bank_update_rejects_out_of_range_indices():
    bank = MemoryBank(5, 4, 2)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        bank.update(torch.tensor([5]), torch.zeros(1, 4), torch.zeros(1, 2))


# --- IDHN ------------------------------------------------------------------------------------------------------


def test_idhn_with_one_hot_labels_is_the_hard_pair_loss_only():
    torch.manual_seed(0)
    u, y, index = torch.randn(6, 16), _labels(6), torch.arange(6)
    a = IDHNLoss(3, 16, 6, gamma=0.1)(u, y, index)
    b = IDHNLoss(3, 16, 6, gamma=50.0)(u, y, index)
    torch.testing.assert_close(a, b)  # no soft pair: gamma is irrelevant
    v = u / (u.abs() + 1)
    z = 0.5 * v @ v.T
    s = (y @ y.T > 0).float()
    expected = (torch.log1p(torch.exp(z)) - s * z).mean() + 0.1 * (1 - v.abs()).mean()
    torch.testing.assert_close(a, expected)
    multi = torch.tensor([[1.0, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]])
    assert not torch.allclose(
        IDHNLoss(3, 16, 6, gamma=0.1)(u, multi, index), IDHNLoss(3, 16, 6, gamma=50.0)(u, multi, index)
    )


# --- DCH / TransHash -------------------------------------------------------------------------------------------


def test_cauchy_probability_decreases_with_distance_and_pair_loss_is_its_nll():
    d = torch.linspace(0.1, 32, 50)
    p = cauchy_probability(d, 20.0)
    assert (p.diff() < 0).all()
    ones, zeros = torch.ones_like(d), torch.zeros_like(d)
    torch.testing.assert_close(cauchy_pair_nll(d, ones, 20.0), -torch.log(p))
    torch.testing.assert_close(cauchy_pair_nll(d, zeros, 20.0), -torch.log(1 - p))
    reference = ones * torch.log(d / 20) + torch.log(1 + 20 / d)  # DeepHash-pytorch's DCH form
    torch.testing.assert_close(cauchy_pair_nll(d, ones, 20.0), reference)


def test_cauchy_distance_caps_the_cosine():
    a = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    torch.testing.assert_close(cauchy_distance(a, a, 4), torch.tensor([[4 / 2 * (1 - 0.99)]]))
    torch.testing.assert_close(cauchy_distance(a, -a, 4), torch.tensor([[4.0]]))


def _manual_dch(u, s, gamma, lam, bits, weights):
    norms = u.norm(dim=1, keepdim=True) * u.norm(dim=1)
    d = bits / 2 * (1 - (u @ u.T / norms).clamp(max=0.99))
    pair = (weights * (s * torch.log(d / gamma) + torch.log(1 + gamma / d))).mean()
    cos1 = u.abs().sum(1) / (u.norm(dim=1) * math.sqrt(bits))
    quant = torch.log(1 + bits / 2 * (1 - cos1.clamp(max=0.99)) / gamma).mean()
    return pair + lam * quant


@pytest.mark.parametrize("cls", [DCHLoss, TransHashLoss])
def test_dch_and_transhash_weights_are_all_pairs_over_group_size(cls):
    torch.manual_seed(0)
    u = torch.randn(5, 16)
    y = _labels(5)[[0, 0, 0, 1, 2]]  # 11 similar pairs of 25 (diagonal included)
    s = (y @ y.T > 0).float()
    assert s.sum() == 11
    w = balanced_pair_weights(s)
    torch.testing.assert_close(w, torch.where(s > 0, 25 / 11, 25 / 14))
    torch.testing.assert_close(cls(3, 16)(u, y), _manual_dch(u, s, 20.0, 0.1, 16, w))
    same = _labels(5)[[0] * 5]  # no dissimilar pair: weights fall back to 1
    torch.testing.assert_close(balanced_pair_weights(torch.ones(5, 5)), torch.ones(5, 5))
    torch.testing.assert_close(cls(3, 16)(u, same), _manual_dch(u, torch.ones(5, 5), 20.0, 0.1, 16, 1.0))


# --- X-HashNet -------------------------------------------------------------------------------------------------


def test_xhashnet_classifier_is_a_trainable_submodule():
    loss_fn = XHashNetLoss(3, 16)
    params = list(loss_fn.parameters())
    assert any(p is loss_fn.classifier.weight for p in params) and any(
        p is loss_fn.classifier.bias for p in params
    )
    u = torch.randn(6, 16)
    loss_fn(u, _labels(6)).backward()
    assert loss_fn.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pairwise", ["dch", "hashnet"])
def test_xhashnet_is_the_sum_of_its_terms(pairwise):
    torch.manual_seed(0)
    u, y = torch.randn(6, 16), _labels(6)
    loss_fn = XHashNetLoss(3, 16, lam_p=0.7, lam_q=0.3, lam_b=2.0, pairwise=pairwise)
    h = torch.tanh(u)
    s = (y @ y.T > 0).float()
    w = balanced_pair_weights(s)
    pair = _manual_likelihood(h, h, s, 0.1) if pairwise == "hashnet" else _manual_dch(h, s, 20.0, 0.0, 16, w)
    expected = (
        F.cross_entropy(loss_fn.classifier(h), y.argmax(1))
        + 0.7 * pair
        + 0.3 * (h.abs() - 1).pow(2).mean()
        + 2.0 * (h.mean(0) ** 2).mean()
    )
    torch.testing.assert_close(loss_fn(u, y), expected)
    with pytest.raises(ValueError, match="pairwise"):
        XHashNetLoss(3, 16, pairwise="dsh")


def test_nearest_centre_reads_a_noisy_code_as_its_class():
    rng = np.random.default_rng(0)
    centres = hash_centres(10, 64)
    labels = rng.integers(0, 10, 200)
    bits = centres[labels] > 0
    flips = rng.random(bits.shape) < 0.15  # ~10 of 64 bits, under the 16-bit half-distance between centres
    codes = np.packbits(bits ^ flips, axis=1)
    brute = [int(np.argmin([np.sum((c > 0) != row) for c in centres])) for row in bits ^ flips]
    np.testing.assert_array_equal(nearest_centre(codes, centres), brute)
    assert np.mean(nearest_centre(codes, centres) == labels) > 0.95
