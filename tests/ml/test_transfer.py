"""The transfer path: frozen-backbone features cached by row_id (ml/features.py) and the hash head trained on
them (ml/transfer.py), whose codes are those of the ordinary encode path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ml.encode
import ml.features
import ml.transfer
from ml.checkpoint import model_from_checkpoint, weights_to_bytes
from ml.encode import encode_images
from ml.features import cache_key, cached_features, front, frozen_split, tail
from ml.models import ModelSpec, build_model
from ml.train_config import TrainConfig
from ml.transfer import TransferData, TransferRows, encode_features, train_transfer
from storage.fs import StorageRoot

CPU = torch.device("cpu")
# a ViT-Ti/16-shaped transfer preset shrunk to 16 px, patch 8, width 32, 2 blocks
TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(autouse=True)
def fp32(monkeypatch):
    """fp32 everywhere (bf16 autocast is chosen by the CPU: keep the test the same on every machine)."""
    for module in (ml.encode, ml.features, ml.transfer):
        monkeypatch.setattr(module, "bf16_autocast", lambda device: False)


def spec(k: int = 0, **kw) -> ModelSpec:
    return ModelSpec(
        model="vts-cls", preset="transfer-vitt16", in_chans=1, bits=16, num_classes=3,
        overrides={**TINY, "train_blocks": k}, **kw,
    )  # fmt: skip


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 16 px grey images: dark, mid and bright, with noise; bool one-hot labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.clip(40 + 80 * y[:, None, None, None] + rng.normal(0, 25, (n, 1, 16, 16)), 0, 255)
    return x.astype(np.uint8), np.eye(3, dtype=bool)[y]


def model(k: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(spec(k)).eval()


@pytest.mark.parametrize("k", [0, 1])
def test_front_then_tail_is_the_model(k):
    net, (x, _) = model(k), images(4)
    xt = ml.features.normalise(torch.from_numpy(x))
    with torch.no_grad():
        assert torch.allclose(tail(net, front(net, xt, k), k), net(xt), atol=1e-5)
    assert frozen_split(spec(k)) == k and frozen_split(ModelSpec()) is None
    with pytest.raises(ValueError, match="flip_tta"):
        frozen_split(spec(flip_tta=True))


def test_cache_hit_miss_and_incremental_rows(tmp_path):
    root, net = StorageRoot(tmp_path), model()
    x, _ = images(30)
    ids = np.arange(100, 130)
    loaded: list[int] = []

    def load_from(row_ids):
        def load(pos):
            loaded.extend(row_ids[pos].tolist())
            return x[row_ids[pos] - 100]

        return load

    first, cache = cached_features(root, "cat", net, ids[:20], load_from(ids[:20]), CPU)
    assert cache.extracted == 20 and sorted(loaded) == list(range(100, 120)) and first.shape == (20, 32)
    loaded.clear()
    again, cache = cached_features(root, "cat", net, ids[:20][::-1], load_from(ids[:20][::-1]), CPU)
    assert (
        cache.extracted == 0 and loaded == [] and np.array_equal(again, first[::-1])
    )  # a hit: nothing loaded
    grown, cache = cached_features(root, "cat", net, ids, load_from(ids), CPU)  # 10 new rows
    assert cache.extracted == 10 and sorted(loaded) == list(range(120, 130))
    assert np.array_equal(grown[:20], first)
    fresh = ml.features.extract(net, x, 0, CPU)
    assert np.allclose(grown, fresh, atol=1e-6)
    # an image changed under its row_id (another image hash): extracted again, the others read
    x[3] = 255 - x[3]
    loaded.clear()
    hashes = np.zeros(30, np.int64)
    hashes[3] = 7
    changed, cache = cached_features(root, "cat", net, ids, load_from(ids), CPU, image_hashes=hashes)
    assert cache.extracted == 1 and loaded == [103]
    assert np.array_equal(np.delete(changed, 3, 0), np.delete(grown, 3, 0)) and not np.allclose(
        changed[3], grown[3]
    )
    parts = root.names("features", "cat", cache.parts[-1])
    assert len([p for p in parts if p.endswith(".parquet")]) == 3
    # another backbone (other weights), size or split: another cache
    keys = {cache_key(net, 0), cache_key(model(seed=1), 0), cache_key(model(1), 1)}
    torch.manual_seed(0)
    bigger = ModelSpec(**{**spec().to_dict(), "overrides": {**TINY, "img_size": 24, "train_blocks": 0}})
    keys.add(cache_key(build_model(bigger), 0))
    assert len(keys) == 4


def data(root: StorageRoot) -> tuple[TransferData, np.ndarray]:
    x, y = images(240, seed=1)
    ids = np.arange(240)

    def rows(pos: np.ndarray) -> TransferRows:
        return TransferRows(ids[pos], y[pos], lambda p: x[pos[p]])

    return TransferData(root, "cat", rows(np.arange(160)), rows(np.arange(200, 240)), rows(np.arange(160))), x


@pytest.mark.parametrize("k", [0, 1])
def test_head_trains_and_its_codes_are_the_encode_paths(tmp_path, k):
    root = StorageRoot(tmp_path)
    td, x = data(root)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, warmup_steps=5, classifier=1.0, seed=2)
    s = spec(k)
    result = train_transfer(s, cfg, td, CPU, log=lambda _: None)
    assert result.extracted == 200 and len(result.history) == 4  # 160 train + 40 validation rows
    assert result.best_val_map > 0.9, result.history  # three intensity classes: separable by a linear head
    # the trained model, saved and rebuilt, codes images as encode_images does; equal to the cached-feature codes
    card = {"spec": s.to_dict(), "model_id": "t"}
    rebuilt = model_from_checkpoint(card, weights_to_bytes(result.model.state_dict()))
    codes = encode_images(rebuilt, x[200:], CPU)
    feats, _ = cached_features(root, "cat", result.model, np.arange(200, 240), lambda p: x[200 + p], CPU)
    from_features = encode_features(result.model, feats, k, CPU)
    if k == 0:  # float32 features: the same codes
        assert np.array_equal(codes, from_features)
    else:  # float16 tokens: the same codes up to a rare bit near u = 0
        same = np.unpackbits(codes) == np.unpackbits(from_features)
        assert same.mean() >= 0.99, same.mean()
    # seeded: a second run (features now cached) gives the same weights
    again = train_transfer(s, cfg, td, CPU, log=lambda _: None)
    assert again.extracted == 0
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name
    if k == 0:  # the frozen backbone did not move
        torch.manual_seed(cfg.seed)
        assert torch.equal(build_model(s).backbone.pos_embed, result.model.backbone.pos_embed)


def test_the_instance_term_is_refused_before_any_feature_is_extracted(tmp_path):
    root = StorageRoot(tmp_path)
    td, _ = data(root)
    with pytest.raises(ValueError, match=r"instance term \(weight 0.5\): transfer training runs on cached"):
        train_transfer(spec(), TrainConfig(instance=0.5), td, CPU, log=lambda _: None)
    assert not list(tmp_path.rglob("*.parquet"))  # no feature part cached
