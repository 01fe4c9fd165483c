"""packed_codes shard by shard (assets.codes_shards): the same codes as the one-step asset, one step per
shard, a rerun that encodes nothing, and a damaged or missing shard part that alone is encoded again."""

from __future__ import annotations

import json
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pyarrow.compute as pc
import pytest

from storage.catalogue import write_catalogue
from storage.codes import codes_dir, parts_manifest, read_codes
from storage.fs import StorageRoot
from tests.conftest import needs_fashion_mnist

BITS = 32
MODEL = "fake-encoder-32b"
_W = np.random.default_rng(0).standard_normal((28 * 28, BITS)).astype(np.float32)


def fake_encode(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5
    return np.packbits(x @ _W >= 0, axis=1)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    from assets import codes as codes_asset
    from storage.ingest_idx import FASHION_MNIST_DIR, idx_catalogue

    encoded: list[int] = []

    def encode_images(model, images, device, batch_size=256, progress=False, transform=None):
        encoded.append(len(images))
        return fake_encode(images)

    model = SimpleNamespace(spec=SimpleNamespace(img_size=28, in_chans=1))
    monkeypatch.setattr("ml.encode.encode_images", encode_images)
    monkeypatch.setattr(codes_asset, "load_model", lambda root, model_id, device: (model, {"bits": BITS}))
    roots = {}
    table, info = idx_catalogue(
        "sh", FASHION_MNIST_DIR, validation_size=50, seed=0, train_limit=400, query_limit=60
    )
    for name in ("one", "sharded"):
        roots[name] = StorageRoot(tmp_path / name)
        roots[name].write_text(json.dumps({"bits": BITS, "model_id": MODEL}), "models", MODEL, "model.json")
        write_catalogue(roots[name], table, info)
    return roots, table, info, encoded


@needs_fashion_mnist
def test_sharded_codes_equal_one_step_codes_and_rerun_only_unfinished_shards(setup):
    from assets.codes import packed_codes
    from assets.codes_shards import ShardedCodesConfig, packed_codes_sharded

    roots, table, info, encoded = setup
    assert ShardedCodesConfig.model_fields["shard_rows"].default > 0
    ids = np.sort(table["row_id"].to_numpy())
    shard_rows = int(ids[-1]) // 5 + 1  # five or six shards of row ids (the sample's row ids are sparse)
    config = {"model_id": MODEL, "chunk_rows": 64, "shard_rows": shard_rows}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("catalogues", ["sh"])
        _run(packed_codes, roots["one"], instance, {"model_id": MODEL, "chunk_rows": 64})
        # the newest 40 rows arrive after a first sharded run: only the shards holding them are encoded again
        write_catalogue(roots["sharded"], table.filter(pc.less(table["row_id"], int(ids[-40]))), info)
        _run(packed_codes_sharded, roots["sharded"], instance, config)
        before = parts_manifest(roots["sharded"], "sh", MODEL)["parts"]
        write_catalogue(roots["sharded"], table, info)
        encoded.clear()
        result = _run(packed_codes_sharded, roots["sharded"], instance, config)
        touched = np.unique(ids[-40:] // shard_rows)
        assert _metadata(result)["encoded_shards"] == len(touched) and sum(encoded) == int(
            np.isin(ids // shard_rows, touched).sum()
        )
        after = parts_manifest(roots["sharded"], "sh", MODEL)["parts"]
        earlier = [p for p in before if int(p.split("-")[1]) < touched[0]]
        assert earlier and set(earlier) <= set(after)  # the earlier shards' parts are kept as they were
        result = _run(packed_codes_sharded, roots["sharded"], instance, config | {"incremental": False})
        ids1, codes1, meta1 = read_codes(roots["one"], "sh", MODEL)
        ids2, codes2, meta2 = read_codes(roots["sharded"], "sh", MODEL)
        assert np.array_equal(ids1, ids2) and np.array_equal(codes1, codes2)  # byte for byte, row for row
        assert meta1.catalogue_fingerprint == meta2.catalogue_fingerprint and meta2.rows == table.num_rows
        n_shards = len(np.unique(table["row_id"].to_numpy() // shard_rows))
        assert n_shards >= 3 and len(parts_manifest(roots["sharded"], "sh", MODEL)["parts"]) == n_shards
        steps = _steps(result)
        assert sum(s.startswith("packed_codes.encode_codes_shard[") for s in steps) == n_shards
        md = _metadata(result)
        assert md["encoded_rows"] == table.num_rows and md["shards"] == n_shards

        encoded.clear()  # a rerun: every shard is finished, nothing is encoded
        result = _run(packed_codes_sharded, roots["sharded"], instance, config)
        assert sum(encoded) == 0 and _metadata(result)["mode"] == "up-to-date"
        assert not any("encode_codes_shard" in s for s in _steps(result))

        # one shard's part damaged: that shard alone is encoded again, the codes unchanged
        part = parts_manifest(roots["sharded"], "sh", MODEL)["parts"][1]
        path = roots["sharded"].path(*codes_dir("sh", MODEL), part)
        with open(path, "r+b") as f:
            f.seek(40)
            f.write(b"\xff\xff\xff\xff")
        result = _run(packed_codes_sharded, roots["sharded"], instance, config)
        md = _metadata(result)
        assert md["encoded_shards"] == 1 and sum(encoded) == md["encoded_rows"] <= shard_rows
        ids3, codes3, _ = read_codes(roots["sharded"], "sh", MODEL)
        assert np.array_equal(ids3, ids1) and np.array_equal(codes3, codes1)


def _resources(root):
    from assets.resources import ComputeResource, StorageResource

    return {"storage": StorageResource(root=root.uri), "compute": ComputeResource(device="cpu", threads=2)}


def _run(asset, root, instance, config):
    result = dg.materialize(
        [asset],
        partition_key="sh",
        instance=instance,
        resources=_resources(root),
        run_config={"ops": {"packed_codes": {"config": config}}},
    )
    assert result.success
    return result


def _steps(result) -> list[str]:
    return [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]


def _metadata(result) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}
