"""Re-index after rows are appended: when the previous index's code parts are all live and unchanged and the
rows it was restricted to are the same, only the new parts' rows are added and no code is compared; any other
change (a part rewritten, a row deleted, an updated code) takes the comparing path. Both equal a fresh build."""

from __future__ import annotations

import numpy as np
import pytest

from storage.codes import PartWriter, commit_parts, parts_manifest
from storage.fs import StorageRoot
from storage.index import build_index, index_from_codes, load_index, write_index
from storage.index import incremental as incremental_module

BITS, CAT, MODEL = 64, "cat", "m"


def write_part(root: StorageRoot, lo: int, hi: int, seed: int) -> str:
    codes = np.random.default_rng(seed).integers(0, 256, (hi - lo, BITS // 8), dtype=np.uint8)
    codes[::7] = codes[0]  # ties
    w = PartWriter(root, CAT, MODEL, BITS)
    w.write(np.arange(lo, hi, dtype=np.int64), codes)
    return w.close()


def publish_first(root: StorageRoot, kind: str, keep=None):
    a = write_part(root, 0, 1000, 1)
    commit_parts(root, CAT, MODEL, [a], BITS, 1000)
    index, ids, _, rep = index_from_codes(
        root, CAT, MODEL, kind, {"nlist": 8} if kind.startswith("ivf") else None, keep
    )
    write_index(root, index, CAT, MODEL, kind, BITS, len(ids), rep.build_seconds, source=rep.source)
    return a


@pytest.fixture()
def compared(monkeypatch):
    """Counts the calls of the comparing path."""
    calls = []
    original = incremental_module._changed_codes
    monkeypatch.setattr(incremental_module, "_changed_codes", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf-dedup"])
def test_appended_parts_are_added_without_comparing_codes(tmp_path, kind, compared):
    root = StorageRoot(tmp_path)
    a = publish_first(root, kind)
    manifest = load_index(root, CAT, MODEL, kind, mmap=False)[1]
    assert manifest.source["max_row_id"] == 999 and manifest.source["keep_sha256"] == "all"
    assert manifest.source["parts"] == {a: parts_manifest(root, CAT, MODEL)["part_checks"][a]["sha256"]}
    b = write_part(root, 1000, 1100, 2)
    commit_parts(root, CAT, MODEL, [a, b], BITS, 1100)
    params = {"nlist": 8} if kind.startswith("ivf") else None
    index, ids, codes, rep = index_from_codes(
        root, CAT, MODEL, kind, params, previous=load_index(root, CAT, MODEL, kind, mmap=False)
    )
    assert (rep.mode, rep.added_rows, compared) == ("incremental", 100, [])
    assert rep.source["max_row_id"] == 1099 and set(rep.source["parts"]) == {a, b}
    fresh = build_index(ids, codes, BITS, kind, params)
    q = codes[::37]
    if kind == "flat":
        assert all(
            np.array_equal(x, y) for x, y in zip(index.search(q, 50), fresh.search(q, 50), strict=True)
        )
    assert np.array_equal(np.sort(index.ids()), np.arange(1100))
    # nothing new: unchanged, still without comparing
    write_index(root, index, CAT, MODEL, kind, BITS, len(ids), rep.build_seconds, source=rep.source)
    again = index_from_codes(
        root, CAT, MODEL, kind, params, previous=load_index(root, CAT, MODEL, kind, mmap=False)
    )
    assert (again[3].mode, compared) == ("unchanged", [])


def test_appended_rows_kept_by_a_row_list_are_added_without_comparing(tmp_path, compared):
    root = StorageRoot(tmp_path)
    a = publish_first(root, "flat", keep=np.arange(0, 1000, 2))
    b = write_part(root, 1000, 1100, 2)
    commit_parts(root, CAT, MODEL, [a, b], BITS, 1100)
    index, ids, _, rep = index_from_codes(
        root,
        CAT,
        MODEL,
        "flat",
        keep_rows=np.arange(0, 1100, 2),
        previous=load_index(root, CAT, MODEL, "flat", mmap=False),
    )
    assert (rep.mode, rep.added_rows, compared) == ("incremental", 50, [])
    assert np.array_equal(np.sort(index.ids()), np.arange(0, 1100, 2))


def test_a_deleted_row_or_a_rewritten_part_takes_the_comparing_path(tmp_path, compared):
    root = StorageRoot(tmp_path)
    a = publish_first(root, "flat", keep=np.arange(1000))
    # a row deleted (kept rows differ below the previous largest row_id)
    keep = np.setdiff1d(np.arange(1000), [5])
    index, ids, codes, rep = index_from_codes(
        root, CAT, MODEL, "flat", keep_rows=keep, previous=load_index(root, CAT, MODEL, "flat", mmap=False)
    )
    assert len(compared) == 1 and rep.removed_rows == 1 and 5 not in index.ids()
    # the part rewritten with other codes: compared, and the changed rows replaced
    c = write_part(root, 0, 1000, 9)
    commit_parts(root, CAT, MODEL, [c], BITS, 1000)
    assert c != a
    index, ids, codes, rep = index_from_codes(
        root,
        CAT,
        MODEL,
        "flat",
        keep_rows=np.arange(1000),
        previous=load_index(root, CAT, MODEL, "flat", mmap=False),
    )
    assert len(compared) == 2
    fresh = build_index(ids, codes, BITS, "flat")
    q = codes[::41]
    assert all(np.array_equal(x, y) for x, y in zip(index.search(q, 30), fresh.search(q, 30), strict=True))


def test_updated_codes_take_the_comparing_path(tmp_path, compared):
    root = StorageRoot(tmp_path)
    publish_first(root, "flat")
    new = np.full((1, BITS // 8), 255, np.uint8)
    index, ids, codes, rep = index_from_codes(
        root,
        CAT,
        MODEL,
        "flat",
        previous=load_index(root, CAT, MODEL, "flat", mmap=False),
        overrides=(np.array([3]), new),
    )
    assert len(compared) == 1 and np.array_equal(codes[3], new[0])
    assert index.search(new, 1)[1][0, 0] == 3


def test_kept_digests_hash_each_prefix_in_one_pass():
    import hashlib

    rows = np.unique(np.random.default_rng(3).integers(0, 10_000, 3000)).astype(np.int64)
    got = incremental_module.kept_digests(rows, [9_999, 4_000, -1, 20_000])
    for top, digest in got.items():
        assert digest == hashlib.sha256(rows[rows <= top]).hexdigest(), top
    assert incremental_module.kept_digests(None, [5, 7]) == {5: "all", 7: "all"}
