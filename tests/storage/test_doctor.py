"""``storage.doctor`` and ``vitrieve doctor``: leftovers of interrupted and superseded runs are found, removed on
request, and nothing a reader needs is touched (the published index and the codes still load afterwards)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from pipelines.cli import main
from storage.catalogue import read_catalogue, write_catalogue
from storage.codes import read_codes, write_codes
from storage.doctor import examine, fix
from storage.fs import StorageRoot
from storage.index import build_index, current, load_index, publish, verify_index, write_index
from tests.storage.test_catalogue_shards import INFO as CATALOGUE_INFO
from tests.storage.test_catalogue_shards import _table as catalogue_table

ROWS = np.arange(60, dtype=np.int64) + 10
CODES = np.random.default_rng(3).integers(0, 256, (60, 8), dtype=np.uint8)


def _old(path) -> None:
    then = time.time() - 3600
    os.utime(path, (then, then))


def _root_with_leftovers(tmp_path) -> StorageRoot:
    """A published catalogue (two builds of its flat index, so a spare slot) plus one leftover of each kind."""
    root = StorageRoot(tmp_path)
    write_codes(root, "cat", "m1", ROWS, CODES, 64)
    for _ in range(2):  # the second build goes to the other slot, and is the one published
        index = build_index(ROWS, CODES, 64)
        publish(root, write_index(root, index, "cat", "m1", "flat", 64, len(ROWS), 0.01))
    hnsw = build_index(ROWS, CODES, 64, "hnsw")
    write_index(root, hnsw, "cat", "m1", "hnsw", 64, len(ROWS), 0.01)  # built, never published
    write_index(
        root, build_index(ROWS, CODES, 64), "cat", "m0", "flat", 64, len(ROWS), 0.01
    )  # an older model
    orphan = tmp_path / "codes" / "cat" / "m1" / "part-00007.parquet"
    orphan.write_bytes(b"an encode killed before its commit")
    _old(orphan)
    write_catalogue(root, catalogue_table(np.arange(40)), CATALOGUE_INFO)
    stray = tmp_path / "catalogues" / "cat" / "shard-00001-00ff00ff00ff00ff.parquet"
    stray.write_bytes(b"an ingest killed before its commit")
    _old(stray)
    temp = tmp_path / "catalogues" / "cat" / ".catalogue.parquet.1a2b.tmp"
    temp.write_bytes(b"half")
    _old(temp)
    (tmp_path / "catalogues" / "cat" / ".catalogue.parquet.9z.tmp").write_bytes(b"a live writer's")
    for model_id, files in {
        "done": ("model.json", "model.safetensors", "last.pt"),
        "lost": ("model.safetensors",),
    }.items():
        for name in files:
            root.write_bytes(b"{}", "models", model_id, name)
    root.write_bytes(b"{}", "models", "training", "last.pt")  # resumable: kept
    root.write_bytes(b"{}", "models", "training", "model.safetensors")
    return root


def test_examine_finds_each_leftover_and_fix_keeps_what_readers_need(tmp_path):
    root = _root_with_leftovers(tmp_path)
    found = [(f.problem, f.path) for f in examine(root)]
    published = current(root, "cat")
    assert published["model_id"] == "m1"
    assert found == [
        ("stale-temp", "catalogues/cat/.catalogue.parquet.1a2b.tmp"),
        ("orphan-part", "catalogues/cat/shard-00001-00ff00ff00ff00ff.parquet"),
        ("orphan-part", "codes/cat/m1/part-00007.parquet"),
        ("unpublished-index", "indexes/cat/m0"),
        ("unpublished-index", "indexes/cat/m1/flat.faiss"),  # the first build: the spare slot now
        ("unpublished-index", "indexes/cat/m1/flat.faiss.json"),
        ("unpublished-index", "indexes/cat/m1/hnsw.faiss"),
        ("unpublished-index", "indexes/cat/m1/hnsw.faiss.json"),
        ("unpublished-index", "indexes/cat/m1/hnsw.manifest.json"),
        ("unpublished-index", "indexes/cat/m1/hnsw.rows.npy"),
        ("stale-resume-state", "models/done/last.pt"),
        ("orphan-weights", "models/lost/model.safetensors"),
    ]
    assert all(f.bytes > 0 for f in examine(root))
    assert len(fix(root, examine(root))) == len(found)
    assert examine(root) == []
    assert root.exists("catalogues", "cat", ".catalogue.parquet.9z.tmp")  # a live writer's: untouched
    assert root.exists("models", "training", "last.pt") and root.exists("models", "done", "model.json")
    index, manifest = load_index(root, "cat")
    assert manifest.sha256 == published["sha256"] and manifest.file == "flat.b.faiss"
    row_ids, codes, _ = read_codes(root, "cat", "m1")
    assert verify_index(index, row_ids, codes) == []
    assert read_catalogue(root, "cat")[0].num_rows == 40  # its listed shard files: kept
    for name in ("flat.manifest.json", "manifest.json"):  # described the removed hnsw build: repointed
        assert json.loads(root.read_text("indexes", "cat", "m1", name))["file"] == "flat.b.faiss"
    # the next build goes to the free slot and publishes as before
    publish(root, write_index(root, build_index(ROWS, CODES, 64), "cat", "m1", "flat", 64, len(ROWS), 0.01))
    assert load_index(root, "cat")[1].file == "flat.faiss"


def test_a_clean_root_has_nothing_to_report(tmp_path):
    root = StorageRoot(tmp_path)
    assert examine(root) == []
    write_codes(root, "cat", "m1", ROWS, CODES, 64)
    publish(root, write_index(root, build_index(ROWS, CODES, 64), "cat", "m1", "flat", 64, len(ROWS), 0.01))
    assert examine(root) == []


def test_doctor_verb_reports_then_fixes(tmp_path, capsys):
    _root_with_leftovers(tmp_path)
    assert main(["doctor", "--root", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len(report) == 12 and not any(r["removed"] for r in report)
    assert main(["doctor", "--root", str(tmp_path), "--fix"]) == 0
    assert "removed 12 of 12" in capsys.readouterr().err
    assert main(["doctor", "--root", str(tmp_path)]) == 0
    assert "nothing left behind" in capsys.readouterr().err


@pytest.mark.parametrize("minutes", [0.0, 120.0])
def test_age_threshold_protects_live_writers(tmp_path, minutes):
    root = _root_with_leftovers(tmp_path)
    temps = {f.path for f in examine(root, older_than_s=minutes * 60) if f.problem == "stale-temp"}
    live = "catalogues/cat/.catalogue.parquet.9z.tmp"
    assert (live in temps) == (minutes == 0.0)
    assert ("catalogues/cat/.catalogue.parquet.1a2b.tmp" in temps) == (minutes < 60)


def test_a_published_delta_segment_is_kept_and_the_spare_delta_slot_reported(tmp_path):
    from storage.codes import commit_parts
    from tests.storage.test_index_append import write_part
    from tests.storage.test_index_segments import _reindex, published_first

    root = StorageRoot(tmp_path)
    parts = [published_first(root, "ivf-dedup")]  # catalogue "cat", model "m"
    for lo in (1000, 1030):  # two appends: the published delta sits in the second delta slot
        parts.append(write_part(root, lo, lo + 30, lo))
        commit_parts(root, "cat", "m", parts, 64, lo + 30)
        manifest = _reindex(root, "ivf-dedup")[-1]
    assert manifest.delta["file"] == "ivf-dedup.delta.b.faiss"
    found = {f.path for f in examine(root)}
    assert found == {
        "indexes/cat/m/ivf-dedup.delta.faiss",  # the first append's delta: superseded
        "indexes/cat/m/ivf-dedup.delta.faiss.json",
        "indexes/cat/m/ivf-dedup.delta.rows.npy",
    }
    fix(root, examine(root))
    assert examine(root) == []
    loaded, again = load_index(root, "cat")
    assert again == manifest and loaded.ntotal == 1060
