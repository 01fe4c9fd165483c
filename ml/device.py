"""Compute device selection (`--device auto` picks CUDA when present)."""

from __future__ import annotations

import os

import torch


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
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
