"""Compute device selection (`--device auto` picks CUDA when present)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def resolve_device(device: str = "auto") -> torch.device:
    """Map ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` to a torch device, failing clearly if CUDA is absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (default: all cores of this process) and return it."""
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def bf16_autocast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds up ``device``: CUDA, or a CPU with native bf16 arithmetic (AVX512-BF16 or AMX).
    Elsewhere oneDNN converts bf16 in software, slower than fp32. (torch has no public query for these CPU
    features; ``torch.cpu``'s private checks are what its own bf16 kernels dispatch on.)"""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


@contextmanager
def training_attention(model: nn.Module, device: torch.device, amp: bool) -> Iterator[None]:
    """Within the block, timm attention modules of ``model`` take their unfused path (``fused_attn = False``:
    softmax(q kᵀ) v as plain matmuls) when training under bf16 autocast on a CPU; restored on exit. There the
    backward of torch's fused SDPA kernel takes a quarter of a full-profile step at 49 tokens (train img/s 1,044 →
    1,358: ``python -m experiments.attention_probe``); in fp32, and for inference, the two paths are within 5 %,
    so only this case switches."""
    switched = (
        [m for m in model.modules() if getattr(m, "fused_attn", None) is True]
        if device.type == "cpu" and amp
        else []
    )
    for m in switched:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in switched:
            m.fused_attn = True
