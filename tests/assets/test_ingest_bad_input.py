"""Bad input: each bad item is rejected with its reason (DuckDB ``rejected`` table and asset metadata) and
ingestion goes on; too many rejects fail the asset naming the worst reasons; an unusable source fails at once."""

from __future__ import annotations

import os
import struct
import zlib

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.catalogue import read_catalogue
from storage.diagnostics import DiagnosticsDB
from storage.fs import StorageRoot
from storage.ingest import Limits, TooManyRejects, ingest
from storage.protocols import Protocol
from storage.sources import SourceError, list_folder, list_manifest
from tests.catalogue_factory import class_image, png, write_folder
from tests.tiny_graph import failure_messages, resources, tiny_catalogue_config

TINY = Protocol(train_per_label=4, query_per_label=2, validation_size=2)
ANY = Limits(max_reject_fraction=1.0)  # keep going whatever is rejected


def _bomb_png(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims ``width`` x ``height`` pixels."""
    data = bytearray(png(class_image(0, 0, 4)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _corrupt_png(good: bytes) -> bytes:
    """``good`` with its pixel data (the IDAT payload) replaced by seeded noise: the header still parses."""
    at = good.index(b"IDAT")
    n = int.from_bytes(good[at - 4 : at], "big")
    return (
        good[: at + 4]
        + bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8))
        + good[at + 4 + n :]
    )


def bad_folder(tmp_path):
    """24 good images in cat/dog/fox plus one item of every folder-level kind of bad input."""
    src = write_folder(tmp_path / "src", per_class=8)
    good = (src / "cat" / "000.png").read_bytes()
    (src / "cat" / "corrupt.png").write_bytes(_corrupt_png(good))
    (src / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "cat" / "empty.png").write_bytes(b"")
    (src / "cat" / "notes.txt").write_text("not an image")  # not an image by content: skipped, not rejected
    (src / "dog" / "bomb.png").write_bytes(_bomb_png(100_000, 100_000))
    class_image(1, 77, size=300).save(src / "dog" / "huge.png")  # over max_pixels=50_000 below
    (src / "dog" / "copy.png").write_bytes((src / "dog" / "003.png").read_bytes())
    (src / "loose.png").write_bytes(good)  # not in a class folder
    outside = tmp_path / "outside"
    outside.mkdir()
    class_image(2, 99).save(outside / "secret.png")
    os.symlink(outside / "secret.png", src / "fox" / "link.png")
    os.symlink(outside, src / "fox" / "linked-dir")
    (src / ".DS_Store").write_bytes(b"junk")  # a system file: skipped, not rejected
    return src


EXPECTED_FOLDER = {
    "cat/corrupt.png": "corrupt",
    "cat/truncated.png": "truncated",
    "cat/empty.png": "empty-file",
    "dog/bomb.png": "decompression-bomb",
    "dog/huge.png": "decompression-bomb",
    "dog/copy.png": "duplicate-image",
    "loose.png": "no-label",
    "fox/link.png": "escapes-root",
    "fox/linked-dir": "escapes-root",
}
SKIPPED_FOLDER = {"cat/notes.txt": "not-an-image", ".DS_Store": "system-file"}


def test_every_bad_folder_item_is_rejected_with_its_reason(tmp_path):
    src = bad_folder(tmp_path)
    r = ingest("zoo", list_folder(str(src)), TINY, Limits(max_pixels=50_000, max_reject_fraction=1.0))
    assert {x.item: x.reason for x in r.rejected} == EXPECTED_FOLDER
    assert {x.item: x.reason for x in r.skipped} == SKIPPED_FOLDER
    assert r.table.num_rows == 24 and r.listed == 24 + len(EXPECTED_FOLDER) + len(SKIPPED_FOLDER)
    copy = next(x for x in r.rejected if x.item == "dog/copy.png")
    assert "dog/003.png" in copy.detail  # names the image it duplicates


def test_every_bad_manifest_row_is_rejected_with_its_reason(tmp_path):
    write_folder(tmp_path / "m" / "img", per_class=8)
    class_image(0, 5).save(tmp_path / "outside.png")
    (tmp_path / "m" / "adir.png").mkdir()
    lines = ["uri,label"]
    lines += [f"img/{c}/{i:03d}.png,{c}" for c in ("cat", "dog", "fox") for i in range(8)]
    lines += [
        "img/cat/404.png,cat",  # missing
        "adir.png,cat",  # a folder: unreadable
        "../outside.png,cat",  # escapes through ..
        f"{tmp_path / 'outside.png'},cat",  # absolute path outside the root
        "img/cat/000.png,dog",  # same id again
        "img/dog/001.png,",  # no label
        ",cat",  # empty uri
        "img/fox/000.png,fox,extra",  # a line that does not parse
    ]
    (tmp_path / "m" / "manifest.csv").write_text("\n".join(lines) + "\n")
    r = ingest("m", list_manifest(str(tmp_path / "m" / "manifest.csv")), TINY, ANY)
    reasons = sorted(x.reason for x in r.rejected)
    assert reasons == sorted(
        [
            "missing",
            "unreadable",
            "escapes-root",
            "escapes-root",
            "duplicate-id",
            "no-label",
            "missing",
            "bad-row",
        ]
    )
    assert r.table.num_rows == 24
    bad_row = next(x for x in r.rejected if x.reason == "bad-row")
    assert "extra" in bad_row.detail and bad_row.item.startswith("manifest.csv:")


def test_labels_that_do_not_parse_are_rejected(tmp_path):
    for i in range(12):
        class_image(i % 3, i).save(tmp_path / f"{i}.png")
    labels = [0.0, 1.0, 2.0] * 3 + [1.5, float("nan"), None]
    pq.write_table(
        pa.table({"uri": [f"{i}.png" for i in range(12)], "label": labels}), tmp_path / "m.parquet"
    )
    r = ingest(
        "m",
        list_manifest(str(tmp_path / "m.parquet")),
        Protocol(train_per_label=2, query_per_label=1, validation_size=1),
        ANY,
    )
    assert sorted((x.item, x.reason) for x in r.rejected) == [
        ("10.png", "bad-label"),
        ("11.png", "no-label"),
        ("9.png", "bad-label"),
    ]
    assert r.info.label_names == ["0", "1", "2"]


def test_duplicate_ids_in_manifest_keep_the_first(tmp_path):
    write_folder(tmp_path / "img", per_class=4)
    rows = [{"id": f"x{i}", "uri": f"img/cat/{i:03d}.png", "label": "cat"} for i in range(4)]
    rows.append({"id": "x0", "uri": "img/dog/000.png", "label": "dog"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    r = ingest(
        "m",
        list_manifest(str(tmp_path / "m.parquet"), id_column="id"),
        Protocol(train_per_label=2, query_per_label=1, validation_size=1),
        ANY,
    )
    assert [(x.item, x.reason) for x in r.rejected] == [("x0", "duplicate-id")]


def test_a_source_of_only_bad_items_fails_on_rejects_not_on_the_protocol(tmp_path):
    for i in range(5):
        (tmp_path / "src" / "cat").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "cat" / f"{i}.png").write_bytes(b"")
    with pytest.raises(TooManyRejects, match=r"5 of 5 items rejected .* worst reasons: empty-file x5") as err:
        ingest("bad", list_folder(str(tmp_path / "src")), TINY)
    assert len(err.value.rejected) == 5 and err.value.listed == 5


@pytest.mark.parametrize(
    "case", ["empty-folder", "missing-folder", "missing-manifest", "header-only", "no-column"]
)
def test_wholly_unusable_source_fails_at_once(tmp_path, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "header.csv").write_text("uri,label\n")
    (tmp_path / "cols.csv").write_text("path,label\na.png,cat\n")
    with pytest.raises(
        SourceError,
        match={
            "empty-folder": "holds no files",
            "missing-folder": "does not exist",
            "missing-manifest": "does not exist",
            "header-only": "no rows",
            "no-column": r"lacks column\(s\) \['uri'\]",
        }[case],
    ):
        if case == "empty-folder":
            list_folder(str(tmp_path / "empty"))
        elif case == "missing-folder":
            list_folder(str(tmp_path / "nope"))
        elif case == "missing-manifest":
            list_manifest(str(tmp_path / "nope.csv"))
        else:
            list_manifest(str(tmp_path / ("header.csv" if case == "header-only" else "cols.csv")))


def _materialise_catalogue(
    tmp_path, config: dict, name: str = "zoo", times: int = 1
) -> dg.ExecuteInProcessResult:
    from assets.catalogue import catalogue

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("catalogues", [name])
    for _ in range(times):
        result = dg.materialize(
            [catalogue],
            partition_key=name,
            instance=instance,
            raise_on_error=False,
            resources={
                k: v
                for k, v in resources(str(tmp_path / "data"), str(tmp_path / "diag.duckdb")).items()
                if k != "compute"
            },
            run_config={"ops": {"catalogue": {"config": config}}},
        )
    return result


def test_asset_reports_rejects_in_duckdb_and_metadata(tmp_path):
    src = bad_folder(tmp_path)
    result = _materialise_catalogue(
        tmp_path, tiny_catalogue_config(str(src), max_pixels=50_000, max_reject_fraction=0.5), times=2
    )
    assert result.success, failure_messages(result)
    meta = result.asset_materializations_for_node("catalogue")[0].metadata
    assert meta["unchanged"].value  # the second ingest of the unchanged source wrote nothing
    assert meta["rejected_items"].value == 9 and meta["accepted_items"].value == 24
    assert meta["skipped_items"].value == 2 and meta["listed_items"].value == 35
    assert meta["skip_reasons"].value == {"not-an-image": 1, "system-file": 1}
    assert "| cat/truncated.png | truncated |" in meta["rejected"].value
    assert "| decompression-bomb | 2 |" in meta["reject_reasons"].value
    db = DiagnosticsDB(tmp_path / "diag.duckdb")
    _, rows = db.query("SELECT item, reason FROM latest_rejected WHERE catalogue = 'zoo' ORDER BY item")
    assert dict(rows) == EXPECTED_FOLDER
    _, status = db.query("SELECT status FROM runs WHERE kind = 'ingest'")
    assert status == [("success",), ("success",)]
    table, _ = read_catalogue(StorageRoot(tmp_path / "data"), "zoo")
    assert table.num_rows == 24


def test_too_many_rejects_fail_naming_the_worst_reasons(tmp_path):
    src = bad_folder(tmp_path)
    for i in range(3):
        (src / "cat" / f"junk{i}.png").write_bytes(_corrupt_png(png(class_image(0, 50 + i))))
    result = _materialise_catalogue(
        tmp_path, tiny_catalogue_config(str(src), max_pixels=50_000, max_reject_fraction=0.2)
    )
    assert not result.success
    (message,) = failure_messages(result)
    assert "11 of 36 items rejected" in message and "max_reject_fraction 20.0%" in message
    assert "1 exact duplicates also left out, not counted" in message and "2 other files skipped" in message
    assert "worst reasons: corrupt x4" in message and "decompression-bomb x2" in message
    db = DiagnosticsDB(tmp_path / "diag.duckdb")
    assert db.query("SELECT status, count(*) FROM runs JOIN rejected USING (run_id) GROUP BY 1")[1] == [
        ("failed", 12)
    ]
    assert not StorageRoot(tmp_path / "data").exists("catalogues", "zoo", "catalogue.json")


def test_unusable_source_fails_the_asset_at_once(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _materialise_catalogue(tmp_path, tiny_catalogue_config(str(tmp_path / "empty")))
    assert not result.success
    assert any("unusable source" in m and "holds no files" in m for m in failure_messages(result))


def test_cli_ingest_flags_and_reject_report(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    src = bad_folder(tmp_path)
    args = [
        "ingest",
        "--root",
        str(tmp_path / "data"),
        "--db",
        str(tmp_path / "diag.duckdb"),
        "--catalogue",
        "zoo",
        "--source",
        str(src),
        "--train-per-label",
        "4",
        "--query-per-label",
        "2",
        "--validation-size",
        "2",
    ]
    assert main(args) == 1
    # huge.png passes the default max_pixels; dog/copy.png, an exact duplicate, is left out but not counted
    assert "7 of 33 items rejected" in capsys.readouterr().err
    assert main([*args, "--max-reject-fraction", "0.5"]) == 0
    table, info = read_catalogue(StorageRoot(tmp_path / "data"), "zoo")
    assert table.num_rows == 25 and info.protocol["train_per_label"] == 4


def test_files_over_max_file_bytes_are_rejected(tmp_path):
    src = write_folder(tmp_path / "src", per_class=8)
    class_image(0, 500, size=64).save(src / "cat" / "big.png")  # several KB; the 12 px images are far smaller
    (tmp_path / "m.csv").write_text(
        "uri,label\nsrc/cat/big.png,cat\n"
        + "".join(f"src/dog/{i:03d}.png,dog\nsrc/fox/{i:03d}.png,fox\n" for i in range(8))
    )
    limits = Limits(max_file_bytes=2000, max_reject_fraction=1.0)
    proto = Protocol(train_per_label=4, query_per_label=2, validation_size=1)
    for source in (
        list_folder(str(src)),
        list_manifest(str(tmp_path / "m.csv")),
    ):  # size from the listing / the read
        r = ingest("big", source, proto, limits)
        assert [(x.item.rsplit("/", 1)[-1], x.reason) for x in r.rejected] == [("big.png", "too-large")]
