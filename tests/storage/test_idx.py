"""IDX reader on the real Fashion-MNIST files and on malformed input."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from storage.idx import read_idx
from storage.ingest_idx import FASHION_MNIST_DIR, idx_catalogue
from tests.conftest import needs_fashion_mnist


@needs_fashion_mnist
def test_real_fashion_mnist_shapes_and_labels():
    images = read_idx(f"{FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz")
    labels = read_idx(f"{FASHION_MNIST_DIR}/t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,)
    assert np.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]  # first test labels (ankle boot, pullover, trouser, ...)


def _write_idx(path, array: np.ndarray, dtype_code: int = 0x08, compress: bool = False):
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(">u1" if dtype_code == 0x08 else ">i4").tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.mark.parametrize("compress", [False, True])
def test_roundtrip_and_int32(tmp_path, compress):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.idx", arr, compress=compress)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), arr)
    ints = np.array([1, -2, 300000], dtype=np.int32)
    _write_idx(tmp_path / "b.idx", ints, dtype_code=0x0C)
    assert read_idx(tmp_path / "b.idx").tolist() == [1, -2, 300000]


def test_bad_magic_and_truncation_are_named(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "bad")
    arr = np.zeros((4, 2, 2), np.uint8)
    _write_idx(tmp_path / "t", arr)
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "t")


def test_idx_catalogue_protocol(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 8, 8)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3)
    table, info = idx_catalogue("toy", str(tmp_path), validation_size=8, seed=3)
    rows = table.to_pydict()
    assert table.num_rows == 50
    assert sum(rows["in_query"]) == 10 and sum(rows["in_database"]) == 40
    assert sum(rows["in_train"]) == 32 and sum(rows["in_validation"]) == 8
    assert not any(q and d for q, d in zip(rows["in_query"], rows["in_database"], strict=True))
    assert all(r >= 40 for r, q in zip(rows["row_id"], rows["in_query"], strict=True) if q)
    assert info.label_names == ["0", "1", "2"] and info.protocol["validation_size"] == 8
    again, _ = idx_catalogue("toy", str(tmp_path), validation_size=8, seed=3)
    assert again["in_validation"].equals(table["in_validation"])  # seeded
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        (tmp_path / "t10k-images-idx3-ubyte").unlink()
        idx_catalogue("toy", str(tmp_path))
