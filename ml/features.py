"""Frozen-backbone features of catalogue rows, cached under the storage root, keyed by (row_id, image hash).

A transfer model (``vts-cls`` with a ``transfer-*`` preset: ``frozen_split``) splits into a frozen front (patch
embedding, position embedding and every block but the last ``train_blocks``) and a trainable tail (those blocks,
the final norm, the cls token's hash layer). The front's output of each row is computed once and kept in
``features/<catalogue>/<key>/part-*.parquet`` (columns ``row_id``, ``image_hash``, ``feature``). ``<key>`` names
the backbone weights, image size, channels and split point and ends with a digest of the frozen tensors, so
that other weights, another size or another split make another cache. An incremental catalogue extracts its new
rows and the rows whose image changed only, into a new part (``storage.fs.StorageRoot.atomic_open``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm.auto import tqdm

from ml.data import normalise
from ml.device import bf16_autocast
from ml.model_spec import ModelSpec


class FileStore(Protocol):
    """What the cache needs of ``storage.fs.StorageRoot`` (``ml`` does not import ``storage``)."""

    def names(self, *parts: str) -> list[str]: ...
    def read_bytes(self, *parts: str) -> bytes: ...
    def atomic_open(self, *parts: str) -> AbstractContextManager[IO[bytes]]: ...


FEATURES_VERSION = 1  # bump when the front's computation changes: a new cache, never a stale one
TRANSFER_MODELS = ("vts-cls",)


def frozen_split(spec: ModelSpec) -> int | None:
    """The number of last blocks that train with the head (0: the head alone) when ``spec`` is a transfer model
    (its preset has ``train_blocks``), else None."""
    args = spec.backbone_args()
    if "train_blocks" not in args:
        return None
    if spec.model not in TRANSFER_MODELS:
        raise ValueError(
            f"a frozen backbone suits {list(TRANSFER_MODELS)} (a cls-token hash layer), not {spec.model!r}"
        )
    k, depth = int(args["train_blocks"]), int(args["depth"])
    if not 0 <= k <= depth:
        raise ValueError(f"train_blocks must lie in [0, {depth}] (the backbone's depth), got {k}")
    if spec.flip_tta:
        raise ValueError("a frozen backbone caches the features of the stored images: set flip_tta false")
    return k


def front(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """The frozen part of ``model`` on normalised images: the tokens entering its last ``k`` blocks, or for
    ``k == 0`` the final-norm cls token (timm ``VisionTransformer.forward_features``, stopped early)."""
    bb = model.backbone
    x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
    x = bb.blocks[: len(bb.blocks) - k](x)
    return bb.norm(x)[:, 0] if k == 0 else x


def tail(model: nn.Module, features: torch.Tensor, k: int) -> torch.Tensor:
    """The trainable part of ``model``: ``u`` from ``front``'s features (``model(x) == tail(front(x))``)."""
    if k:
        bb = model.backbone
        features = bb.norm(bb.blocks[len(bb.blocks) - k :](features))[:, 0]
    return model.head(features)


def cache_key(model: nn.Module, k: int) -> str:
    """``<weights>-<size>px-<c>ch-k<k>-<digest>``: the digest covers the frozen tensors, the size, channels, split
    and ``FEATURES_VERSION``."""
    spec: ModelSpec = model.spec
    bb = model.backbone
    frozen = len(bb.blocks) - k
    h = hashlib.sha256(json.dumps([spec.img_size, spec.in_chans, k, FEATURES_VERSION]).encode())
    for name, tensor in sorted(bb.state_dict().items()):
        if name.startswith("blocks.") and int(name.split(".")[1]) >= frozen:
            continue
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    weights = spec.pretrained.rsplit("/", 1)[-1] or "random"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", weights.removesuffix(".safetensors"))[:60]
    return f"{slug}-{spec.img_size}px-{spec.in_chans}ch-k{k}-{h.hexdigest()[:12]}"


@torch.inference_mode()
def extract(
    model: nn.Module,
    images: np.ndarray,
    k: int,
    device: torch.device,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """``front`` features of uint8 images (n, c, s, s): float32 (n, C) for ``k == 0``, float16 tokens
    (n, T, C) otherwise; bf16 autocast where ``ml.encode`` uses it."""
    was_training = model.training
    model.eval()
    amp = bf16_autocast(device)
    out = []
    bar = tqdm(total=len(images), desc="features", unit="img", disable=not progress, leave=False)
    for s in range(0, len(images), batch_size):
        x = normalise(torch.from_numpy(images[s : s + batch_size]).to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f = front(model, x, k)
        out.append(f.to(torch.float32 if k == 0 else torch.float16).cpu().numpy())
        bar.update(len(x))
    bar.close()
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class FeatureCache:
    """The cached front features of one catalogue for one (backbone, size, channels, split)."""

    def __init__(self, root: FileStore, catalogue: str, key: str, chunk_rows: int = 1024):
        self.root, self.parts, self.chunk_rows = root, ("features", catalogue, key), chunk_rows
        self.extracted = 0  # rows extracted by this object (the rest were read from the cache)

    def _read(self) -> tuple[list[tuple[int, int]], np.ndarray | None]:
        tables = [
            pq.read_table(io.BytesIO(self.root.read_bytes(*self.parts, name)))
            for name in self.root.names(*self.parts)
            if name.startswith("part-") and name.endswith(".parquet")
        ]
        if not tables:
            return [], None
        table = pa.concat_tables(tables)
        shape = json.loads(table.schema.metadata[b"vitrieve.feature_shape"])
        col = table["feature"].combine_chunks()
        keys = list(zip(table["row_id"].to_pylist(), table["image_hash"].to_pylist(), strict=True))
        return keys, col.flatten().to_numpy().reshape(-1, *shape)

    def _write(self, row_ids: np.ndarray, hashes: np.ndarray, features: np.ndarray) -> None:
        flat = pa.array(features.reshape(-1))
        table = pa.table(
            {
                "row_id": pa.array(row_ids, pa.int64()),
                "image_hash": pa.array(hashes, pa.int64()),
                "feature": pa.FixedSizeListArray.from_arrays(flat, int(np.prod(features.shape[1:]))),
            },
            metadata={"vitrieve.feature_shape": json.dumps(list(features.shape[1:]))},
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        existing = self.root.names(*self.parts)
        number = sum(name.startswith("part-") for name in existing)
        name = f"part-{number:05d}-{int(row_ids.min())}-{int(row_ids.max())}.parquet"
        with self.root.atomic_open(*self.parts, name) as f:
            f.write(buf.getvalue())

    def features(
        self,
        row_ids: np.ndarray,
        load: Callable[[np.ndarray], np.ndarray],
        compute: Callable[[np.ndarray], np.ndarray],
        image_hashes: np.ndarray | None = None,
    ) -> np.ndarray:
        """Features of ``row_ids`` (with their ``image_hashes``, default 0) in their order: cached entries read;
        for the others the images are loaded (``load`` gets positions into ``row_ids``), ``compute``d and added
        to the cache as one new part."""
        row_ids = np.asarray(row_ids, np.int64)
        hashes = np.zeros_like(row_ids) if image_hashes is None else np.asarray(image_hashes, np.int64)
        wanted = list(zip(row_ids.tolist(), hashes.tolist(), strict=True))
        have_keys, have = self._read()
        pos = {key: i for i, key in enumerate(have_keys)}
        first: dict[tuple[int, int], int] = {}  # each missing entry once, at its first position
        for i, key in enumerate(wanted):
            if key not in pos:
                first.setdefault(key, i)
        missing = np.array(list(first.values()), np.int64)
        if len(missing):  # loaded and computed in chunks: images of ``chunk_rows`` rows in memory at a time
            new = np.concatenate(
                [
                    compute(load(missing[s : s + self.chunk_rows]))
                    for s in range(0, len(missing), self.chunk_rows)
                ]
            )
            self._write(row_ids[missing], hashes[missing], new)
            self.extracted += len(missing)
            pos |= {wanted[i]: len(have_keys) + j for j, i in enumerate(missing)}
            have = new if have is None else np.concatenate([have, new])
        if have is None:  # no rows asked, none cached
            return np.zeros((0,), np.float32)
        return have[[pos[key] for key in wanted]]


def cached_features(
    root: FileStore,
    catalogue: str,
    model: nn.Module,
    row_ids: np.ndarray,
    load: Callable[[np.ndarray], np.ndarray],
    device: torch.device,
    progress: bool = False,
    image_hashes: np.ndarray | None = None,
) -> tuple[np.ndarray, FeatureCache]:
    """``front`` features of a catalogue's ``row_ids`` through its ``FeatureCache`` (``load(positions)`` gives
    the uint8 images of the rows not cached yet, ``image_hashes`` tell changed images), and the cache."""
    k = frozen_split(model.spec)
    if k is None:
        raise ValueError(
            f"{model.spec.model} preset {model.spec.preset!r} has no frozen backbone (train_blocks)"
        )
    cache = FeatureCache(root, catalogue, cache_key(model, k))
    features = cache.features(
        row_ids, load, lambda images: extract(model, images, k, device, progress=progress), image_hashes
    )
    return features, cache
