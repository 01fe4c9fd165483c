"""A short real training run per model on a device: ``python -m bench.training --device cuda --preset paper``.

Runs the production loop (``train_hashing_model``: AdamW, warm-up + cosine, bf16 autocast on CUDA, gradient
clipping, per-epoch validation) on a slice of Fashion-MNIST upscaled to the preset's size, and prints per model
the steps run, train images/s, the loss of the first and last epoch and the validation mAP@100 — proof that
the device path works and a throughput figure, not a quality benchmark (that is ``vitrieve bench quality``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ml.device import resolve_device
from ml.models import MODELS, ModelSpec, default_preset
from ml.train import TrainConfig, TrainData, train_hashing_model

# The loss each model is published with; the VTS papers train with the classic losses (CSQ here).
PAPER_LOSS = {
    "vts": "csq",
    "vts-cls": "csq",
    "xhashnet": "xhashnet",
    "transhash": "transhash",
    "hybridhash": "hybridhash",
}
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def load_slice(source: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded training images (uint8, (n, 1, 28, 28)) and labels of the Fashion-MNIST IDX files."""
    from storage.idx import read_idx

    images = read_idx(f"{source}/train-images-idx3-ubyte.gz")
    labels = read_idx(f"{source}/train-labels-idx1-ubyte.gz")
    pick = np.random.default_rng(seed).permutation(len(images))[:n]
    return images[pick][:, None], labels[pick]


def upscale(images: np.ndarray, size: int, device: torch.device, batch: int = 1024) -> np.ndarray:
    """Bilinear resize of uint8 images to ``size`` px on ``device`` (kept uint8 on the host)."""
    if images.shape[-1] == size:
        return images
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s : s + batch]).to(device).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out[s : s + batch] = y.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return out


def run_model(
    model: str,
    preset: str,
    steps: int,
    batch: int,
    bits: int,
    device: torch.device,
    images: np.ndarray,
    labels: np.ndarray,
    lr: float,
) -> dict:
    """Train ``model`` for about ``steps`` optimiser steps (2 epochs) and report throughput and losses."""
    spec = ModelSpec(model=model, preset=preset, bits=bits, in_chans=1, num_classes=10)
    size = spec.img_size
    n_train = steps * batch // 2
    eye = np.eye(10, dtype=bool)
    x = upscale(images, size, device)
    data = TrainData(
        x[:n_train],
        eye[labels[:n_train]],
        x[n_train : n_train + 500],
        eye[labels[n_train : n_train + 500]],
        x[:2000],
        eye[labels[:2000]],
    )
    cfg = TrainConfig(
        loss=PAPER_LOSS[model], epochs=2, batch_size=batch, lr=lr, warmup_steps=max(1, steps // 10)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = train_hashing_model(spec, cfg, data, device, log=lambda _: None)
    seconds = time.perf_counter() - t0
    hist = result.history
    return dict(
        model=model,
        preset=preset,
        img_size=size,
        device=str(device),
        steps=2 * math.ceil(n_train / batch),
        batch=batch,
        parameters=result.parameters,
        train_images_per_s=round(result.train_images_per_s, 1),
        loss_first_epoch=round(hist[0]["loss"], 4),
        loss_last_epoch=round(hist[-1]["loss"], 4),
        val_map_at_100=round(result.best_val_map, 4),
        seconds=round(seconds, 1),
        peak_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument(
        "--preset", default="paper", help="'paper' (each model's 224 px preset), 'small' or a preset name"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--source", default=FASHION_MNIST, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args()
    device = resolve_device(args.device)
    images, labels = load_slice(args.source, args.steps * args.batch // 2 + 2500)
    rows = []
    for model in args.models:
        preset = default_preset(model, gpu=True) if args.preset == "paper" else args.preset
        row = run_model(model, preset, args.steps, args.batch, args.bits, device, images, labels, args.lr)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
