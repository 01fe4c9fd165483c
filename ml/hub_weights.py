"""Backbone weights by timm model name or Hugging Face hub id, through timm's own loading code.

``vit_small_patch16_224.augreg_in21k_ft_in1k`` (a timm name with its pretrained tag) or
``hf-hub:timm/vit_small_patch16_224.augreg_in21k_ft_in1k`` is created with ``timm.create_model(name,
pretrained=True)``: timm resolves the hub repo and downloads it with ``huggingface_hub`` into the standard
cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), once. With ``HF_HUB_OFFLINE=1`` nothing is fetched: the
weights come from that cache, or ``WeightsNotCachedError`` says in one line what is missing and where.
Both variables are read when a model is loaded (not only when ``huggingface_hub`` is first imported).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from ml.timm_compat import import_timm

HUB_PREFIX = "hf-hub:"
_TRUE = {"1", "on", "yes", "true"}


class WeightsNotCachedError(FileNotFoundError):
    """The named weights are not in the Hugging Face cache, and offline mode (or no connection) keeps them out."""


def hub_cache_dir() -> str:
    """The Hugging Face hub cache as the environment names it now: ``HF_HUB_CACHE``, else ``HF_HOME/hub``,
    else ``huggingface_hub``'s default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or when ``huggingface_hub`` was imported."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def is_timm_name(source: str) -> bool:
    """Whether ``source`` names timm weights (``hf-hub:owner/repo`` or a timm architecture[.tag]), not a file."""
    if source.startswith(HUB_PREFIX):
        return True
    if "://" in source or "/" in source or os.path.exists(source):
        return False
    timm = import_timm()
    return timm.models.is_model(timm.models.split_model_name_tag(source)[0])


@contextlib.contextmanager
def _offline_if_asked(offline: bool) -> Iterator[None]:
    """``huggingface_hub`` in offline mode for the duration when ``offline`` (its flag is otherwise fixed at
    import, so an ``HF_HUB_OFFLINE`` set later would be ignored)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _hub_id(name: str) -> str:
    """The hub repo behind ``name`` (for the error message)."""
    if name.startswith(HUB_PREFIX):
        return name[len(HUB_PREFIX) :].split("@", 1)[0]
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    return (cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else "") or name


def create_pretrained(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)`` with the cache and offline mode of the environment.

    Raises ``WeightsNotCachedError`` (offline, not cached) and ``ValueError`` (a name timm does not know, or
    one without pretrained weights)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    timm = import_timm()
    if not name.startswith(HUB_PREFIX):
        arch = timm.models.split_model_name_tag(name)[0]
        if not timm.models.is_model(arch):
            raise ValueError(f"pretrained {name!r}: not a file, an fsspec URI or a timm model name")
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError as err:  # an unknown tag
            raise ValueError(f"pretrained {name!r}: {err}") from None
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise ValueError(f"pretrained {name!r}: timm has no pretrained weights of that name")
    cache, offline = hub_cache_dir(), hub_offline()
    try:
        with _offline_if_asked(offline):
            return timm.create_model(name, pretrained=True, cache_dir=cache, **kwargs)
    except LocalEntryNotFoundError:
        if not offline:  # online, but the hub could not be reached
            raise WeightsNotCachedError(
                f"weights for {name} could not be fetched from the Hugging Face hub (repo {_hub_id(name)}) and "
                f"are not in its cache at {cache}; check the connection or pass a file"
            ) from None
        raise WeightsNotCachedError(
            f"weights for {name} are not in the Hugging Face cache at {cache} (repo {_hub_id(name)}) and "
            "HF_HUB_OFFLINE is set; run once online or pass a file"
        ) from None


def timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The backbone tensors of the timm model ``name`` with its pretrained weights (classifier keys included;
    ``ml.pretrained.load_pretrained`` drops them)."""
    return create_pretrained(name).state_dict()
