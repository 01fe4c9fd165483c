"""Seeded training loop for hashing models with model selection on a held-out validation slice."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ml.data import augment, iterate_batches, normalise
from ml.encode import encode_images
from ml.losses import build_loss
from ml.metrics import evaluate_retrieval
from ml.models import ModelSpec, build_model, count_parameters


@dataclass
class TrainConfig:
    """Optimisation recipe. Defaults are the quick CPU profile (README, "Profiles")."""

    loss: str = "csq"
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 1.0
    augment: bool = True
    seed: int = 0
    eval_batch_size: int = 512
    loss_params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


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


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def validation_map(model: nn.Module, data: TrainData, bits: int, device: torch.device, batch: int) -> float:
    """mAP@100 of validation queries against the validation database (never the query split)."""
    q = encode_images(model, data.val_query_images, device, batch)
    db = encode_images(model, data.val_db_images, device, batch)
    result = evaluate_retrieval(q, data.val_query_labels, db, data.val_db_labels, bits, map_ks=(100,), precision_ks=(1,))
    return result.map_at["100"]


def train_hashing_model(
    spec: ModelSpec,
    cfg: TrainConfig,
    data: TrainData,
    device: torch.device,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``spec`` with ``cfg``; keep the weights of the epoch with the best validation mAP@100."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(spec).to(device)
    loss_fn = build_loss(cfg.loss, spec.num_classes, spec.bits, seed=cfg.seed, **cfg.loss_params).to(device)
    params = list(model.parameters()) + list(loss_fn.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    n = len(data.train_images)
    if n == 0:
        raise ValueError("no training images")
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, cfg.warmup_steps))
    images = torch.from_numpy(data.train_images)
    labels = torch.from_numpy(data.train_labels)
    use_amp = device.type == "cuda"
    history: list[dict] = []
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    start = time.perf_counter()
    train_seconds = 0.0
    final_loss = float("nan")
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        losses = []
        bar = tqdm(total=n, desc=f"epoch {epoch}/{cfg.epochs}", unit="img", disable=not progress, leave=False)
        for idx in iterate_batches(n, cfg.batch_size, gen):
            x = normalise(images[idx].to(device))
            if cfg.augment:
                x = augment(x, gen)
            y = labels[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                u = model(x)
            loss = loss_fn(u.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(len(idx))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        final_loss = float(np.mean(losses))
        val = validation_map(model, data, spec.bits, device, cfg.eval_batch_size)
        row = dict(
            epoch=epoch,
            loss=final_loss,
            lr=opt.param_groups[0]["lr"],
            images_per_s=n / epoch_seconds,
            seconds=epoch_seconds,
            val_map=val,
        )
        history.append(row)
        log(
            f"epoch {epoch}/{cfg.epochs}: loss {final_loss:.4f}, val mAP@100 {val:.4f}, "
            f"{row['images_per_s']:.0f} img/s, {epoch_seconds:.0f}s"
        )
        if on_epoch:
            on_epoch(row)
        if val > best[0]:
            best = (val, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best[1],
        best_val_map=best[0],
        final_loss=final_loss,
        train_images_per_s=n * cfg.epochs / train_seconds if train_seconds else 0.0,
        seconds=time.perf_counter() - start,
        parameters=count_parameters(model),
    )
