"""Training loop: optimisers, schedules, resume after a crash gives the uninterrupted result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.models import ModelSpec
from ml.train import (
    TrainConfig,
    TrainData,
    cosine_with_warmup,
    fit_main_epochs,
    make_schedule,
    train_hashing_model,
)

TINY_SPEC = dict(bits=16, num_classes=3, overrides={"depth": 1, "embed_dim": 32, "num_heads": 2})


def _data(n: int = 96) -> TrainData:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = (rng.integers(0, 40, (n, 1, 28, 28)) + (y * 100)[:, None, None, None]).astype(np.uint8)
    lab = np.eye(3, dtype=bool)[y]
    return TrainData(x, lab, x[:12], lab[:12], x[12:], lab[12:])


def test_schedule_warms_up_then_decays():
    values = [cosine_with_warmup(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert values[-1] < 0.01


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "sgd"])
def test_each_optimizer_trains(optimizer):
    cfg = TrainConfig(
        epochs=2,
        batch_size=32,
        optimizer=optimizer,
        lr=3e-3 if optimizer != "sgd" else 3e-2,
        warmup_steps=1,
        augment=False,
    )
    res = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None)
    assert np.isfinite(res.final_loss) and res.history[-1]["loss"] < res.history[0]["loss"]


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        train_hashing_model(
            ModelSpec(**TINY_SPEC), TrainConfig(optimizer="lamb"), _data(), torch.device("cpu")
        )


@pytest.mark.parametrize(
    "extra",
    [
        {"loss": "hashnet"},
        {"loss": "csq", "classifier": 1.0, "label_smoothing": 0.1, "erase": 0.5},
        {"loss": "csq", "ema": 0.9},
        {"loss": "csq", "instance": 0.5},
        {"loss": "csq", "instance": 0.5, "instance_loss": "bank", "instance_bits": 4},
        {"loss": "csq", "instance": 0.5, "instance_loss": "moco", "instance_bits": 4},
    ],
    ids=[
        "hashnet",
        "csq+classifier+erase",
        "csq+ema",
        "csq+instance",
        "csq+instance-bank",
        "csq+instance-moco",
    ],
)
def test_resume_after_crash_matches_uninterrupted_run(extra):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, warmup_steps=2, **extra)
    full = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None)

    saved: list[bytes] = []

    class Crash(Exception):
        pass

    def crash_after_first(state: bytes) -> None:
        saved.append(state)
        raise Crash

    with pytest.raises(Crash):
        train_hashing_model(
            ModelSpec(**TINY_SPEC),
            cfg,
            _data(),
            torch.device("cpu"),
            log=lambda _: None,
            checkpoint=crash_after_first,
        )
    resumed = train_hashing_model(
        ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None, resume=saved[0]
    )
    assert resumed.resumed_from_epoch == 1
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history])
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_auxiliary_classifier_and_erasing_change_training_and_stay_seeded():
    base = TrainConfig(epochs=1, batch_size=32, lr=3e-3, warmup_steps=1)
    plain = train_hashing_model(
        ModelSpec(**TINY_SPEC), base, _data(), torch.device("cpu"), log=lambda _: None
    )
    with_aux = TrainConfig(
        epochs=1, batch_size=32, lr=3e-3, warmup_steps=1, classifier=1.0, label_smoothing=0.1, erase=0.5
    )
    a = train_hashing_model(
        ModelSpec(**TINY_SPEC), with_aux, _data(), torch.device("cpu"), log=lambda _: None
    )
    b = train_hashing_model(
        ModelSpec(**TINY_SPEC), with_aux, _data(), torch.device("cpu"), log=lambda _: None
    )
    assert (
        a.history[0]["loss"] > plain.history[0]["loss"]
    )  # the cross-entropy term (>= 0.1 smoothing floor) is added
    assert a.history[0]["loss"] == b.history[0]["loss"]


def test_weight_ema_changes_the_kept_weights_not_the_optimisation():
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, warmup_steps=1)
    plain = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None)
    cfg.ema = 0.9
    ema = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None)
    # the same optimisation (identical losses), but other weights kept
    assert [r["loss"] for r in ema.history] == [r["loss"] for r in plain.history]
    w_plain, w_ema = (r.model.state_dict()["head.4.weight"] for r in (plain, ema))
    assert not torch.equal(w_plain, w_ema)
    with pytest.raises(ValueError, match="ema decay"):
        train_hashing_model(ModelSpec(**TINY_SPEC), TrainConfig(ema=1.0), _data(), torch.device("cpu"))


def test_bad_erase_probability_is_named():
    with pytest.raises(ValueError, match="erase probability"):
        train_hashing_model(ModelSpec(**TINY_SPEC), TrainConfig(erase=1.5), _data(), torch.device("cpu"))


def test_clean_epochs_follow_the_schedule_on_the_stored_images():
    def run(**kw):
        cfg = TrainConfig(batch_size=32, **kw)
        return train_hashing_model(
            ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None
        )

    augmented = run(epochs=1, lr=3e-3, warmup_steps=1, erase=0.5)
    then_clean = run(epochs=1, lr=3e-3, warmup_steps=1, erase=0.5, clean_epochs=1, clean_lr=1e-3)
    assert len(then_clean.history) == 2 and then_clean.history[0]["loss"] == augmented.history[0]["loss"]
    # clean epochs alone = training without augmentation on a warm-up-free cosine from clean_lr
    all_clean = run(epochs=0, clean_epochs=2, clean_lr=1e-3, lr=1e-3, erase=0.5)
    never_augmented = run(epochs=2, lr=1e-3, warmup_steps=0, augment=False)
    assert [r["loss"] for r in all_clean.history] == [r["loss"] for r in never_augmented.history]
    for (k, a), b in zip(
        all_clean.model.state_dict().items(), never_augmented.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="clean_epochs must be >= 0"):
        run(clean_epochs=-1)


def test_schedule_decays_again_from_clean_lr_over_the_clean_steps():
    cfg = TrainConfig(lr=2e-3, clean_lr=5e-4, warmup_steps=10)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_schedule(cfg, opt, total_steps=100, clean_steps=20)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[9] == pytest.approx(2e-3) and lrs[99] < 1e-5  # the main schedule as before
    assert lrs[100] == pytest.approx(5e-4) and lrs[110] == pytest.approx(2.5e-4) and lrs[119] < 1e-5


def test_time_budget_stops_before_an_epoch_that_would_overrun():
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-3, warmup_steps=1, time_budget_s=1e-6)
    res = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None)
    assert len(res.history) == 1
    cfg.clean_epochs, lines = 1, []
    res = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lines.append)
    # the main epochs are re-planned first (down to the one done), then the clean epoch does not fit either
    assert "re-planned to 1 main epochs instead of 3" in lines[-2]
    assert (
        len(res.history) == 1
        and "stopping after epoch 1/2" in lines[-1]
        and "(1 clean epochs not run)" in lines[-1]
    )


@pytest.mark.parametrize(
    ("done", "epoch_s", "remaining_s", "kept"),
    [
        (1, 60.0, 10_000.0, 22),  # everything fits: the plan stands (never more epochs than planned)
        (1, 60.0, 1_260.0, 19),  # 21 more epochs fit: 19 main (1 done + 18 more) + 3 clean
        (
            5,
            60.0,
            100.0,
            5,
        ),  # not even the clean epochs fit: never fewer than done (the stop rule cuts the rest)
        (1, 0.0, 0.0, 22),  # no timing yet
    ],
)
def test_fit_main_epochs_keeps_the_clean_epochs_in_the_budget(done, epoch_s, remaining_s, kept):
    assert fit_main_epochs(22, done, 3, epoch_s, remaining_s) == kept


class _Clock:
    """A perf_counter that advances one second per call: a deterministic training time."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self) -> float:
        self.t += 1.0
        return self.t


def test_time_budget_re_plans_the_main_epochs_so_the_clean_ones_run(monkeypatch):
    cfg = TrainConfig(
        epochs=6, clean_epochs=2, clean_lr=1e-3, batch_size=32, lr=3e-3, warmup_steps=1, time_budget_s=20
    )
    monkeypatch.setattr("ml.train.time", _Clock())
    lines: list[str] = []
    res = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lines.append)
    planned = [line for line in lines if line.startswith("re-planned")]
    assert planned and res.main_epochs < 6 and not any(line.startswith("stopping") for line in lines)
    assert len(res.history) == res.main_epochs + 2 and lines[-1].startswith(
        f"epoch {res.main_epochs + 2}/{res.main_epochs + 2} (clean)"
    )
    # the main schedule was shortened: right after the last main epoch the clean cosine starts from clean_lr (as
    # planned, the main cosine would still be near its middle), and it decays to 0 at the end
    lrs = [r["lr"] for r in res.history]
    assert lrs[res.main_epochs - 1] == pytest.approx(1e-3) and lrs[-1] < 1e-5
    monkeypatch.undo()
    # resuming from a checkpoint after the re-plan continues the re-planned run
    saved: list[bytes] = []
    monkeypatch.setattr("ml.train.time", _Clock())
    train_hashing_model(
        ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None, checkpoint=saved.append
    )
    monkeypatch.setattr("ml.train.time", _Clock())
    resumed = train_hashing_model(
        ModelSpec(**TINY_SPEC),
        cfg,
        _data(),
        torch.device("cpu"),
        log=lambda _: None,
        resume=saved[res.main_epochs - 1],
    )
    assert resumed.main_epochs == res.main_epochs and len(resumed.history) == len(res.history)
    assert [r["lr"] for r in resumed.history] == pytest.approx(lrs)


class _Planted:
    """A pickle payload: unpickling it calls ``Path.touch`` on a marker file (stands in for arbitrary code)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_planted_pickle_in_the_training_state_is_refused(tmp_path):
    import io

    from ml.train import UnsafeStateError, load_state

    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save({"model": {}, "epoch": 1, "payload": _Planted(marker)}, buf)
    planted = buf.getvalue()
    torch.load(io.BytesIO(planted), weights_only=False)  # the full unpickler would run it ...
    assert marker.exists()
    marker.unlink()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, warmup_steps=2)
    with pytest.raises(UnsafeStateError, match="refused to load the saved training state"):
        train_hashing_model(
            ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None, resume=planted
        )
    assert not marker.exists()  # ... the training loop never does
    with pytest.raises(UnsafeStateError):
        load_state(b"not a checkpoint", torch.device("cpu"))


def _scripted_validation(monkeypatch, values: list[float]) -> None:
    """Validation mAP@100 per epoch read from ``values`` (so that stagnation is deterministic)."""
    scores = iter(values)
    monkeypatch.setattr("ml.train.validation_map", lambda *args: next(scores))


@pytest.mark.parametrize("clean_epochs", [0, 2])
def test_early_stopping_ends_the_schedule_after_patience_epochs_without_progress(monkeypatch, clean_epochs):
    cfg = TrainConfig(
        epochs=8, clean_epochs=clean_epochs, batch_size=32, lr=3e-3, warmup_steps=1, patience=2, augment=False
    )
    _scripted_validation(monkeypatch, [0.5, 0.6, 0.55, 0.58, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    lines: list[str] = []
    res = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lines.append)
    # best at epoch 2; epochs 3 and 4 do not beat it, so the main schedule ends after epoch 4
    assert res.main_epochs == 4 and len(res.history) == 4 + clean_epochs
    assert [line for line in lines if line.startswith("early stop after epoch 4")]
    if clean_epochs:  # the clean epochs still run, from clean_lr, and may hold the best weights
        assert res.history[4]["lr"] < cfg.lr and res.best_epoch == 5
    else:
        assert res.best_epoch == 2 and res.best_val_map == pytest.approx(0.6)


def test_no_early_stopping_while_validation_improves_or_when_off(monkeypatch):
    rising = [0.1 * k for k in range(1, 9)]
    for patience, values in ((2, rising), (0, [0.5] * 8)):
        _scripted_validation(monkeypatch, values)
        cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, warmup_steps=1, patience=patience, augment=False)
        res = train_hashing_model(
            ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None
        )
        assert res.main_epochs == 4 and len(res.history) == 4


def test_warm_up_is_capped_at_a_tenth_of_a_short_schedule():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = make_schedule(TrainConfig(warmup_steps=200, lr=1.0), opt, total_steps=50)
    factor = sched.lr_lambdas[0]
    assert factor.warmup_steps == 5 and factor(4) == pytest.approx(1.0) and factor(49) < 0.01
    long = make_schedule(TrainConfig(warmup_steps=200, lr=1.0), opt, total_steps=5000).lr_lambdas[0]
    assert long.warmup_steps == 200


def test_val_every_validates_every_nth_epoch_and_the_last(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr("ml.train.validation_map", lambda *args: calls.append(1) or 0.1 * len(calls))
    cfg = TrainConfig(
        epochs=7, clean_epochs=1, batch_size=32, lr=3e-3, warmup_steps=1, val_every=3, augment=False
    )
    res = train_hashing_model(ModelSpec(**TINY_SPEC), cfg, _data(), torch.device("cpu"), log=lambda _: None)
    validated = [r["epoch"] for r in res.history if not np.isnan(r["val_map"])]
    assert validated == [3, 6, 7, 8] and len(calls) == 4 and res.best_epoch == 8
