"""Stored embeddings through ``packed_codes``: from the encoding pass, kept through an incremental update,
and a switch of the embeddings setting re-encodes every row."""

from __future__ import annotations

import json
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ml.rerank import dequantise
from storage.catalogue import write_catalogue
from storage.codes import read_codes
from storage.embeddings import read_embeddings
from storage.fs import StorageRoot
from tests.conftest import needs_fashion_mnist

BITS = 32
MODEL = "fake-encoder-32b"
_W = np.random.default_rng(0).standard_normal((28 * 28, BITS)).astype(np.float32)


def fake_outputs(images: np.ndarray) -> np.ndarray:
    return (images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5) @ _W


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    from assets import codes as codes_asset
    from storage.ingest_idx import FASHION_MNIST_DIR, idx_catalogue

    encoded: list[int] = []

    def encode_images(model, images, device, batch_size=256, progress=False, transform=None):
        encoded.append(len(images))
        return np.packbits(fake_outputs(images) >= 0, axis=1)

    def encode_outputs(model, images, device, batch_size=256, progress=False):
        encoded.append(len(images))
        u = fake_outputs(images)
        return np.packbits(u >= 0, axis=1), u

    model = SimpleNamespace(spec=SimpleNamespace(img_size=28, in_chans=1))
    monkeypatch.setattr("ml.encode.encode_images", encode_images)
    monkeypatch.setattr("ml.encode.encode_outputs", encode_outputs)
    monkeypatch.setattr(codes_asset, "load_model", lambda root, model_id, device: (model, {"bits": BITS}))
    root = StorageRoot(tmp_path / "data")
    root.write_text(json.dumps({"bits": BITS, "model_id": MODEL}), "models", MODEL, "model.json")
    full, info = idx_catalogue(
        "inc", FASHION_MNIST_DIR, validation_size=20, seed=0, train_limit=150, query_limit=20
    )
    return root, full, info, encoded


def _encode(root: StorageRoot, instance, embeddings: str) -> dict:
    from assets.codes import packed_codes
    from assets.resources import ComputeResource, StorageResource

    result = dg.materialize(
        [packed_codes],
        partition_key="inc",
        instance=instance,
        resources={
            "storage": StorageResource(root=root.uri),
            "compute": ComputeResource(device="cpu", threads=1),
        },
        run_config={
            "ops": {
                "packed_codes": {"config": {"model_id": MODEL, "chunk_rows": 64, "embeddings": embeddings}}
            }
        },
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _check(root: StorageRoot, table: pa.Table) -> None:
    from imaging.decode import decode_images

    ids, codes, _ = read_codes(root, "inc", MODEL)
    e_ids, data, scale, dtype = read_embeddings(root, "inc", MODEL)
    order = np.argsort(table["row_id"].to_numpy())
    u = fake_outputs(decode_images(table["image"].to_pylist(), 28, 1))[order]
    assert np.array_equal(e_ids, ids) and np.array_equal(codes, np.packbits(u >= 0, axis=1))
    err = np.abs(dequantise(data, scale, dtype) - u).max(1)
    assert np.all(err <= np.abs(u).max(1) / 127 + 1e-6)  # int8: half a step per value, at most one


@needs_fashion_mnist
def test_embeddings_follow_the_codes(setup):
    root, full, info, encoded = setup
    new = np.sort(full["row_id"].to_numpy())[-10:]
    old = full.filter(pc.invert(pc.is_in(full["row_id"], pa.array(new))))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["inc"])
        write_catalogue(root, old, info)
        md = _encode(root, instance, "int8")
        assert md["embeddings"] == "int8" and md["bytes_per_image"] == BITS // 8 + BITS + 4
        _check(root, old)
        write_catalogue(root, full, info)
        encoded.clear()
        md = _encode(root, instance, "int8")
        assert md["mode"] == "incremental" and sum(encoded) == 10
        _check(root, full)
        encoded.clear()
        md = _encode(root, instance, "")  # embeddings off: every row again, codes only
        assert md["mode"] == "full" and sum(encoded) == full.num_rows
        with pytest.raises(FileNotFoundError, match="no stored embeddings"):
            read_embeddings(root, "inc", MODEL)
