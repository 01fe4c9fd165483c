"""Transfer training: a frozen pretrained backbone, its features cached (``ml.features``), and a hash head
(with the backbone's last ``train_blocks`` blocks) trained on them in seconds to minutes on a CPU.

The model is an ordinary hashing model (``vts-cls`` with a ``transfer-*`` preset), built by ``build_model`` and
saved whole, so its codes come from ``ml.encode.encode_images`` like any other's; training and validation read
the cached features of the same rows instead of running the frozen front every epoch. No augmentation, EMA,
clean epochs or resuming: the features are of the stored images, and a rerun costs the head's training only.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ml.data import iterate_batches
from ml.device import bf16_autocast
from ml.encode import pack_outputs
from ml.features import FileStore, cached_features, frozen_split, tail
from ml.losses import build_loss
from ml.losses.auxiliary import AuxiliaryClassifier
from ml.metrics import evaluate_retrieval
from ml.models import ModelSpec, build_model
from ml.train import TrainResult, make_optimizer, make_schedule
from ml.train_config import TrainConfig


@dataclass
class TransferRows:
    """One split: catalogue ``row_ids``, bool multi-hot ``labels`` (n, C), ``load(positions)`` -> the uint8
    images (m, c, s, s) of those rows (called for rows whose features are not cached yet), and int64 image
    hashes (a changed image under the same row_id is extracted again)."""

    row_ids: np.ndarray
    labels: np.ndarray
    load: Callable[[np.ndarray], np.ndarray]
    image_hashes: np.ndarray | None = None


@dataclass
class TransferData:
    """The splits of a transfer run and where their features are cached."""

    root: FileStore  # a storage.fs.StorageRoot
    catalogue: str
    train: TransferRows
    val_query: TransferRows
    val_db: TransferRows


@dataclass
class TransferResult(TrainResult):
    cache_key: str = ""
    extracted: int = 0  # rows whose features were computed in this run (the others came from the cache)
    feature_seconds: float = 0.0  # reading and extracting the features of every split


def is_transfer(spec: ModelSpec) -> bool:
    """Whether ``spec`` trains on a frozen backbone (``train_transfer``) rather than end to end."""
    return frozen_split(spec) is not None


def trainable_part(model: nn.Module, k: int) -> list[nn.Module]:
    """The modules that train: the hash head, and for ``k > 0`` the last ``k`` blocks and the final norm."""
    bb = model.backbone
    return [model.head] + ([*bb.blocks[len(bb.blocks) - k :], bb.norm] if k else [])


@torch.inference_mode()
def encode_features(model: nn.Module, features: np.ndarray, k: int, device: torch.device, batch: int = 1024):
    """Packed codes of cached ``front`` features: the codes ``encode_images`` gives for the rows' images (up to
    the float16 rounding of cached tokens when ``k > 0``)."""
    was_training = model.training
    model.eval()
    amp = bf16_autocast(device)
    chunks = []
    for s in range(0, len(features), batch):
        f = torch.from_numpy(features[s : s + batch]).to(device).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            chunks.append(pack_outputs(tail(model, f, k).float()))
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, model.spec.bits // 8), np.uint8)


def train_transfer(
    spec: ModelSpec,
    cfg: TrainConfig,
    data: TransferData,
    device: torch.device,
    log: Callable[[str], None] = print,
    progress: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    checkpoint: Callable[[bytes], None] | None = None,
    resume: bytes | None = None,
) -> TransferResult:
    """Train the head (and last blocks) of the transfer model ``spec`` on cached features; keep the epoch with
    the best validation mAP@100 (codes of the validation queries against the validation database).

    Called as ``ml.train.train_hashing_model`` is; ``checkpoint`` and ``resume`` are accepted and unused: a rerun
    reads the cached features and retrains the head, in seconds to minutes."""
    k = frozen_split(spec)
    if k is None:
        raise ValueError(f"{spec.model} preset {spec.preset!r} is not a transfer preset (no train_blocks)")
    if cfg.instance:
        raise ValueError(
            f"instance term (weight {cfg.instance}): transfer training runs on cached features of the stored "
            "images, with no second view to compare; set instance to 0"
        )
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(spec).to(device)
    start = time.perf_counter()
    feats, extracted, key = {}, 0, ""
    for name in ("train", "val_query", "val_db"):
        rows: TransferRows = getattr(data, name)
        feats[name], cache = cached_features(
            data.root, data.catalogue, model, rows.row_ids, rows.load, device, progress, rows.image_hashes
        )
        extracted, key = extracted + cache.extracted, cache.parts[-1]
    feature_seconds = time.perf_counter() - start
    total = sum(len(f) for f in feats.values())
    log(f"features {key}: {extracted} of {total} rows extracted, the rest cached; {feature_seconds:.1f}s")
    n = len(feats["train"])
    if n == 0:
        raise ValueError("no training images")
    model.requires_grad_(False)
    parts = trainable_part(model, k)
    for part in parts:
        part.requires_grad_(True)
    loss_fn = build_loss(
        cfg.loss, spec.num_classes, spec.bits, num_train=n, seed=cfg.seed, **cfg.loss_params
    ).to(device)
    aux = AuxiliaryClassifier(spec.bits, spec.num_classes, cfg.classifier, cfg.label_smoothing, cfg.seed).to(
        device
    )
    params = [p for part in parts for p in part.parameters()] + list(loss_fn.parameters())
    params += list(aux.parameters()) if cfg.classifier else []
    opt = make_optimizer(cfg, params)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = make_schedule(cfg, opt, steps_per_epoch * cfg.epochs)
    x_train = torch.from_numpy(feats["train"])
    y_train = torch.from_numpy(data.train.labels).float()
    use_amp = cfg.amp and bf16_autocast(device) and k > 0
    history: list[dict] = []
    best_val, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        for part in parts:
            part.train()
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(epoch - 1)
        t0, losses = time.perf_counter(), []
        for idx in tqdm(
            iterate_batches(n, cfg.batch_size, gen), total=steps_per_epoch, disable=not progress, leave=False
        ):
            f = x_train[idx].to(device).float()
            y = y_train[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                u = tail(model, f, k)
            loss = loss_fn(u.float(), y, idx.to(device))
            if cfg.classifier:
                loss = loss + aux(u, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch} ({cfg.loss})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - t0
        q = encode_features(model, feats["val_query"], k, device)
        db = encode_features(model, feats["val_db"], k, device)
        val = evaluate_retrieval(
            q, data.val_query.labels, db, data.val_db.labels, spec.bits, map_ks=(100,), precision_ks=(1,)
        ).map_at["100"]
        row = dict(
            epoch=epoch,
            loss=float(np.mean(losses)),
            lr=opt.param_groups[0]["lr"],
            images_per_s=n / seconds,
            seconds=seconds,
            val_map=val,
        )
        history.append(row)
        log(f"epoch {epoch}/{cfg.epochs}: loss {row['loss']:.4f}, val mAP@100 {val:.4f}, {seconds:.1f}s")
        if val > best_val:
            best_val, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
        if on_epoch:
            on_epoch(row)
    model.load_state_dict(best_state)
    model.requires_grad_(True)
    model.eval()
    return TransferResult.of(
        model,
        history,
        best_epoch,
        best_val,
        n,
        start,
        main_epochs=cfg.epochs,
        cache_key=key,
        extracted=extracted,
        feature_seconds=feature_seconds,
    )
