"""Folders as people keep them: which files of an image folder are skipped, and the labels its folders give.

A skipped file is not a catalogue item and never counts as a reject: it is reported apart, with its reason:

* ``hidden``: a file or folder whose name starts with ``.`` (``.git/``, ``._photo.jpg``);
* ``system-file``: what operating systems and NAS boxes leave in folders (Thumbs.db, .DS_Store, desktop.ini,
  ``__MACOSX/``, ``@eaDir/``, ...);
* ``excluded``: left out by the ``exclude`` globs, or matching none of the ``include`` globs;
* ``not-an-image``: content that is no image format ingest reads (sidecars such as .json / .txt / .xmp,
  sounds, documents), found at ingest from the file's first bytes (``imaging.formats.sniff_format``).
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

SKIP_REASONS = ("hidden", "system-file", "excluded", "not-an-image")
SYSTEM_FILES = frozenset(
    {"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", ".ds_store", "icon\r"}
)
SYSTEM_FOLDERS = frozenset(
    {"__macosx", "@eadir", "$recycle.bin", "system volume information", ".appledouble", ".trashes"}
)
# How folder names become labels: the top folder, the folder holding the file, or every level.
FOLDER_LABELS = ("top", "deepest", "every_level")


@dataclass(frozen=True)
class Skip:
    item: str
    reason: str


def _matches(rel: str, pattern: str) -> bool:
    """Case-insensitive glob on the path relative to the root; a pattern without ``/`` also matches the
    file name alone (``*.jpg``, ``*_mask.png``). ``*`` crosses folders (``cats/*`` is everything below cats)."""
    rel, pattern = rel.lower(), pattern.lower()
    return fnmatch.fnmatchcase(rel, pattern) or (
        "/" not in pattern and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    )


def listing_skip(
    parts: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> str | None:
    """The reason to skip the file at relative path ``parts`` (folders then name) without reading it, or None."""
    lower = [p.lower() for p in parts]
    if lower[-1] in SYSTEM_FILES or any(p in SYSTEM_FOLDERS for p in lower[:-1]):
        return "system-file"
    if any(p.startswith(".") for p in parts):
        return "hidden"
    rel = "/".join(parts)
    if any(_matches(rel, g) for g in exclude) or (include and not any(_matches(rel, g) for g in include)):
        return "excluded"
    return None


def folder_labels(folders: Sequence[str], mode: str = "top") -> list[str]:
    """Label names of a file below ``folders`` (relative to the root, or to its split folder).

    ``top``: the first folder. ``deepest``: the folder holding the file, named by its path below the root
    (``animals/cats``), so that two ``misc`` folders under different parents stay apart. ``every_level``:
    one label per level, each named by its path (``animals``, ``animals/cats``): images share the labels of
    the folders they share. With one level of folders the three agree."""
    if not folders:
        return []
    if mode == "top":
        return [folders[0]]
    if mode == "deepest":
        return ["/".join(folders)]
    if mode == "every_level":
        return ["/".join(folders[: i + 1]) for i in range(len(folders))]
    raise ValueError(f"folder labels {mode!r} is not one of {FOLDER_LABELS}")


def skip_counts(skipped: Sequence[Skip]) -> dict[str, int]:
    """Skipped files per reason, most frequent first."""
    return dict(Counter(s.reason for s in skipped).most_common())
