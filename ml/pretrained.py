"""Backbone weights from a local path, any fsspec URI, or a timm model name / Hugging Face hub id.

``load_pretrained(model, "s3://bucket/deit_small_patch16_224.safetensors")`` reads a timm-style state dict
(``.safetensors``, or ``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``);
``load_pretrained(model, "deit_small_patch16_224.fb_in1k")`` (or ``"hf-hub:timm/..."``) takes the weights of
``timm.create_model(name, pretrained=True)`` (``ml.hub_weights``: Hugging Face cache, ``HF_HUB_OFFLINE``).
Either goes into ``model.backbone``
(the timm ``VisionTransformer`` or ``Nest``; the whole model when it has no ``backbone``). Checks are by key and
shape; with ``adapt`` (default) three common differences are bridged with timm's own helpers and reported:
classifier keys (``head.*``, ``head_dist.*``) that the headless backbone lacks are dropped; a patch-embedding
conv with another number of input channels is adapted (``adapt_input_conv``: RGB weights summed for 1 channel);
absolute position embeddings of another grid are resampled (ViT: ``resample_abs_pos_embed``; NesT:
``nest.resize_pos_embed``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ml.timm_compat import import_timm

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SHOWN = 5  # keys named per category in error messages


class PretrainedMismatchError(ValueError):
    """The weights do not fit the backbone (missing/unexpected keys, shape mismatches)."""


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: keys loaded, adapted, dropped, and what did not fit."""

    uri: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # backbone keys the file lacks (left at random init)
    unexpected: list[str] = field(default_factory=list)  # file keys the backbone lacks (ignored)
    # (key, file shape, model shape)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # reshaped with timm helpers
    dropped: list[str] = field(default_factory=list)  # classifier keys of the source model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        def first(items: list) -> str:
            more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
            return f"{items[:SHOWN]}{more}"

        shapes = [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
        return (
            f"{len(self.loaded)} tensors loaded; missing keys {first(self.missing)}; "
            f"unexpected keys {first(self.unexpected)}; shape mismatches {first(shapes)}"
        )


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch (``.pth``/``.pt``/``.bin``) file at a path or fsspec URI."""
    import fsspec

    name = uri.split("?", 1)[0].lower()
    if not (name.endswith(".safetensors") or name.endswith(TORCH_SUFFIXES)):
        raise ValueError(f"pretrained weights {uri!r}: expected a .safetensors, .pth, .pt or .bin file")
    with fsspec.open(uri, "rb") as f:
        data = f.read()
    if name.endswith(".safetensors"):
        from safetensors.torch import load

        return load(data)
    obj: Any = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "module"):  # e.g. DeiT's {"model": state_dict}
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"pretrained weights {uri!r} are not a state dict of tensors")
    return obj


def _adapt(key: str, value: torch.Tensor, target: torch.Tensor, backbone: nn.Module) -> torch.Tensor | None:
    """``value`` reshaped to ``target``'s shape with timm's helpers, or None when no known adaptation applies."""
    timm = import_timm()
    if (
        key.endswith("patch_embed.proj.weight")
        and value.ndim == target.ndim == 4
        and value.shape[0] == target.shape[0]
        and value.shape[2:] == target.shape[2:]
    ):  # input channels differ
        return timm.models.adapt_input_conv(target.shape[1], value)
    if key == "pos_embed" and value.ndim == 3 and value.shape[-1] == target.shape[-1]:  # ViT (1, prefix+N, C)
        grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
        npt = 0 if getattr(backbone, "no_embed_class", False) else getattr(backbone, "num_prefix_tokens", 0)
        side = math.isqrt(value.shape[1] - npt)
        if grid is not None and side * side == value.shape[1] - npt:
            return timm.layers.resample_abs_pos_embed(value, new_size=list(grid), num_prefix_tokens=npt)
    if (
        key.startswith("levels.")
        and key.endswith(".pos_embed")
        and value.ndim == target.ndim == 4
        and value.shape[1] == target.shape[1]
        and value.shape[-1] == target.shape[-1]
    ):  # NesT: (1, T, N, C), another block size
        return timm.models.nest.resize_pos_embed(value, target)
    return None


def _prefix_hint(unexpected: list[str], own: dict) -> str:
    """`` (pass prefix='backbone.')`` when stripping a leading key segment makes file keys fit the backbone."""
    counts: dict[str, int] = {}
    for key in unexpected:
        head, _, rest = key.partition(".")
        if rest in own:
            counts[head + "."] = counts.get(head + ".", 0) + 1
    return f" (keys look prefixed: pass prefix={max(counts, key=counts.get)!r})" if counts else ""


def load_pretrained(
    model: nn.Module, uri: str, strict: bool = True, prefix: str = "", adapt: bool = True
) -> LoadReport:
    """Load timm-style backbone weights from ``uri`` into ``model.backbone`` (or ``model``). ``uri``: a path or
    fsspec URI of a weights file, or a timm model name / ``hf-hub:`` id (fetched once into the Hugging Face cache).

    ``prefix``: only file keys starting with it are used, with it removed (e.g. ``"backbone."`` to take the
    backbone out of a full vitrieve checkpoint, ``"module."`` for a DDP save). ``strict``: raise
    ``PretrainedMismatchError`` naming the first missing keys, unexpected keys and shape mismatches; otherwise
    load every tensor that fits and return the report. Raises in both modes when no tensor fits at all.
    """
    from ml.hub_weights import is_timm_name, timm_state_dict

    target = getattr(model, "backbone", model)
    state = timm_state_dict(uri) if is_timm_name(uri) else read_state_dict(uri)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = target.state_dict()
    report = LoadReport(uri=uri)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            if adapt and key.split(".", 1)[0] in ("head", "head_dist"):
                report.dropped.append(key)
            else:
                report.unexpected.append(key)
            continue
        want = own[key]
        if value.shape != want.shape and adapt:
            adapted = _adapt(key, value, want, target)
            if adapted is not None and adapted.shape == want.shape:
                value = adapted
                report.adapted.append(key)
        if value.shape != want.shape:
            report.mismatched.append((key, tuple(value.shape), tuple(want.shape)))
            continue
        usable[key] = value
    shape_mismatch = {m[0] for m in report.mismatched}
    report.missing = [k for k in own if k not in usable and k not in shape_mismatch]
    report.loaded = list(usable)
    where = f"{uri!r}" + (f" (prefix {prefix!r})" if prefix else "")
    if not usable:
        raise PretrainedMismatchError(
            f"no tensor of {where} fits {type(target).__name__}{_prefix_hint(report.unexpected, own)}: "
            f"{report.describe()}"
        )
    if strict and not report.ok:
        raise PretrainedMismatchError(
            f"weights {where} do not match {type(target).__name__} (strict): {report.describe()}"
        )
    target.load_state_dict(usable, strict=False)
    return report
