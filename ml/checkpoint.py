"""Model weights as safetensors bytes plus a JSON model card; storage decides where they live."""

from __future__ import annotations

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ml.models import ModelSpec, build_model


def weights_to_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})


def model_from_checkpoint(card: dict, weights: bytes, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from its card (``model.json``) and safetensors bytes; fails clearly on mismatch."""
    spec = ModelSpec(**card["spec"])
    model = build_model(spec, load_pretrained=False)  # the checkpoint holds every weight
    state = load_safetensors(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint of model {card.get('model_id')!r} does not match its card: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    return model.to(device).eval()
