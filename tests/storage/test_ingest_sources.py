"""Every source kind and protocol: class folders, CSV / Parquet manifests (one or several labels), explicit
splits, per-class and per-label sampling, image modes and EXIF orientation, incremental re-ingest."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imaging.decode import decode_images
from storage.catalogue import labels_matrix
from storage.images import encoded_images
from storage.ingest import Limits, ingest
from storage.protocols import Protocol
from storage.sources import list_folder, list_manifest, parse_labels
from tests.catalogue_factory import class_image, write_folder, write_multilabel

PER_CLASS = Protocol(train_per_label=4, query_per_label=2, validation_size=2, seed=7)


def _count(table: pa.Table, flag: str) -> int:
    return int(pc.sum(table[flag]).as_py() or 0)


def test_folder_per_class_protocol(tmp_path):
    src = write_folder(tmp_path / "src", classes=("cat", "dog", "fox"), per_class=8)
    result = ingest("pets", list_folder(str(src)), PER_CLASS)
    table, info = result.table, result.info
    assert result.rejected == [] and table.num_rows == 24
    assert info.label_names == ["cat", "dog", "fox"] and info.protocol["seed"] == 7
    assert table["row_id"].to_pylist() == list(range(24)) and info.next_row_id == 24
    labels = labels_matrix(table, 3)
    q, tr, val = (table[f].to_numpy(zero_copy_only=False) for f in ("in_query", "in_train", "in_validation"))
    assert labels[q].sum(axis=0).tolist() == [2, 2, 2]  # exactly the quota per class
    assert (labels[tr].sum(axis=0) + labels[val].sum(axis=0)).tolist() == [4, 4, 4]
    assert val.sum() == 2 and not (val & tr).any() and not (q & tr).any()
    assert _count(table, "in_database") == 24 - 6  # database = all: every non-query image, training included
    assert set(table["uri"].to_pylist()) == {str(p) for p in src.rglob("*.png")}
    again = ingest("pets", list_folder(str(src)), PER_CLASS).table
    assert again["in_query"].equals(table["in_query"]) and again["in_validation"].equals(
        table["in_validation"]
    )
    other_seed = ingest(
        "pets",
        list_folder(str(src)),
        Protocol(train_per_label=4, query_per_label=2, validation_size=2, seed=8),
    ).table
    assert not other_seed["in_query"].equals(table["in_query"])


def test_database_rest_excludes_training_images(tmp_path):
    src = write_folder(tmp_path / "src", per_class=8)
    table = ingest(
        "pets",
        list_folder(str(src)),
        Protocol(train_per_label=4, query_per_label=2, database="rest", validation_size=2),
    ).table
    db, tr = (
        table["in_database"].to_numpy(zero_copy_only=False),
        table["in_train"].to_numpy(zero_copy_only=False),
    )
    assert not (db & tr).any() and db.sum() == 24 - 6 - 10  # rest (6) + validation (2, database only)


def test_multilabel_manifest_per_label_quotas(tmp_path):
    manifest = write_multilabel(tmp_path, n=40)
    proto = Protocol(train_per_label=5, query_per_label=2, validation_size=2, seed=1)
    table, info = (
        (r := ingest("tags", list_manifest(str(manifest), label_columns=["tags"]), proto)).table,
        r.info,
    )
    assert r.rejected == [] and table.num_rows == 40
    assert info.label_names == ["road", "sky", "tree", "water"]
    assert max(len(x) for x in table["labels"].to_pylist()) == 2  # several labels per image kept
    labels = labels_matrix(table, 4)
    q = table["in_query"].to_numpy(zero_copy_only=False)
    tv = table["in_train"].to_numpy(zero_copy_only=False) | table["in_validation"].to_numpy(
        zero_copy_only=False
    )
    assert (labels[q].sum(axis=0) >= 2).all() and (
        labels[tv].sum(axis=0) >= 5
    ).all()  # at least the quota per label
    assert table.filter(pc.equal(table["image_id"], "images/001.png"))["labels"].to_pylist() == [
        [2, 3]
    ]  # tree|water
    parquet = write_multilabel(tmp_path / "pq", n=40, fmt="parquet")  # list<string> label column
    same = ingest("tags", list_manifest(str(parquet), label_columns=["tags"]), proto).table
    assert same["labels"].equals(table["labels"]) and same["in_query"].equals(table["in_query"])


def test_one_hot_columns_and_explicit_split_column(tmp_path):
    rows = []
    for i in range(12):
        class_image(i % 2, i).save(tmp_path / f"{i}.png")
        rows.append(
            {
                "file": f"{i}.png",
                "id": f"img{i}",
                "red": int(i % 2 == 0),
                "green": "yes" if i % 2 else "no",
                "split": ["train", "train", "query", "database", "val", "test"][i % 6],
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    src = list_manifest(
        str(tmp_path / "m.parquet"),
        uri_column="file",
        label_columns=["red", "green"],
        label_format="one_hot",
        split_column="split",
        id_column="id",
    )
    r = ingest("rg", src, Protocol(kind="explicit", validation_size=0))
    table = r.table
    assert r.info.label_names == ["green", "red"] and r.info.protocol["kind"] == "explicit"
    assert set(table["image_id"].to_pylist()) == {f"img{i}" for i in range(12)}
    assert (_count(table, "in_train"), _count(table, "in_query"), _count(table, "in_validation")) == (4, 4, 2)
    assert _count(table, "in_database") == 8  # train + database + validation


def test_folder_with_split_folders(tmp_path):
    for split, n in (("train", 4), ("query", 2), ("database", 3)):
        write_folder(
            tmp_path / "src" / split, per_class=n, start={"train": 0, "query": 10, "database": 20}[split]
        )
    r = ingest(
        "s",
        list_folder(str(tmp_path / "src"), explicit_splits=True),
        Protocol(kind="explicit", validation_size=3),
    )
    t = r.table
    assert r.info.label_names == ["cat", "dog", "fox"] and t.num_rows == 27
    assert (_count(t, "in_query"), _count(t, "in_train"), _count(t, "in_validation")) == (6, 9, 3)
    assert set(pc.unique(t.filter(t["in_query"])["image_id"]).to_pylist()) == {
        f"query/{c}/{i:03d}.png" for c in ("cat", "dog", "fox") for i in range(10, 12)
    }


def _exif_rotated(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_image_modes_and_exif_orientation(tmp_path):
    """Grey, RGB, RGBA, palette, 16-bit and EXIF-rotated images ingest, and all become model arrays of one
    shape in imaging.decode.to_model_array (the one conversion)."""
    d = tmp_path / "src" / "things"
    d.mkdir(parents=True)
    base = class_image(0, 1, size=16)
    base.convert("L").save(d / "grey.png")
    base.save(d / "rgb.png")
    rgba = base.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(d / "rgba.png")
    base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(d / "palette.png")
    Image.fromarray(np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200).save(d / "deep16.png")
    wide = Image.fromarray(np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (16, 1)), "L").convert("RGB")
    (d / "rotated.jpg").write_bytes(_exif_rotated(wide))  # stored 24x16, displayed 16x24
    class_image(1, 1).save(tmp_path / "src" / "things" / "b.gif")
    r = ingest(
        "modes",
        list_folder(str(tmp_path / "src")),
        Protocol(train_per_label=3, query_per_label=1, validation_size=1),
        Limits(max_reject_fraction=0),
    )
    t = r.table.sort_by("image_id")
    facts = {
        row["image_id"].split("/")[1]: (row["width"], row["height"], row["channels"]) for row in t.to_pylist()
    }
    assert facts["grey.png"][2] == 1 and facts["deep16.png"][2] == 1
    assert facts["rgb.png"][2] == facts["rgba.png"][2] == facts["palette.png"][2] == 3
    assert facts["rotated.jpg"] == (16, 24, 3)  # EXIF orientation applied
    images = decode_images(encoded_images(t), 8, 3)
    assert images.shape == (len(facts), 3, 8, 8) and images.dtype == np.uint8
    rgba_arr = decode_images(encoded_images(t.filter(pc.match_substring(t["image_id"], "rgba"))), 16, 3)
    assert rgba_arr[0, :, 0, 0].tolist() == [255, 255, 255]  # transparency composited on white
    deep = decode_images(encoded_images(t.filter(pc.match_substring(t["image_id"], "deep16"))), 16, 1)
    assert deep.max() == 255 and deep.min() == 0  # 16-bit scaled to 8 bits


def test_reingest_is_noop_and_new_files_get_new_row_ids(tmp_path):
    src = write_folder(tmp_path / "src", per_class=8)
    first = ingest("pets", list_folder(str(src)), PER_CLASS)
    again = ingest("pets", list_folder(str(src)), PER_CLASS, previous=(first.table, first.info))
    assert again.unchanged and again.table.equals(first.table) and again.added == again.removed == 0
    write_folder(src, per_class=2, start=100)  # 6 new files
    (src / "cat" / "000.png").unlink()  # and one gone
    grown = ingest("pets", list_folder(str(src)), PER_CLASS, previous=(again.table, again.info))
    t = grown.table
    assert not grown.unchanged and grown.added == 6 and grown.removed == 1
    new = t.filter(pc.match_substring(t["image_id"], "/10"))
    assert sorted(new["row_id"].to_pylist()) == list(range(24, 30)) and grown.info.next_row_id == 30
    old_ids = dict(zip(first.table["image_id"].to_pylist(), first.table["row_id"].to_pylist(), strict=True))
    for row in t.to_pylist():
        if row["image_id"] in old_ids:
            assert row["row_id"] == old_ids[row["image_id"]]  # stable row ids
    kept = t.filter(pc.less(t["row_id"], 24))
    before = first.table.filter(pc.is_in(first.table["row_id"], kept["row_id"]))
    assert kept["in_query"].equals(before["in_query"]) and kept["ingested_at"].equals(before["ingested_at"])
    # Removing the newest file does not free its row id for reuse.
    (src / "fox" / "101.png").unlink()
    shrunk = ingest("pets", list_folder(str(src)), PER_CLASS, previous=(t, grown.info))
    class_image(2, 555).save(src / "fox" / "555.png")
    regrown = ingest("pets", list_folder(str(src)), PER_CLASS, previous=(shrunk.table, shrunk.info))
    assert regrown.table.filter(pc.equal(regrown.table["image_id"], "fox/555.png"))["row_id"].to_pylist() == [
        30
    ]


def test_changed_file_keeps_row_id_and_stale_bytes_are_refused(tmp_path):
    src = write_folder(tmp_path / "src", per_class=8)
    first = ingest("pets", list_folder(str(src)), PER_CLASS)
    class_image(0, 999).save(src / "cat" / "003.png")  # same id, other pixels
    second = ingest("pets", list_folder(str(src)), PER_CLASS, previous=(first.table, first.info))
    row = lambda t: t.filter(pc.equal(t["image_id"], "cat/003.png")).to_pylist()[0]  # noqa: E731
    assert row(second.table)["row_id"] == row(first.table)["row_id"]
    assert row(second.table)["sha256"] != row(first.table)["sha256"]
    with pytest.raises(ValueError, match="changed since it was ingested"):
        encoded_images(first.table.filter(pc.equal(first.table["image_id"], "cat/003.png")))


@pytest.mark.parametrize(
    ("cell", "fmt", "expected"),
    [
        ("a|b", "values", ["a", "b"]),
        (3, "values", ["3"]),
        (2.0, "values", ["2"]),
        (["x", 1], "values", ["x", "1"]),
        (None, "values", []),
        (" a | ", "values", ["a"]),
        ("1", "one_hot", ["c"]),
        (False, "one_hot", []),
        (0, "one_hot", []),
    ],
)
def test_parse_labels(cell, fmt, expected):
    assert parse_labels(cell, "c", fmt, "|") == expected


@pytest.mark.parametrize(
    ("cell", "fmt"),
    [
        (1.5, "values"),
        (float("nan"), "values"),
        (True, "values"),
        ("maybe", "one_hot"),
        (2, "one_hot"),
        ("a\x00b", "values"),
    ],
)
def test_labels_that_do_not_parse(cell, fmt):
    with pytest.raises(ValueError):
        parse_labels(cell, "c", fmt, "|")


def test_decoding_on_threads_gives_the_single_thread_arrays():
    import io

    from PIL import Image

    from imaging.decode import DECODE_CHUNK, decode_images

    rng = np.random.default_rng(0)
    blobs = []
    for i in range(2 * DECODE_CHUNK + 5):  # three chunks, the last one short
        buf = io.BytesIO()
        mode = ("RGB", "RGBA", "L", "P")[i % 4]
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), np.uint8)).convert(mode).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    one = decode_images(blobs, 28, 3, threads=1)
    assert one.shape == (len(blobs), 3, 28, 28) and np.array_equal(
        decode_images(blobs, 28, 3, threads=2), one
    )
    assert np.array_equal(decode_images(blobs[:3], 28, 3), one[:3])
