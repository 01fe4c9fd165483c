"""Shards of a catalogue and of its codes: planning by row-id range, keys that change with their inputs only,
finished shards recognised by their part checks, one commit making them live."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.codes import PartWriter, codes_dir, parts_manifest, read_codes
from storage.fs import StorageRoot
from storage.shards import commit_shards, finished_shard, plan_shards, record_shard

INPUTS = {"model_id": "m", "bits": 16}


def _plan(ids, hashes=None, rows=10, inputs=INPUTS):
    ids = np.asarray(ids, np.int64)
    return plan_shards(
        ids, np.zeros(len(ids), np.int64) if hashes is None else np.asarray(hashes), rows, inputs
    )


def test_shards_are_row_id_ranges_and_keys_follow_their_inputs():
    ids = np.array([0, 3, 9, 10, 25, 27, 29])
    shards = _plan(ids)
    assert [(s.index, s.lo, s.hi, s.rows) for s in shards] == [(0, 0, 10, 3), (1, 10, 20, 1), (2, 20, 30, 3)]
    appended = _plan(np.r_[ids, 31, 35])  # new rows land in a new shard: the others keep their keys
    assert [s.key for s in appended[:3]] == [s.key for s in shards] and appended[3].rows == 2
    changed = _plan(ids, hashes=[0, 0, 0, 0, 7, 0, 0])  # a changed image changes its shard's key only
    assert [a.key == b.key for a, b in zip(changed, shards, strict=True)] == [True, True, False]
    other_model = _plan(ids, inputs={"model_id": "n", "bits": 16})
    assert all(a.key != b.key for a, b in zip(other_model, shards, strict=True))
    with pytest.raises(ValueError, match="sorted"):
        _plan([3, 1])


def _write_shard(root, shard, seed):
    codes = np.random.default_rng(seed).integers(0, 256, (shard.rows, 2), dtype=np.uint8)
    ids = np.arange(shard.lo, shard.lo + shard.rows, dtype=np.int64)
    writer = PartWriter(root, "cat", "m", 16, with_image_hash=True, name=shard.part)
    writer.write(ids, codes, np.zeros(shard.rows, np.int64))
    writer.close()
    record_shard(root, "cat", "m", shard)
    return ids, codes


def test_finished_shards_are_checked_and_committed_in_one_switch(tmp_path):
    root = StorageRoot(tmp_path)
    shards = _plan(list(range(0, 4)) + list(range(10, 13)))
    assert finished_shard(root, "cat", "m", shards[0]) is None
    first = _write_shard(root, shards[0], 0)
    assert finished_shard(root, "cat", "m", shards[0])["rows"] == 4
    with pytest.raises(RuntimeError, match="shard 1: no finished part"):
        commit_shards(root, "cat", "m", shards, 16)
    second = _write_shard(root, shards[1], 1)
    commit_shards(root, "cat", "m", shards, 16)
    ids, codes, meta = read_codes(root, "cat", "m")
    assert np.array_equal(ids, np.r_[first[0], second[0]]) and np.array_equal(
        codes, np.r_[first[1], second[1]]
    )
    assert parts_manifest(root, "cat", "m")["parts"] == [s.part for s in shards] and meta.rows == 7
    # a damaged part is no longer finished
    path = Path(root.path(*codes_dir("cat", "m"), shards[1].part))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert finished_shard(root, "cat", "m", shards[1]) is None
    # a new plan's commit removes the parts and records it no longer lists
    again = _plan(list(range(0, 4)))
    commit_shards(root, "cat", "m", again, 16)
    assert sorted(root.names(*codes_dir("cat", "m"))) == sorted(
        ["parts.json", again[0].part, again[0].record]
    )
