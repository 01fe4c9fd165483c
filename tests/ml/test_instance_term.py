"""The instance term (``TrainConfig.instance``): NT-Xent against a brute-force reference, its gradients, the
seeded copy-style views, and training with it (finite, seeded, copies drawn nearer their sources)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ml.data import normalise
from ml.losses.instance import (
    InstanceBank,
    InstanceContrast,
    InstanceMemory,
    InstanceMoCo,
    build_instance,
    koleo,
    nt_xent,
    unit_codes,
)
from ml.models import ModelSpec
from ml.train import TrainConfig, TrainData, train_hashing_model
from ml.views import copy_view
from storage.idx import read_idx

FMNIST = "/usr/share/datasets/fashion-mnist/"
TINY_SPEC = dict(bits=16, num_classes=10, overrides={"depth": 1, "embed_dim": 32, "num_heads": 2})


def nt_xent_reference(u: torch.Tensor, v: torch.Tensor, temperature: float) -> float:
    """NT-Xent written out with loops: anchor k of the 2n rows, its positive the other view of the same image."""
    rows = [torch.tanh(r).tolist() for r in torch.cat([u, v])]
    rows = [[x / math.sqrt(sum(t * t for t in r)) for x in r] for r in rows]
    n2 = len(rows)
    total = 0.0
    for k in range(n2):
        pos = (k + n2 // 2) % n2
        sims = {j: sum(a * b for a, b in zip(rows[k], rows[j], strict=True)) / temperature for j in range(n2)}
        denom = sum(math.exp(s) for j, s in sims.items() if j != k)
        total += -math.log(math.exp(sims[pos]) / denom)
    return total / n2


@pytest.mark.parametrize(("n", "bits", "temperature"), [(1, 3, 0.3), (3, 4, 0.3), (5, 8, 0.07), (4, 6, 1.0)])
def test_nt_xent_matches_the_brute_force_reference(n, bits, temperature):
    gen = torch.Generator().manual_seed(n * 100 + bits)
    u, v = torch.randn(n, bits, generator=gen) * 2, torch.randn(n, bits, generator=gen) * 2
    assert nt_xent(u, v, temperature).item() == pytest.approx(nt_xent_reference(u, v, temperature), rel=1e-5)


def test_nt_xent_rewards_views_that_agree():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(6, 16, generator=gen) * 3
    agree = nt_xent(u, u + 0.1 * torch.randn(6, 16, generator=gen), 0.3)
    swapped = nt_xent(u, u.roll(1, dims=0), 0.3)  # each image's second view is another image's
    assert agree < swapped


def test_gradients_reach_both_views_and_scale_with_the_weight():
    gen = torch.Generator().manual_seed(1)
    u = (torch.randn(4, 8, generator=gen)).requires_grad_()
    v = (torch.randn(4, 8, generator=gen)).requires_grad_()
    InstanceContrast(0.5, 0.3)(u, v).backward()
    gu, gv = u.grad.clone(), v.grad.clone()
    assert torch.isfinite(gu).all() and torch.isfinite(gv).all()
    assert gu.abs().sum() > 0 and gv.abs().sum() > 0
    u.grad, v.grad = None, None
    InstanceContrast(1.0, 0.3)(u, v).backward()
    assert torch.allclose(u.grad, 2 * gu) and torch.allclose(v.grad, 2 * gv)


def test_bad_weight_temperature_or_shapes_are_named():
    with pytest.raises(ValueError, match="instance weight must be >= 0, instance_temperature > 0"):
        InstanceContrast(1.0, 0.0)
    with pytest.raises(ValueError, match="instance_koleo >= 0"):
        InstanceContrast(1.0, 0.3, koleo=-1.0)
    with pytest.raises(ValueError, match="instance weight"):
        InstanceContrast(-0.1)
    with pytest.raises(ValueError, match="views must be the same"):
        nt_xent(torch.zeros(3, 4), torch.zeros(2, 4), 0.3)


def test_copy_views_are_seeded_in_range_and_differ_from_the_batch():
    gen = torch.Generator().manual_seed(0)
    batch = torch.rand(8, 3, 20, 24, generator=gen) * 2 - 1
    a = copy_view(batch, torch.Generator().manual_seed(5))
    b = copy_view(batch, torch.Generator().manual_seed(5))
    c = copy_view(batch, torch.Generator().manual_seed(6))
    assert a.shape == batch.shape and a.dtype == batch.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    assert (a - batch).abs().mean(dim=(1, 2, 3)).min() > 0.01  # every image is transformed
    with pytest.raises(ValueError, match="copy_view needs a float batch"):
        copy_view(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), gen)


def _fashion(n: int) -> tuple[TrainData, np.ndarray]:
    x = read_idx(FMNIST + "train-images-idx3-ubyte.gz")[:n, None]
    lab = np.eye(10, dtype=bool)[read_idx(FMNIST + "train-labels-idx1-ubyte.gz")[:n]]
    return TrainData(x, lab, x[:32], lab[:32], x[32:], lab[32:]), x


def _train(data: TrainData, **cfg):
    config = TrainConfig(epochs=3, batch_size=32, lr=3e-3, warmup_steps=1, classifier=1.0, **cfg)
    return train_hashing_model(ModelSpec(**TINY_SPEC), config, data, torch.device("cpu"), log=lambda _: None)


def _pair_to_other_ratio(model: torch.nn.Module, images: np.ndarray) -> float:
    """Mean Hamming distance between each image's code and its copy's, over the mean distance between an
    image's code and another image's copy's (copies from a generator the training never used)."""
    x = normalise(torch.from_numpy(images))
    copies = copy_view(x, torch.Generator().manual_seed(123))
    with torch.no_grad():
        a, b = (model(x) >= 0).float(), (model(copies) >= 0).float()
    d = (a[:, None] != b[None]).float().sum(-1)
    n = len(d)
    return float(d.diagonal().mean() / ((d.sum() - d.diagonal().sum()) / (n * (n - 1))))


def test_instance_term_trains_and_draws_copies_nearer_their_sources():
    data, images = _fashion(256)
    plain = _train(data)
    with_term = _train(data, instance=1.0)
    losses = [r["loss"] for r in with_term.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert losses[0] > plain.history[0]["loss"]  # the NT-Xent term (>= 0) is added
    # the positive pairs' code distance shrinks relative to the negatives' (0.32 against 0.48 when written)
    assert _pair_to_other_ratio(with_term.model, images) < 0.85 * _pair_to_other_ratio(plain.model, images)


def test_weight_zero_leaves_training_unchanged_and_a_weighted_run_is_seeded():
    data, _ = _fashion(96)

    def run(**cfg):
        config = TrainConfig(epochs=1, batch_size=32, warmup_steps=1, **cfg)
        return train_hashing_model(
            ModelSpec(**TINY_SPEC), config, data, torch.device("cpu"), log=lambda _: None
        )

    a, b = run(), run(instance=0.0, instance_temperature=0.05)
    assert a.history[0]["loss"] == b.history[0]["loss"]
    for (k, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), k
    c, d = run(instance=0.5), run(instance=0.5)
    assert c.history[0]["loss"] == d.history[0]["loss"] != a.history[0]["loss"]
    for (k, wc), wd in zip(c.model.state_dict().items(), d.model.state_dict().values(), strict=True):
        assert torch.equal(wc, wd), k


def test_instance_bits_split_the_code_between_the_label_loss_and_the_instance_term(monkeypatch):
    import ml.train as train_module
    from ml.train import instance_split

    assert instance_split(64, TrainConfig(instance=1.0, instance_bits=16)) == 48
    assert instance_split(64, TrainConfig()) == 64
    with pytest.raises(ValueError, match=r"instance_bits must be in \[0, 16\)"):
        instance_split(16, TrainConfig(instance=1.0, instance_bits=16))
    with pytest.raises(ValueError, match="needs the instance term"):
        instance_split(16, TrainConfig(instance_bits=4))
    widths = {"label": set(), "instance": set()}
    build, nt = train_module.build_loss, InstanceContrast.forward

    def recording_build(*args, **kwargs):
        loss = build(*args, **kwargs)
        compute = loss.compute
        loss.compute = lambda u, y, i: widths["label"].add(u.shape[1]) or compute(u, y, i)
        return loss

    monkeypatch.setattr(train_module, "build_loss", recording_build)
    monkeypatch.setattr(
        InstanceContrast,
        "forward",
        lambda self, u, v, idx, keys=None: widths["instance"].add(u.shape[1]) or nt(self, u, v, idx),
    )
    data, _ = _fashion(96)
    split = _train(data, instance=1.0, instance_bits=6)
    assert all(math.isfinite(r["loss"]) for r in split.history)
    assert widths == {"label": {10}, "instance": {6}}  # 16-bit codes: the first 10 bits, the last 6


def bank_reference(z: torch.Tensor, bank: torch.Tensor, target: torch.Tensor, temperature: float) -> float:
    """The bank's cross-entropy written out with loops: row k against every entry, its own entry the target."""
    total = 0.0
    for k in range(len(z)):
        sims = [
            sum(a * b for a, b in zip(z[k].tolist(), e.tolist(), strict=True)) / temperature for e in bank
        ]
        total += -math.log(math.exp(sims[int(target[k])]) / sum(math.exp(s) for s in sims))
    return total / len(z)


@pytest.mark.parametrize(
    ("n", "entries", "dims", "temperature"), [(1, 3, 4, 0.1), (4, 9, 6, 0.05), (3, 3, 2, 1.0)]
)
def test_bank_term_matches_the_brute_force_reference_and_moves_the_entries(n, entries, dims, temperature):
    gen = torch.Generator().manual_seed(entries * 10 + dims)
    u, v = torch.randn(n, dims, generator=gen) * 2, torch.randn(n, dims, generator=gen) * 2
    idx = torch.randperm(entries, generator=gen)[:n]
    term = InstanceBank(0.7, temperature, entries, dims, seed=3, momentum=0.5)
    before = term.bank.clone()
    z = torch.nn.functional.normalize(torch.tanh(torch.cat([u, v])), dim=1)
    expected = 0.7 * bank_reference(z, before, torch.cat([idx, idx]), temperature)
    assert term(u, v, idx).item() == pytest.approx(expected, rel=1e-5)
    # the batch's entries move half-way to the training view (then unit length); the others stay
    for i in range(entries):
        rows = (idx == i).nonzero().ravel()
        if len(rows):
            moved = 0.5 * before[i] + 0.5 * z[rows[0]]
            assert torch.allclose(term.bank[i], moved / moved.norm(), atol=1e-6)
        else:
            assert torch.equal(term.bank[i], before[i])


def test_bank_term_is_seeded_rewards_agreeing_views_and_names_bad_input():
    a, b = InstanceBank(1.0, 0.1, 50, 8, seed=0), InstanceBank(1.0, 0.1, 50, 8, seed=0)
    assert torch.equal(a.bank, b.bank) and not torch.equal(a.bank, InstanceBank(1.0, 0.1, 50, 8, seed=1).bank)
    assert torch.allclose(a.bank.norm(dim=1), torch.ones(50))
    idx = torch.arange(5)
    own = a.bank[idx].clone() * 4  # views that point at their own entries (tanh keeps the direction roughly)
    other = a.bank[idx + 5].clone() * 4
    assert InstanceBank(1.0, 0.1, 50, 8, seed=0)(own, own, idx) < InstanceBank(1.0, 0.1, 50, 8, seed=0)(
        other, other, idx
    )
    with pytest.raises(ValueError, match=r"instance bank: views must be \(n, 8\) with n indices"):
        a(torch.zeros(3, 8), torch.zeros(3, 8), None)
    with pytest.raises(ValueError, match="instance bank: views must be"):
        a(torch.zeros(3, 6), torch.zeros(3, 6), torch.arange(3))
    with pytest.raises(ValueError, match="momentum"):
        InstanceBank(1.0, 0.1, 10, 4, momentum=1.0)
    with pytest.raises(ValueError, match="unknown instance_loss 'queue'"):
        build_instance("queue", 1.0, 0.1, 10, 4, 0)


def test_bank_term_trains_and_draws_copies_nearer_their_sources():
    data, images = _fashion(256)
    plain = _train(data)
    with_bank = _train(data, instance=1.0, instance_loss="bank", instance_temperature=0.1)
    losses = [r["loss"] for r in with_bank.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    # weaker than in-batch NT-Xent on a schedule this short (0.44 against 0.48 when written; docs/BENCHMARKS.md)
    assert _pair_to_other_ratio(with_bank.model, images) < 0.95 * _pair_to_other_ratio(plain.model, images)


def memory_reference(u, v, memory, memory_idx, idx, temperature: float) -> float:
    """NT-Xent with memory negatives written out: anchor k's negatives are the other 2n - 2 rows and every
    filled memory entry of another image."""
    rows = torch.nn.functional.normalize(torch.tanh(torch.cat([u, v])), dim=1).tolist()
    n2, total = len(rows), 0.0
    images = idx.tolist() * 2
    for k in range(n2):
        pos = (k + n2 // 2) % n2
        dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True)) / temperature  # noqa: E731
        terms = [math.exp(dot(rows[k], rows[j])) for j in range(n2) if j != k]
        terms += [
            math.exp(dot(rows[k], m))
            for m, owner in zip(memory.tolist(), memory_idx.tolist(), strict=True)
            if owner >= 0 and owner != images[k]
        ]
        total += -math.log(math.exp(dot(rows[k], rows[pos])) / sum(terms))
    return total / n2


def test_memory_term_matches_the_brute_force_reference_and_queues_the_training_views():
    gen = torch.Generator().manual_seed(7)
    term = InstanceMemory(0.5, 0.2, dims=6, size=10)
    seen = []
    for step in range(4):  # the memory fills, wraps and keeps the newest 10 entries
        idx = torch.tensor([step, 10 + step, 20 + step, step % 2])
        u, v = torch.randn(4, 6, generator=gen) * 2, torch.randn(4, 6, generator=gen) * 2
        memory, owners = term.memory.clone(), term.memory_idx.clone()
        expected = 0.5 * memory_reference(u, v, memory, owners, idx, 0.2)
        assert term(u, v, idx).item() == pytest.approx(expected, rel=1e-5)
        seen = (idx.tolist() + seen)[:10]
        assert term.memory_idx[: len(seen)].tolist() == seen
        assert torch.allclose(term.memory[:4], torch.nn.functional.normalize(torch.tanh(u), dim=1))
    with pytest.raises(ValueError, match="instance memory: views must be the same"):
        term(torch.zeros(2, 6), torch.zeros(2, 6), None)
    assert isinstance(build_instance("memory", 1.0, 0.3, 100, 6, 0), InstanceMemory)


def moco_reference(u, v, keys, memory, memory_idx, idx, temperature: float) -> float:
    """Momentum contrast written out: anchor k (the 2n rows of u and v) against the key of its other view
    (positive), the keys of the batch's other images and every filled queue entry of another image."""
    unit = lambda t: torch.nn.functional.normalize(torch.tanh(t), dim=1).tolist()  # noqa: E731
    rows, key_rows = unit(torch.cat([u, v])), unit(keys)
    n2, total = len(rows), 0.0
    images = idx.tolist() * 2
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True)) / temperature  # noqa: E731
    for k in range(n2):
        positive = key_rows[(k + n2 // 2) % n2]
        terms = [math.exp(dot(rows[k], key_rows[j])) for j in range(n2) if images[j] != images[k]]
        terms += [
            math.exp(dot(rows[k], m))
            for m, owner in zip(memory.tolist(), memory_idx.tolist(), strict=True)
            if owner >= 0 and owner != images[k]
        ]
        total += -math.log(math.exp(dot(rows[k], positive)) / (math.exp(dot(rows[k], positive)) + sum(terms)))
    return total / n2


def test_moco_term_matches_the_brute_force_reference_and_queues_the_training_keys():
    gen = torch.Generator().manual_seed(11)
    term = InstanceMoCo(0.5, 0.2, dims=6, model=torch.nn.Linear(6, 6), size=10)
    seen: list[int] = []
    for step in range(4):  # the queue fills, wraps and keeps the newest 10 keys
        idx = torch.tensor([step, 10 + step, 20 + step])
        u, v = torch.randn(3, 6, generator=gen) * 2, torch.randn(3, 6, generator=gen) * 2
        keys = torch.randn(6, 6, generator=gen) * 2
        memory, owners = term.memory.clone(), term.memory_idx.clone()
        expected = 0.5 * moco_reference(u, v, keys, memory, owners, idx, 0.2)
        assert term(u, v, idx, keys).item() == pytest.approx(expected, rel=1e-5)
        seen = (idx.tolist() + seen)[:10]
        assert term.memory_idx[: len(seen)].tolist() == seen
        assert torch.allclose(term.memory[:3], torch.nn.functional.normalize(torch.tanh(keys[:3]), dim=1))
    with pytest.raises(ValueError, match=r"instance moco: keys must be \(6, 6\)"):
        term(u, v, idx, None)
    with pytest.raises(ValueError, match="instance moco: views must be the same"):
        term(u, v[:2], idx, keys)
    with pytest.raises(ValueError, match="momentum"):
        InstanceMoCo(1.0, 0.2, 6, torch.nn.Linear(6, 6), momentum=1.0)
    with pytest.raises(ValueError, match="needs the model"):
        build_instance("moco", 1.0, 0.3, 100, 6, 0)
    assert isinstance(build_instance("moco", 1.0, 0.3, 100, 6, 0, torch.nn.Linear(6, 6)), InstanceMoCo)


def test_moco_key_encoder_follows_the_model_with_its_momentum_and_takes_no_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 6)
    term = InstanceMoCo(1.0, 0.3, dims=6, model=model, momentum=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # an optimiser step
    x = torch.randn(8, 4)
    keys = term.keys(model, x)
    moved = 0.9 * start + 0.1 * model.weight.detach()
    assert torch.allclose(term.key_encoder.module.weight, moved, atol=1e-6)
    assert torch.allclose(keys, torch.nn.functional.linear(x, moved, term.key_encoder.module.bias), atol=1e-5)
    assert not keys.requires_grad
    assert all(not p.requires_grad for p in term.key_encoder.parameters())
    assert "key_encoder.module.weight" in term.state_dict()  # saved with the training state


def test_moco_term_trains_and_draws_copies_nearer_their_sources():
    data, images = _fashion(256)
    plain = _train(data)
    with_moco = _train(data, instance=1.0, instance_loss="moco")
    losses = [r["loss"] for r in with_moco.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    # 0.36 against 0.49 when written (in-batch NT-Xent: 0.33)
    assert _pair_to_other_ratio(with_moco.model, images) < 0.85 * _pair_to_other_ratio(plain.model, images)


def koleo_reference(z: torch.Tensor, floor: float = 1e-3) -> float:
    """KoLeo written out: minus the mean log of each row's distance to its nearest other row (at least floor)."""
    rows = z.tolist()
    nearest = [min(math.dist(a, b) for j, b in enumerate(rows) if j != i) for i, a in enumerate(rows)]
    return -sum(math.log(max(d, floor)) for d in nearest) / len(rows)


@pytest.mark.parametrize(("n", "dims"), [(2, 3), (5, 4), (9, 16)])
def test_koleo_matches_the_brute_force_reference(n, dims):
    z = torch.nn.functional.normalize(torch.randn(n, dims, generator=torch.Generator().manual_seed(n)), dim=1)
    assert koleo(z).item() == pytest.approx(koleo_reference(z), rel=1e-5)


def test_koleo_pushes_near_codes_apart_and_leaves_duplicates_and_single_rows_alone():
    z = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1
    ).requires_grad_()
    koleo(z).backward()
    # gradient descent moves the two near rows apart: along -grad, row 0 turns away from row 1 and back
    step = z.detach() - 0.01 * z.grad
    assert torch.dist(step[0], step[1]) > torch.dist(z[0].detach(), z[1].detach())
    twins = torch.tensor([[0.6, 0.8], [0.6, 0.8]], requires_grad=True)
    koleo(twins).backward()
    assert koleo(twins.detach()).item() == pytest.approx(-math.log(1e-3))
    assert torch.equal(twins.grad, torch.zeros(2, 2))  # a duplicate pair sits at the floor: no push
    assert koleo(torch.ones(1, 4)).item() == 0.0


def test_instance_term_adds_koleo_on_the_training_view_within_its_weight():
    gen = torch.Generator().manual_seed(4)
    u, v = torch.randn(6, 8, generator=gen) * 2, torch.randn(6, 8, generator=gen) * 2
    z = torch.nn.functional.normalize(torch.tanh(u), dim=1)
    expected = 0.5 * (nt_xent_reference(u, v, 0.2) + 3.0 * koleo_reference(z))
    assert InstanceContrast(0.5, 0.2, koleo=3.0)(u, v).item() == pytest.approx(expected, rel=1e-5)
    assert build_instance("bank", 1.0, 0.2, 10, 8, 0, koleo=2.0).koleo == 2.0


def _spread(model: torch.nn.Module, images: np.ndarray) -> tuple[float, int]:
    """KoLeo of the images' unit tanh outputs (lower: more spread) and their number of distinct codes."""
    with torch.no_grad():
        u = model(normalise(torch.from_numpy(images)))
    return koleo(unit_codes(u)).item(), len(torch.unique(u >= 0, dim=0))


def test_koleo_spreads_the_codes_of_a_trained_model():
    data, images = _fashion(256)
    plain = _train(data, instance=1.0)
    spread = _train(data, instance=1.0, instance_koleo=3.0)
    assert all(math.isfinite(r["loss"]) for r in spread.history)
    (k_plain, distinct_plain), (k_spread, distinct_spread) = (
        _spread(plain.model, images),
        _spread(spread.model, images),
    )
    # KoLeo 1.10 against 1.51, 189 against 125 distinct codes of 256 when written
    assert k_spread < k_plain - 0.2 and distinct_spread > 1.3 * distinct_plain
