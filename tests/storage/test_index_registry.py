"""The index kind registry: every kind builds, round-trips and verifies; kinds, parameters and the config fields
all come from it; adding a kind is one registered class."""

from __future__ import annotations

import os

import numpy as np
import pytest

from storage.fs import StorageRoot
from storage.index import (
    KINDS,
    BinaryIndex,
    Param,
    build_index,
    get_kind,
    kind_names,
    load_index,
    param_fields,
    publish,
    read_index_file,
    register_kind,
    resolve_params,
    unregister_kind,
    verify_index,
    write_index,
)
from storage.index.base import add_chunked
from storage.index.publish import hash_file

BUILT_IN = ("flat", "flat-dedup", "hnsw", "ivf", "ivf-dedup", "multihash")


def tiny_codes(n: int = 400, bits: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unsorted sparse row_ids and random codes, a fifth of them repeated (duplicates exercise every kind)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    codes[n // 5 : 2 * n // 5] = codes[: n // 5]
    return rng.permutation(10 * n)[:n].astype(np.int64), codes


def test_built_in_kinds_are_registered_in_order():
    assert kind_names() == BUILT_IN and KINDS == BUILT_IN
    assert [get_kind(k).kind for k in BUILT_IN] == list(BUILT_IN)
    assert [k for k in BUILT_IN if get_kind(k).exact] == ["flat", "flat-dedup"]


@pytest.mark.parametrize("kind", kind_names())
def test_every_kind_builds_round_trips_and_verifies(tmp_path, kind):
    ids, codes = tiny_codes()
    index = build_index(ids, codes, 64, kind)
    assert index.kind == kind and index.ntotal == len(ids)
    assert verify_index(index, ids, codes) == []
    root = StorageRoot(tmp_path)
    manifest = write_index(root, index, "cat", "m1", kind, 64, len(ids), 0.0)
    assert manifest.params == resolve_params(kind, None, len(ids), 64)
    assert bool(manifest.companion_file) == bool(get_kind(kind).companion_name)
    written = [root.path("indexes", "cat", "m1", f) for f in (manifest.file, manifest.companion_file) if f]
    assert hash_file(written[0]) == manifest.sha256  # hashed as written, in one pass
    assert manifest.file_bytes == sum(os.path.getsize(f) for f in written)
    if manifest.companion_file:
        assert hash_file(written[1]) == manifest.companion_sha256
    publish(root, manifest)
    for mmap in (True, False):
        loaded, m2 = load_index(root, "cat", mmap=mmap)
        assert type(loaded) is type(index) and m2.sha256 == manifest.sha256
        assert verify_index(loaded, ids, codes, seed=1) == []
        assert np.array_equal(loaded.search(codes[:10], 5)[1], index.search(codes[:10], 5)[1])
    if get_kind(kind).companion_name:
        path = root.path("indexes", "cat", "m1", manifest.file)
        with pytest.raises(ValueError, match=f"an {kind} index needs its rows companion file"):
            read_index_file(path, kind, 64, manifest.params)


def test_unknown_kind_is_the_same_one_line_error_everywhere():
    expected = (
        "shop: unknown index kind 'annoy'; choose one of flat, flat-dedup, hnsw, ivf, ivf-dedup, multihash"
    )
    for call in (
        lambda: get_kind("annoy", "shop"),
        lambda: resolve_params("annoy", None, 10, 64, item="shop"),
        lambda: build_index(np.arange(3), np.zeros((3, 8), np.uint8), 64, "annoy", item="shop"),
    ):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == expected


def test_param_fields_are_the_union_of_the_kinds_parameters():
    fields = param_fields()
    union = list(dict.fromkeys(name for k in kind_names() for name in get_kind(k).default_params()))
    assert list(fields) == union  # a parameter several kinds take is one field
    assert fields["m"] == "hnsw: links per node"
    assert fields["nlist"] == "ivf, ivf-dedup: inverted lists (default ~4 sqrt(n))"
    for k in kind_names():
        assert set(resolve_params(k, None, 1000, 64)) == set(get_kind(k).default_params())


def test_config_and_bench_kinds_come_from_the_registry():
    from assets.index import IndexConfig
    from bench.search import ALL_KINDS

    assert kind_names() == ALL_KINDS
    config_fields = IndexConfig.model_fields
    for name, description in param_fields().items():
        assert config_fields[name].description == description and config_fields[name].default is None
    assert IndexConfig(nlist=8).nlist == 8


class _HeapFlat(BinaryIndex):
    """A test-only kind: stock faiss heap search over a flat index, one parameter of its own."""

    kind = "test-heap-flat"
    param_specs = (Param("spare", 3, "a parameter only this kind takes"),)

    @classmethod
    def from_codes(cls, row_ids, codes, bits, params, increasing, seed):
        import faiss

        fidx = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
        add_chunked(fidx, row_ids, codes)
        return cls(fidx, bits, params)


def test_a_registered_class_is_a_kind_everywhere(tmp_path):
    ids, codes = tiny_codes(200)
    register_kind(_HeapFlat)
    try:
        assert kind_names() == (*BUILT_IN, "test-heap-flat")
        assert param_fields()["spare"] == "test-heap-flat: a parameter only this kind takes"
        with pytest.raises(ValueError, match="must be a positive integer"):
            build_index(ids, codes, 64, "test-heap-flat", {"spare": 0})
        index = build_index(ids, codes, 64, "test-heap-flat")
        assert index.params == {"spare": 3} and verify_index(index, ids, codes) == []
        root = StorageRoot(tmp_path)
        publish(root, write_index(root, index, "cat", "m1", "test-heap-flat", 64, len(ids), 0.0))
        loaded, manifest = load_index(root, "cat")
        assert isinstance(loaded, _HeapFlat) and manifest.params == {"spare": 3}
        assert verify_index(loaded, ids, codes) == []
        with pytest.raises(ValueError, match="already registered"):
            register_kind(type("Other", (_HeapFlat,), {}))
    finally:
        unregister_kind("test-heap-flat")
    assert kind_names() == BUILT_IN and "spare" not in param_fields()
    with pytest.raises(ValueError, match="unknown index kind 'test-heap-flat'"):
        get_kind("test-heap-flat")
