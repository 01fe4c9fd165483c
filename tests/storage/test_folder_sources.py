"""Folders as people keep them: nested category folders, sidecar and system files beside the images, images
recognised by content whatever their names, include / exclude globs, and labels from any folder level."""

from __future__ import annotations

import hashlib
import io
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from storage.folder_rules import folder_labels, listing_skip, skip_counts
from storage.images import IMAGE_CHECKS
from storage.ingest import Limits, ingest
from storage.protocols import Protocol
from storage.sources import SourceError, list_folder
from tests.catalogue_factory import class_image, write_folder

STRICT = Limits(max_reject_fraction=0.0)  # any reject fails: the sidecars must be skipped, not rejected
TINY = Protocol(query_per_label=1, validation_size=1)


def _jpeg(label: int, i: int) -> bytes:
    buf = io.BytesIO()
    class_image(label, i).save(buf, format="JPEG")
    return buf.getvalue()


def nested_folder(root: Path) -> Path:
    """animals/{cats,dogs}/..., plants/ferns/...: 4 images per leaf folder (one a JPEG without extension, one
    under a deeper 'best' folder), and beside them what photo tools, cameras and operating systems leave."""
    leaves = {"animals/cats": 0, "animals/dogs": 1, "plants/ferns": 2}
    for leaf, label in leaves.items():
        d = root / leaf
        (d / "best").mkdir(parents=True)
        for i in range(2):
            class_image(label, i).save(d / f"{i}.png")
            (d / f"{i}.png.json").write_text('{"caption": "something"}')  # sidecars
            (d / f"{i}.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
        (d / "IMG_0002").write_bytes(_jpeg(label, 2))  # an image without an extension
        class_image(label, 3).save(d / "best" / "3.webp")
        (d / "notes.txt").write_text("BM: this text happens to start like a bitmap")
        (d / "voice.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32))
        (d / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
        (d / "desktop.ini").write_text("[.ShellClassInfo]\n")
        (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (d / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS resource fork: hidden
    (root / ".thumbnails").mkdir()
    class_image(0, 9).save(root / ".thumbnails" / "t.png")
    (root / "__MACOSX" / "animals").mkdir(parents=True)
    (root / "__MACOSX" / "animals" / "x.png").write_bytes(b"junk")
    (root / "README.md").write_text("# my photos\n")  # beside the class folders, not an image: skipped
    return root


def test_nested_folder_with_sidecars_ingests_without_a_reject(tmp_path):
    src = nested_folder(tmp_path / "photos")
    r = ingest("photos", list_folder(str(src)), TINY, STRICT)
    assert r.rejected == [] and r.table.num_rows == 12
    assert r.info.label_names == ["animals", "plants"]  # the top folder
    assert "animals/cats/IMG_0002" in r.table["image_id"].to_pylist()  # recognised by content
    assert skip_counts(r.skipped) == {"not-an-image": 6 * 3 + 1, "system-file": 3 * 3 + 1, "hidden": 3 + 1}
    reasons = {s.item: s.reason for s in r.skipped}
    assert reasons["README.md"] == reasons["plants/ferns/notes.txt"] == reasons["animals/cats/voice.wav"]
    assert reasons["animals/dogs/.DS_Store"] == reasons["__MACOSX/animals/x.png"] == "system-file"
    assert reasons[".thumbnails/t.png"] == reasons["animals/cats/._0.png"] == "hidden"
    assert r.listed == 12 + len(r.skipped)


@pytest.mark.parametrize(
    ("mode", "labels_of_best"),
    [
        ("top", ["animals"]),
        ("deepest", ["animals/cats/best"]),
        ("every_level", ["animals", "animals/cats", "animals/cats/best"]),
    ],
)
def test_labels_from_any_folder_level(tmp_path, mode, labels_of_best):
    src = nested_folder(tmp_path / "photos")
    r = ingest("photos", list_folder(str(src), labels=mode), TINY, STRICT)
    names = r.info.label_names
    rows = {row["image_id"]: [names[i] for i in row["labels"]] for row in r.table.to_pylist()}
    assert rows["animals/cats/best/3.webp"] == labels_of_best
    if mode == "every_level":  # several labels per image: the catalogue's multi-label lists
        assert rows["plants/ferns/0.png"] == ["plants", "plants/ferns"]
        assert len(names) == 2 + 3 + 3  # top folders, leaf folders, the three 'best' folders


def test_include_and_exclude_globs(tmp_path):
    src = nested_folder(tmp_path / "photos")
    only = list_folder(str(src), include=["*.PNG", "animals/*/IMG_*"], exclude=["animals/dogs/*"])
    r = ingest("photos", only, TINY, STRICT)
    assert sorted(r.table["image_id"].to_pylist()) == [
        "animals/cats/0.png",
        "animals/cats/1.png",
        "animals/cats/IMG_0002",
        "plants/ferns/0.png",
        "plants/ferns/1.png",
    ]
    assert skip_counts(r.skipped)["excluded"] > 0


def test_a_file_named_like_an_image_that_is_none_is_rejected_not_skipped(tmp_path):
    src = nested_folder(tmp_path / "photos")
    (src / "animals" / "cats" / "fake.jpg").write_text("<html>404 not found</html>")
    r = ingest("photos", list_folder(str(src)), TINY, Limits(max_reject_fraction=1.0))
    assert [(x.item, x.reason) for x in r.rejected] == [("animals/cats/fake.jpg", "not-an-image")]


def test_a_folder_of_no_images_fails_at_once_or_on_rejects(tmp_path):
    (tmp_path / "only-junk").mkdir()
    (tmp_path / "only-junk" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"holds no files besides 1 skipped \({'system-file': 1}\)"):
        list_folder(str(tmp_path / "only-junk"))


def test_folder_rules():
    assert listing_skip(["a", "Thumbs.db"]) == listing_skip(["a", "DESKTOP.INI"]) == "system-file"
    assert listing_skip([".git", "objects", "x.png"]) == "hidden"
    assert listing_skip(["a", "x.png"], include=["*.jpg"]) == "excluded"
    assert listing_skip(["a", "x.png"], exclude=["a/*"]) == "excluded"
    assert listing_skip(["a", "x.JPG"], include=["*.jpg"]) is None
    assert folder_labels(["a", "b", "c"], "top") == ["a"]
    assert folder_labels(["a"], "deepest") == folder_labels(["a"], "every_level") == ["a"]
    with pytest.raises(ValueError, match="not one of"):
        folder_labels(["a"], "bottom")
    with pytest.raises(SourceError, match="not one of"):
        list_folder("/tmp", labels="bottom")


ICONS = Path("/usr/share/icons/Adwaita")


@pytest.mark.skipif(not (ICONS / "48x48").is_dir(), reason="no Adwaita icon theme on this machine")
def test_real_icon_theme_with_sidecars(tmp_path):
    """A few hundred real RGBA PNGs in category folders, with SVGs, X cursors and theme files beside them,
    ingest on the default protocol and limits; the one-icon 'apps' category stays in the database only."""
    root = tmp_path / "icons"
    for category in sorted(p for p in (ICONS / "48x48").iterdir() if p.is_dir()):
        (root / category.name).mkdir(parents=True)
        for png in sorted(category.glob("*.png"))[:30]:
            shutil.copy(png, root / category.name / png.name)
        for svg in sorted((ICONS / "scalable" / category.name).glob("*.svg"))[:2]:
            shutil.copy(svg, root / category.name / svg.name)
    (root / "cursors").mkdir()
    for cursor in sorted((ICONS / "cursors").iterdir())[:5]:
        shutil.copy(cursor, root / "cursors" / cursor.name)
    for theme_file in ("index.theme", "icon-theme.cache"):
        shutil.copy(ICONS / theme_file, root / theme_file)
    # The theme holds byte-identical icons under several names (about 9 % of these): left out as duplicates,
    # which do not count towards the default limit of 5 % rejects.
    r = ingest("icons", list_folder(str(root)), Protocol(), Limits())
    assert len(r.rejected) / r.table.num_rows > Limits().max_reject_fraction
    assert {x.reason for x in r.rejected} <= {"duplicate-image"}
    non_images = sum(1 for p in root.rglob("*") if p.is_file() and p.suffix != ".png")
    assert skip_counts(r.skipped) == {"not-an-image": non_images}
    assert "cursors" not in r.info.label_names and r.table.num_rows > 200
    splits = {s["label"]: s for s in r.info.label_splits}
    assert splits["apps"] == {
        **splits["apps"],
        "query": 0,
        "train": 0,
        "note": "database only (fewer than 2 images)",
    }
    assert all(
        s["query"] >= 1 and s["train"] + s["validation"] >= 1 for k, s in splits.items() if k != "apps"
    )


def test_images_that_passed_older_checks_are_inspected_again(tmp_path):
    """A catalogue written before the damaged-image checks may hold a half-written PNG (decoded then as
    black). Re-ingest under the current checks rejects it; under the same checks it is not decoded again."""
    src = write_folder(tmp_path / "src", per_class=8)
    proto = Protocol(train_per_label=4, query_per_label=2, validation_size=2)
    first = ingest("pets", list_folder(str(src)), proto)
    assert first.info.image_checks == IMAGE_CHECKS
    cut = src / "cat" / "005.png"
    cut.write_bytes(cut.read_bytes()[:-12])  # no IEND any more
    hit = pc.equal(first.table["image_id"], "cat/005.png")
    sha = pa.scalar(hashlib.sha256(cut.read_bytes()).digest(), pa.binary(32))
    old_table = first.table.set_column(
        first.table.schema.get_field_index("sha256"), "sha256", pc.if_else(hit, sha, first.table["sha256"])
    )  # as if the cut file had been accepted
    same = ingest("pets", list_folder(str(src)), proto, Limits(), previous=(old_table, first.info))
    assert same.rejected == [] and same.unchanged  # trusted: these checks passed it
    older = ingest(
        "pets",
        list_folder(str(src)),
        proto,
        Limits(),
        previous=(old_table, replace(first.info, image_checks=None)),
    )
    assert [(x.item, x.reason) for x in older.rejected] == [("cat/005.png", "truncated")]
    assert not older.unchanged and older.info.image_checks == IMAGE_CHECKS


def test_a_folder_of_unsupported_files_says_what_it_skipped(tmp_path):
    d = tmp_path / "phone" / "holiday"
    d.mkdir(parents=True)
    for i in range(3):
        (d / f"IMG_{i}.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    with pytest.raises(
        ValueError, match=r"no image among 3 files \(0 rejected, 3 skipped: \{'not-an-image': 3\}\)"
    ):
        ingest("phone", list_folder(str(tmp_path / "phone")), TINY)


def test_exact_duplicates_are_left_out_without_failing_the_ingest(tmp_path):
    """A third of the images copied under other names: reported as duplicates and the ingest goes on; a third
    damaged instead: over the default limit, it fails naming the reason."""
    src = write_folder(tmp_path / "dups", per_class=6)
    for i, png in enumerate(sorted(src.rglob("*.png"))[::3]):
        shutil.copy(png, png.parent / f"copy-{i}.png")
    r = ingest("dups", list_folder(str(src)), TINY, Limits())
    assert {x.reason for x in r.rejected} == {"duplicate-image"} and len(r.rejected) == 6
    assert r.table.num_rows == 18
    bad = write_folder(tmp_path / "bad", per_class=6)
    for i, png in enumerate(sorted(bad.rglob("*.png"))[::3]):
        (png.parent / f"cut-{i}.png").write_bytes(png.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"6 of 24 items rejected .* worst reasons: (truncated|corrupt)"):
        ingest("bad", list_folder(str(bad)), TINY, Limits())
