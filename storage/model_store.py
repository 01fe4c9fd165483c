"""Model artifacts: ``models/<model_id>/model.safetensors`` and ``models/<model_id>/model.json``."""

from __future__ import annotations

import hashlib
import json

from storage.fs import StorageRoot


def write_model(root: StorageRoot, model_id: str, weights: bytes, card: dict) -> str:
    """Write weights first, then the card (the card's presence marks a complete model; it records the weights'
    sha256, which every read checks)."""
    root.write_bytes(weights, "models", model_id, "model.safetensors")
    card = {**card, "weights_sha256": hashlib.sha256(weights).hexdigest()}
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
    """The model's safetensors bytes, checked against the sha256 its card recorded (cards written before the
    check existed record none)."""
    weights = root.read_bytes("models", model_id, "model.safetensors")
    expected = read_card(root, model_id).get("weights_sha256")
    if expected and hashlib.sha256(weights).hexdigest() != expected:
        raise ValueError(
            f"{root.url('models', model_id, 'model.safetensors')}: sha256 does not match its model card (damaged "
            f"or partly copied); train it again: vitrieve train --force with the same options"
        )
    return weights
