"""Model artifacts: ``models/<model_id>/model.safetensors`` and ``models/<model_id>/model.json``."""

from __future__ import annotations

import json

from storage.fs import StorageRoot


def write_model(root: StorageRoot, model_id: str, weights: bytes, card: dict) -> str:
    """Write weights first, then the card (the card's presence marks a complete model)."""
    root.write_bytes(weights, "models", model_id, "model.safetensors")
    return root.write_text(json.dumps(card, indent=2, sort_keys=True), "models", model_id, "model.json")


def update_card(root: StorageRoot, model_id: str, **fields) -> dict:
    card = read_card(root, model_id)
    card.update(fields)
    root.write_text(json.dumps(card, indent=2, sort_keys=True), "models", model_id, "model.json")
    return card


def has_model(root: StorageRoot, model_id: str) -> bool:
    return root.exists("models", model_id, "model.json")


def read_card(root: StorageRoot, model_id: str) -> dict:
    if not has_model(root, model_id):
        raise FileNotFoundError(f"model {model_id!r} not found under {root.url('models', model_id)}")
    return json.loads(root.read_text("models", model_id, "model.json"))


def card_bits(card: dict) -> int:
    """The code length of the model a card describes (``card["bits"]``; ``card["spec"]["bits"]`` is the same)."""
    return int(card["bits"])


def read_weights(root: StorageRoot, model_id: str) -> bytes:
    return root.read_bytes("models", model_id, "model.safetensors")
