"""Batched inference: images -> packed binary codes (numpy ``packbits``, big-endian bit order)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ml.data import iterate_batches, normalise
from ml.device import bf16_autocast
from ml.progress import progress_bar


def pack_outputs(u: torch.Tensor) -> np.ndarray:
    """Real-valued hash outputs -> packed codes; bit = 1 where u >= 0 (never a 0 'bit', docs/METHODS.md, "Conventions shared by every model and loss")."""
    return np.packbits((u >= 0).cpu().numpy(), axis=1)


def encode_images(
    model: nn.Module,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    progress: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Encode uint8 images (n, c, h, w) to packed codes (n, bits/8); ``transform`` acts on the
    normalised float batch (used for stability diagnostics). A model whose spec sets ``flip_tta`` is also run
    on the mirrored batch and the two outputs are summed before the sign. Runs under bf16 autocast where training
    does (``ml.device.bf16_autocast``: CUDA, CPUs with native bf16): on 2 such CPU cores 2x the fp32 rate, with
    0.02 % of a trained model's bits changed (``python -m experiments.encode_precision``)."""
    return _encode(model, images, device, batch_size, progress, transform, keep_outputs=False)[0]


def encode_outputs(
    model: nn.Module,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(packed codes, real-valued outputs float32 (n, bits)) from one pass: the outputs are the ``u`` whose
    sign the codes are (flip TTA summed), for asymmetric re-ranking and stored embeddings."""
    codes, outputs = _encode(model, images, device, batch_size, progress, None, keep_outputs=True)
    assert outputs is not None
    return codes, outputs


@torch.inference_mode()
def _encode(
    model: nn.Module,
    images: np.ndarray,
    device: torch.device,
    batch_size: int,
    progress: bool,
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
    keep_outputs: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    was_training = model.training
    model.eval()
    flip = bool(getattr(getattr(model, "spec", None), "flip_tta", False))
    amp = bf16_autocast(device)
    chunks, outputs = [], []
    batches = iterate_batches(len(images), batch_size)
    bar = progress_bar(len(images), "encode", "img", enabled=progress)
    for idx in batches:
        x = normalise(torch.from_numpy(images[idx.numpy()]).to(device))
        if transform is not None:
            x = transform(x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            u = model(x)
            if flip:
                u = u + model(x.flip(-1))
        u = u.float()
        chunks.append(pack_outputs(u))
        if keep_outputs:
            outputs.append(u.cpu().numpy())
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    if not chunks:
        bits = getattr(getattr(model, "spec", None), "bits", 8)
        empty = np.zeros((0, bits), np.float32) if keep_outputs else None
        return np.zeros((0, bits // 8), np.uint8), empty
    return np.concatenate(chunks), (np.concatenate(outputs) if keep_outputs else None)
