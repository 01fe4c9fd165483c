"""Seeded training loop for hashing models: model selection on a held-out validation slice, resumable."""

from __future__ import annotations

import copy
import io
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ml.data import augment, iterate_batches, normalise, random_eraser
from ml.device import bf16_autocast, training_attention
from ml.encode import encode_images
from ml.losses import build_loss
from ml.losses.auxiliary import AuxiliaryClassifier
from ml.losses.instance import InstanceContrast, build_instance
from ml.metrics import evaluate_retrieval
from ml.models import ModelSpec, build_model, count_parameters
from ml.progress import progress_bar
from ml.timm_compat import import_timm
from ml.train_config import OPTIMIZERS, SCHEDULES, TrainConfig
from ml.views import copy_view


@dataclass
class TrainData:
    """uint8 images (n, c, h, w) and bool multi-hot labels (n, C) for training and validation."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_query_images: np.ndarray
    val_query_labels: np.ndarray
    val_db_images: np.ndarray
    val_db_labels: np.ndarray


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict]
    best_epoch: int
    best_val_map: float
    final_loss: float
    train_images_per_s: float
    seconds: float
    parameters: int
    resumed_from_epoch: int = 0
    main_epochs: int = (
        0  # the augmented epochs as run (fewer than planned where a time budget re-planned them)
    )

    @classmethod
    def of(
        cls,
        model: nn.Module,
        history: list[dict],
        best_epoch: int,
        best_val: float,
        n: int,
        start: float,
        **extra,
    ) -> TrainResult:
        """The result of a run that trained ``model`` (its best weights loaded) on ``n`` images per epoch since
        ``start`` (``time.perf_counter``); ``extra``: the remaining fields of ``cls``."""
        train_seconds = sum(r["seconds"] for r in history)
        return cls(
            model=model,
            history=history,
            best_epoch=best_epoch,
            best_val_map=best_val,
            final_loss=history[-1]["loss"] if history else float("nan"),
            train_images_per_s=n * len(history) / train_seconds if train_seconds else 0.0,
            seconds=time.perf_counter() - start,
            parameters=count_parameters(model),
            **extra,
        )


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW/Adam/RMSprop/SGD; weight decay on matrices only (not on biases, norms, embeddings' 1-d params)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {OPTIMIZERS}")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


class LrFactor:
    """The LR multiplier of step ``s``: ``cfg.schedule`` over the ``main_steps`` of the main epochs, then
    ``clean_steps`` of cosine decay from ``cfg.clean_lr`` to 0 (the clean epochs). A callable object, not a closure,
    so that ``LambdaLR.state_dict`` keeps ``main_steps`` when a time budget re-plans the main epochs."""

    def __init__(self, cfg: TrainConfig, main_steps: int, clean_steps: int = 0):
        self.schedule, self.warmup_steps, self.clean_ratio = (
            cfg.schedule,
            min(cfg.warmup_steps, main_steps // 10),  # short schedules (small catalogues) warm up a tenth
            cfg.clean_lr / cfg.lr,
        )
        self.main_steps, self.clean_steps = main_steps, clean_steps

    def __call__(self, s: int) -> float:
        if self.clean_steps and s >= self.main_steps:  # the clean epochs
            return self.clean_ratio * cosine_with_warmup(s - self.main_steps, self.clean_steps, 0)
        if self.schedule == "constant":
            return min(1.0, (s + 1) / max(1, self.warmup_steps))
        return cosine_with_warmup(s, self.main_steps, self.warmup_steps)


def make_schedule(
    cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int, clean_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """``cfg.schedule`` over the ``total_steps`` of the main epochs, then ``clean_steps`` of cosine decay from
    ``cfg.clean_lr`` to 0 (the clean epochs): ``LrFactor``."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of {SCHEDULES}")
    return torch.optim.lr_scheduler.LambdaLR(opt, LrFactor(cfg, total_steps, clean_steps))


def replan_main_steps(sched: torch.optim.lr_scheduler.LambdaLR, main_steps: int) -> None:
    """End the main schedule after ``main_steps`` (a time budget or early stopping re-planned it): the clean
    epochs, if any, start at the next step, and the current learning rate follows the new plan."""
    factor = sched.lr_lambdas[0]
    factor.main_steps = main_steps
    for group, base_lr in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
        group["lr"] = base_lr * factor(sched.last_epoch)


def fit_main_epochs(
    main_epochs: int, done: int, clean_epochs: int, epoch_seconds: float, remaining_s: float
) -> int:
    """The main epochs to keep, after ``done`` of them, so that the rest of them and the ``clean_epochs`` fit in
    ``remaining_s`` at ``epoch_seconds`` each: never more than planned, never fewer than done."""
    fits = math.floor(remaining_s / epoch_seconds) if epoch_seconds > 0 else main_epochs + clean_epochs
    return max(done, min(main_epochs, done + fits - clean_epochs))


def weight_ema(model: nn.Module, decay: float) -> nn.Module | None:
    """timm's ``ModelEmaV3`` of ``model`` (parameters and BN buffers) with decay warm-up, or None for decay 0.
    Warm-up (1 - (1 + step)^-3/4, capped at ``decay``) keeps the first epochs' average from the random init."""
    if decay == 0:
        return None
    if not 0 < decay < 1:
        raise ValueError(f"ema decay must lie in [0, 1), got {decay}")
    return import_timm().utils.ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=0.75)


def validation_pick(
    n_validation: int, n_train: int, queries: int, database: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, sorted positions of the validation queries (among the held-out validation rows) and of the
    validation database (among the training rows): model selection never sees the query split."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_validation)[:queries]), np.sort(rng.permutation(n_train)[:database])


def validation_map(model: nn.Module, data: TrainData, bits: int, device: torch.device, batch: int) -> float:
    """mAP@100 of validation queries against the validation database (never the query split)."""
    q = encode_images(model, data.val_query_images, device, batch)
    db = encode_images(model, data.val_db_images, device, batch)
    result = evaluate_retrieval(
        q, data.val_query_labels, db, data.val_db_labels, bits, map_ks=(100,), precision_ks=(1,)
    )
    return result.map_at["100"]


def _state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class UnsafeStateError(ValueError):
    """Saved training state that holds more than tensors and plain values: refused, never unpickled."""


def load_state(data: bytes, device: torch.device) -> dict:
    """A training state written by ``_state_bytes``, read with torch's weights-only unpickler: tensors, dicts,
    lists, tuples, numbers and strings only, so a planted pickle cannot run code in this process."""
    import pickle

    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeStateError(f"refused to load the saved training state ({reason})") from None


def instance_split(bits: int, cfg: TrainConfig) -> int:
    """The bits the hashing loss and the classifier train (the first ones): all but ``cfg.instance_bits``."""
    if not 0 <= cfg.instance_bits < bits:
        raise ValueError(
            f"instance_bits must be in [0, {bits}) for {bits}-bit codes, got {cfg.instance_bits}"
        )
    if cfg.instance_bits and not cfg.instance:
        raise ValueError(f"instance_bits={cfg.instance_bits} needs the instance term (instance > 0)")
    return bits - cfg.instance_bits


def train_hashing_model(
    spec: ModelSpec,
    cfg: TrainConfig,
    data: TrainData,
    device: torch.device,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    checkpoint: Callable[[bytes], None] | None = None,
    resume: bytes | None = None,
) -> TrainResult:
    """Train ``spec`` with ``cfg``; keep the weights of the epoch with the best validation mAP@100.

    After every epoch the full training state (model, optimiser, schedule, loss buffers such as memory
    banks, RNG states, history) is handed to ``checkpoint`` as bytes; passing those bytes back as ``resume``
    continues from the next epoch and gives the same result as an uninterrupted run."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(data.train_images)
    if n == 0:
        raise ValueError("no training images")
    model = build_model(spec).to(device)
    label_bits = instance_split(spec.bits, cfg)
    loss_fn = build_loss(
        cfg.loss, spec.num_classes, label_bits, num_train=n, seed=cfg.seed, **cfg.loss_params
    ).to(device)
    aux = AuxiliaryClassifier(label_bits, spec.num_classes, cfg.classifier, cfg.label_smoothing, cfg.seed).to(
        device
    )
    eraser = random_eraser(cfg.erase, device)
    # checks the weights and temperature
    instance = InstanceContrast(cfg.instance, cfg.instance_temperature, cfg.instance_koleo)
    if cfg.instance:
        dims = cfg.instance_bits or spec.bits
        instance = build_instance(
            cfg.instance_loss,
            cfg.instance,
            cfg.instance_temperature,
            n,
            dims,
            cfg.seed,
            model,
            koleo=cfg.instance_koleo,
        )
    instance = instance.to(device)
    # the copy-style views draw from their own generator: batches and light augmentation stay those of instance = 0
    view_gen = torch.Generator().manual_seed(cfg.seed + 1)
    if cfg.clean_epochs < 0 or cfg.clean_lr <= 0:
        raise ValueError(
            f"clean_epochs must be >= 0 and clean_lr > 0, got {cfg.clean_epochs}, {cfg.clean_lr}"
        )
    main_epochs = cfg.epochs  # the augmented epochs; a time budget may re-plan fewer (``fit_main_epochs``)
    ema = weight_ema(model, cfg.ema)
    params = (
        list(model.parameters())
        + list(loss_fn.parameters())
        + (list(aux.parameters()) if cfg.classifier else [])
    )
    opt = make_optimizer(cfg, params)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = make_schedule(cfg, opt, steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.clean_epochs)
    history: list[dict] = []
    best_val, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    first_epoch = 1
    if resume is not None:
        state = load_state(resume, device)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        if "classifier" in state:
            aux.load_state_dict(state["classifier"])
        if "instance" in state:
            instance.load_state_dict(state["instance"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        if "python_rng" in state:
            random.setstate(state["python_rng"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        gen.set_state(state["generator"])
        if "view_generator" in state:
            view_gen.set_state(state["view_generator"])
        torch.set_rng_state(state["torch_rng"])
        history, best_val, best_epoch, best_state = (
            state["history"],
            state["best_val"],
            state["best_epoch"],
            state["best_model"],
        )
        first_epoch = state["epoch"] + 1
        main_epochs = state.get("main_epochs", cfg.epochs)
        log(f"resuming after epoch {state['epoch']} (best val mAP@100 {best_val:.4f} at epoch {best_epoch})")
    images = torch.from_numpy(data.train_images)
    labels = torch.from_numpy(data.train_labels).float()
    use_amp = cfg.amp and bf16_autocast(device)
    start = time.perf_counter()
    stop = False
    epoch = first_epoch
    while epoch <= main_epochs + cfg.clean_epochs:
        total_epochs = main_epochs + cfg.clean_epochs
        model.train()
        augmenting = epoch <= main_epochs
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(epoch - 1)
        t0 = time.perf_counter()
        losses = []
        bar = progress_bar(n, f"epoch {epoch}/{total_epochs}", "img", enabled=progress)
        batches = enumerate(iterate_batches(n, cfg.batch_size, gen), start=(epoch - 1) * steps_per_epoch + 1)
        with training_attention(model, device, use_amp):
            for step, idx in batches:
                x = normalise(images[idx].to(device, non_blocking=True))
                # the instance term's copy-style view, in the clean epochs too (x itself stays as stored there)
                views = copy_view(x, view_gen) if cfg.instance else None
                if cfg.augment and augmenting:
                    x = augment(x, gen)
                if eraser is not None and augmenting:
                    x = eraser(x)
                y = labels[idx].to(device, non_blocking=True)
                inputs = x if views is None else torch.cat([x, views])  # both views in one forward
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    u = model(inputs)
                    keys = None if views is None else instance.keys(model, inputs)  # a momentum encoder's
                u, u_view = (u, None) if views is None else u.split(len(idx))
                loss = loss_fn(u[:, :label_bits].float(), y, idx.to(device))
                if cfg.classifier:
                    loss = loss + aux(u[:, :label_bits], y)
                if u_view is not None:
                    first = label_bits if cfg.instance_bits else 0
                    keys = None if keys is None else keys[:, first:]
                    loss = loss + instance(u[:, first:], u_view[:, first:], idx.to(device), keys)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss {loss.item()} at epoch {epoch} ({cfg.loss} on {spec.model})"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update(model, step=step)
                losses.append(loss.item())
                bar.update(len(idx))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        kept = model if ema is None else ema.module  # the weights validated and kept
        validate = epoch % max(1, cfg.val_every) == 0 or epoch in (main_epochs, total_epochs)
        val = validation_map(kept, data, spec.bits, device, cfg.eval_batch_size) if validate else math.nan
        row = dict(
            epoch=epoch,
            loss=float(np.mean(losses)),
            lr=opt.param_groups[0]["lr"],
            images_per_s=n / epoch_seconds,
            seconds=epoch_seconds,
            val_map=val,
        )
        history.append(row)
        log(
            f"epoch {epoch}/{total_epochs}{'' if augmenting else ' (clean)'}: loss {row['loss']:.4f}, "
            + (f"val mAP@100 {val:.4f}, " if validate else "")
            + f"{row['images_per_s']:.0f} img/s, {epoch_seconds:.0f}s"
        )
        if val > best_val:
            best_val, best_epoch, best_state = val, epoch, copy.deepcopy(kept.state_dict())
        if on_epoch:
            on_epoch(row)
        now = time.perf_counter()
        if (
            cfg.time_budget_s and augmenting
        ):  # keep the clean epochs and a full decay of the main schedule in the budget
            wall = (now - start) / (
                epoch - first_epoch + 1
            )  # mean epoch so far, validation and checkpoints included
            planned = fit_main_epochs(
                main_epochs, epoch, cfg.clean_epochs, wall, cfg.time_budget_s - (now - start)
            )
            if planned < main_epochs:
                log(
                    f"re-planned to {planned} main epochs instead of {main_epochs} ({wall:.0f}s per epoch): with the "
                    f"{cfg.clean_epochs} clean epochs they fit the {cfg.time_budget_s:.0f}s training budget"
                )
                main_epochs, total_epochs = planned, planned + cfg.clean_epochs
                replan_main_steps(sched, steps_per_epoch * main_epochs)
        stalled = validate and epoch - best_epoch >= cfg.patience
        if cfg.patience and augmenting and epoch < main_epochs and stalled:
            log(
                f"early stop after epoch {epoch}: no better validation mAP@100 for {cfg.patience} epochs (best "
                f"{best_val:.4f} at epoch {best_epoch})"
                + (f"; the {cfg.clean_epochs} clean epochs follow" if cfg.clean_epochs else "")
            )
            main_epochs, total_epochs = epoch, epoch + cfg.clean_epochs
            replan_main_steps(sched, steps_per_epoch * main_epochs)
        if cfg.time_budget_s and epoch < total_epochs and now - start + epoch_seconds > cfg.time_budget_s:
            skipped = min(cfg.clean_epochs, total_epochs - epoch)
            log(
                f"stopping after epoch {epoch}/{total_epochs}: the next epoch would end past the "
                f"{cfg.time_budget_s:.0f}s training budget"
                + (f" ({skipped} clean epochs not run)" if skipped else "")
            )
            stop = True
        if checkpoint:
            checkpoint(
                _state_bytes(
                    dict(
                        epoch=epoch,
                        main_epochs=main_epochs,
                        model=model.state_dict(),
                        loss=loss_fn.state_dict(),
                        classifier=aux.state_dict(),
                        instance=instance.state_dict(),
                        optimizer=opt.state_dict(),
                        schedule=sched.state_dict(),
                        ema=None if ema is None else ema.module.state_dict(),
                        generator=gen.get_state(),
                        view_generator=view_gen.get_state(),
                        torch_rng=torch.get_rng_state(),
                        python_rng=random.getstate(),
                        history=history,
                        best_val=best_val,
                        best_epoch=best_epoch,
                        best_model=best_state,
                    )
                )
            )
        if stop:
            break
        epoch += 1
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult.of(
        model,
        history,
        best_epoch,
        best_val,
        n,
        start,
        resumed_from_epoch=first_epoch - 1,
        main_epochs=main_epochs,
    )
