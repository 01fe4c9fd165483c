"""Delta segments (``storage.index.segments``): appends to an ``ivf`` or ``ivf-dedup`` index go into a delta
beside the untouched main file; main and delta search as one (every list probed: the exact distances); past
``DELTA_MAX_FRACTION`` the delta is folded in, and deletes fold it too. Published, loaded and checked like
any index."""

from __future__ import annotations

import numpy as np
import pytest

from storage.codes import commit_parts
from storage.fs import StorageRoot
from storage.index import (
    build_index,
    current,
    index_from_codes,
    load_index,
    load_index_cached,
    publish,
    published_manifest,
    read_manifest,
    verify_index,
    write_index,
)
from storage.index.publish import hash_file
from storage.index.segments import DELTA_MAX_FRACTION, Segmented, append_rows
from tests.storage.test_index_append import BITS, CAT, MODEL, publish_first, write_part
from tests.storage.test_index_kinds import brute_force

KINDS = ["ivf", "ivf-dedup"]


def codes_of(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    codes[::5] = codes[0]  # repeated codes: ties and shared distinct codes
    return codes


@pytest.mark.parametrize("kind", KINDS)
def test_main_and_delta_search_as_one_index(kind):
    ids = np.random.default_rng(0).permutation(5000)[:1200].astype(np.int64)
    codes = codes_of(1200, 1)
    main = build_index(ids[:1000], codes[:1000], 64, kind, {"nlist": 8, "nprobe": 8})
    index = Segmented(main, main.empty_like())
    index.add(ids[1000:], codes[1000:])
    assert (index.main.ntotal, index.delta.ntotal) == (1000, 200)
    assert verify_index(index, np.sort(ids), codes[np.argsort(ids)]) == []
    queries = codes_of(60, 2)
    dist, got = index.search(queries, 40)
    ref_d, _ = brute_force(ids, codes, queries, 40)
    assert np.array_equal(dist, ref_d)  # every list probed in both parts: the exact distances
    code_of = dict(zip(ids.tolist(), codes, strict=True))
    true = np.array(
        [[np.unpackbits(code_of[r] ^ q).sum() for r in row] for q, row in zip(queries, got, strict=True)]
    )
    assert np.array_equal(true, dist)
    key = dist.astype(np.int64) * (1 << 40) + got
    assert np.all(np.diff(key, axis=1) > 0)  # ranked by (distance, row_id), no row twice
    assert np.array_equal(np.sort(index.ids()), np.sort(ids))
    rows, held = index.row_codes()
    assert all(np.array_equal(code_of[r], c) for r, c in zip(rows.tolist(), held, strict=True))
    # search-time parameters reach both parts
    index.params["nprobe"] = 1
    index.configure()
    assert index.delta.index.nprobe == 1 == index.main.index.nprobe


def test_range_search_merges_both_parts():
    ids, codes = np.arange(900, dtype=np.int64), codes_of(900, 3)
    whole = build_index(ids, codes, 64, "ivf", {"nlist": 4, "nprobe": 4})
    index = append_rows(  # 80 rows: within the delta's share
        build_index(ids[:820], codes[:820], 64, "ivf", {"nlist": 4, "nprobe": 4}), ids[820:], codes[820:]
    )
    assert isinstance(index, Segmented)
    queries = codes[::90]
    la, da, ia = whole.range_search(queries, 26)
    lb, db, ib = index.range_search(queries, 26)
    assert np.array_equal(la, lb)
    for q in range(len(queries)):
        a = sorted(zip(ia[la[q] : la[q + 1]].tolist(), da[la[q] : la[q + 1]].tolist(), strict=True))
        b = sorted(zip(ib[lb[q] : lb[q + 1]].tolist(), db[lb[q] : lb[q + 1]].tolist(), strict=True))
        assert a == b


@pytest.mark.parametrize("kind", KINDS)
def test_appends_grow_the_delta_then_fold_it_past_the_fraction(kind):
    ids, codes = np.arange(1300, dtype=np.int64), codes_of(1300, 4)
    main = build_index(ids[:1000], codes[:1000], 64, kind, {"nlist": 8, "nprobe": 8})
    first = append_rows(main, ids[1000:1060], codes[1000:1060])
    second = append_rows(first, ids[1060:1100], codes[1060:1100])  # 100 rows = the fraction: still a delta
    assert DELTA_MAX_FRACTION == 0.1 and isinstance(second, Segmented) and second.delta.ntotal == 100
    third = append_rows(second, ids[1100:1101], codes[1100:1101])
    assert not isinstance(third, Segmented) and third.ntotal == 1101  # folded
    assert verify_index(third, ids[:1101], codes[:1101]) == []
    # kinds without delta segments extend the index itself
    flat = append_rows(build_index(ids[:1000], codes[:1000], 64, "flat"), ids[1000:1010], codes[1000:1010])
    assert not isinstance(flat, Segmented) and flat.ntotal == 1010


def published_first(root: StorageRoot, kind: str) -> str:
    """Rows 0-999 in one part, indexed (``publish_first``) and published; returns the part."""
    a = publish_first(root, kind)
    publish(root, read_manifest(root, CAT, MODEL, kind))
    return a


def _reindex(root: StorageRoot, kind: str, keep=None):
    prev = load_index(root, CAT, MODEL, kind, mmap=False)
    index, ids, codes, rep = index_from_codes(
        root, CAT, MODEL, kind, {"nlist": 8}, keep_rows=keep, previous=prev
    )
    assert verify_index(index, ids, codes) == []
    manifest = write_index(
        root, index, CAT, MODEL, kind, BITS, len(ids), rep.build_seconds, mode=rep.mode, source=rep.source
    )
    publish(root, manifest)
    return index, ids, codes, rep, manifest


def _files(root: StorageRoot) -> dict[str, str]:
    folder = root.path("indexes", CAT, MODEL)
    import os

    return {
        n: hash_file(os.path.join(folder, n)) for n in sorted(os.listdir(folder)) if not n.endswith(".json")
    }


@pytest.mark.parametrize("kind", KINDS)
def test_published_appends_write_only_the_delta_and_fold_when_it_grows(tmp_path, kind):
    root = StorageRoot(tmp_path)
    a = published_first(root, kind)
    main_files = _files(root)

    b = write_part(root, 1000, 1050, 2)
    commit_parts(root, CAT, MODEL, [a, b], BITS, 1050)
    index, ids, codes, rep, manifest = _reindex(root, kind)
    assert isinstance(index, Segmented) and (rep.mode, rep.added_rows) == ("incremental", 50)
    assert manifest.file == f"{kind}.faiss" and manifest.delta["file"] == f"{kind}.delta.faiss"
    assert (manifest.ntotal, manifest.delta["ntotal"]) == (1050, 50)
    assert {
        n: s for n, s in _files(root).items() if n in main_files
    } == main_files  # the main files untouched
    assert current(root, CAT)["sha256"] == manifest.version != manifest.sha256
    loaded, again = load_index(root, CAT)  # the published one: main + delta
    assert isinstance(loaded, Segmented) and again == manifest and loaded.ntotal == 1050
    assert verify_index(loaded, ids, codes, seed=1) == []
    assert published_manifest(root, CAT, current(root, CAT)) == manifest
    assert load_index_cached(root, CAT)[0].ntotal == 1050
    q = codes[::41]
    assert np.array_equal(loaded.search(q, 20)[0], index.search(q, 20)[0])

    c = write_part(root, 1050, 1090, 3)  # 90 rows in the delta: still one, in the other slot
    commit_parts(root, CAT, MODEL, [a, b, c], BITS, 1090)
    index, *_, manifest = _reindex(root, kind)
    assert manifest.file == f"{kind}.faiss" and manifest.delta["file"] == f"{kind}.delta.b.faiss"
    assert manifest.delta["ntotal"] == 90 and load_index(root, CAT)[0].ntotal == 1090

    d = write_part(root, 1090, 1120, 4)  # 120 rows past the main's 1000: folded, the whole index written
    commit_parts(root, CAT, MODEL, [a, b, c, d], BITS, 1120)
    index, ids, codes, rep, manifest = _reindex(root, kind)
    assert not isinstance(index, Segmented) and manifest.delta == {} and manifest.file == f"{kind}.b.faiss"
    assert current(root, CAT)["sha256"] == manifest.sha256 == manifest.version
    loaded, _ = load_index(root, CAT)
    assert not isinstance(loaded, Segmented) and verify_index(loaded, ids, codes, seed=2) == []


def test_deletes_fold_the_delta_and_match_a_fresh_build(tmp_path):
    root = StorageRoot(tmp_path)
    a = published_first(root, "ivf-dedup")
    b = write_part(root, 1000, 1040, 2)
    commit_parts(root, CAT, MODEL, [a, b], BITS, 1040)
    assert isinstance(_reindex(root, "ivf-dedup")[0], Segmented)
    keep = np.setdiff1d(np.arange(1040), [3, 500, 1001, 1039])  # deleted from the main and from the delta
    index, ids, codes, rep, manifest = _reindex(root, "ivf-dedup", keep)
    assert not isinstance(index, Segmented) and manifest.delta == {} and rep.removed_rows == 4
    assert np.array_equal(np.sort(index.ids()), keep)
    fresh = build_index(ids, codes, BITS, "ivf-dedup", {"nlist": 8})
    assert np.array_equal(index.rows, fresh.rows) and np.array_equal(index.offsets, fresh.offsets)


def test_a_damaged_delta_file_is_refused(tmp_path):
    root = StorageRoot(tmp_path)
    a = published_first(root, "ivf")
    b = write_part(root, 1000, 1010, 2)
    commit_parts(root, CAT, MODEL, [a, b], BITS, 1010)
    manifest = _reindex(root, "ivf")[-1]
    path = root.path("indexes", CAT, MODEL, manifest.delta["file"])
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff")
    with pytest.raises(ValueError, match=r"ivf\.delta\.faiss does not match its manifest's sha256"):
        load_index(root, CAT)
