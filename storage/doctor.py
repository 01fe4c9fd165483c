"""Examine a storage root for what interrupted or superseded runs leave behind, and remove it on request.

What it reports (``Finding.problem``):

- ``stale-temp``: a temporary file of an atomic write untouched for ``STALE_TEMP_SECONDS`` (a killed writer's);
- ``orphan-part``: a codes part that ``parts.json`` does not list (a killed encode or compaction), or a catalogue
  shard file that ``catalogue.json`` does not list (a killed or refused ingest);
- ``unpublished-index``: an index file (or a whole index folder) that ``CURRENT`` does not serve: the spare slot
  of the published model, other kinds or models, or a catalogue with nothing published;
- ``stale-resume-state``: a model's ``last.pt`` although its card exists (training finished);
- ``orphan-weights``: ``model.safetensors`` with neither a card nor a resume state.

Temporary files younger than the threshold belong to live writers and are left alone. ``fix`` removes what
``examine`` found and, where it removed the slot a kind's latest-build manifest described, points that manifest
back at the published build.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass

from storage.catalogue import MANIFEST, catalogue_dir
from storage.codes import PARTS_FILE
from storage.fs import STALE_TEMP_SECONDS, TEMP_NAME, StorageRoot
from storage.index import IndexManifest, current, published_manifest
from storage.index.tombstones import TOMBSTONES

PROBLEMS = ("stale-temp", "orphan-part", "unpublished-index", "stale-resume-state", "orphan-weights")


@dataclass(frozen=True)
class Finding:
    problem: str  # one of PROBLEMS
    path: str  # under the root, "/"-separated
    bytes: int
    detail: str


def _size(root: StorageRoot, *parts: str) -> int:
    return int(root.fs.du(root.path(*parts), total=True)) if root.exists(*parts) else 0


def _finding(root: StorageRoot, problem: str, parts: tuple[str, ...], detail: str) -> Finding:
    return Finding(problem, "/".join(parts), _size(root, *parts), detail)


def _temps(root: StorageRoot, older_than_s: float) -> list[Finding]:
    found = []
    for top in ("catalogues", "models", "codes", "indexes", "features"):
        for path in root.stale_temps(top, older_than_s=older_than_s):
            rel = posixpath.relpath(path.replace("\\", "/"), root.root.replace("\\", "/"))
            found.append(_finding(root, "stale-temp", tuple(rel.split("/")), "left by an interrupted write"))
    return found


def _unlisted(
    root: StorageRoot, folder: tuple[str, ...], manifest: str, owned: str, cutoff: float
) -> list[Finding]:
    """Files of ``folder`` named ``owned*`` that its ``manifest`` does not list, older than ``cutoff``."""
    names = root.names(*folder)
    if manifest not in names:
        return []  # a legacy layout, or a writer that never committed: nothing to compare with
    listed = set(json.loads(root.read_text(*folder, manifest))["parts"])
    found = []
    for name in names:
        parts = (*folder, name)
        unlisted = name.startswith(owned) and name.endswith(".parquet") and name not in listed
        if unlisted and root.fs.modified(root.path(*parts)).timestamp() < cutoff:
            found.append(_finding(root, "orphan-part", parts, f"not listed in {manifest}"))
    return found


def _parts(root: StorageRoot, older_than_s: float) -> list[Finding]:
    """Codes parts (``part-*``) and catalogue shard files that no manifest lists (a killed write)."""
    cutoff = time.time() - older_than_s
    found = []
    for catalogue in root.names("catalogues"):
        found += _unlisted(root, catalogue_dir(catalogue), MANIFEST, "shard-", cutoff)
    for catalogue in root.names("codes"):
        for model_id in root.names("codes", catalogue):
            found += _unlisted(root, ("codes", catalogue, model_id), PARTS_FILE, "part-", cutoff)
    return found


def _served_files(root: StorageRoot, catalogue: str) -> tuple[str, set[str]]:
    """(published model id, the names in its index folder that the published build needs); ('', {}) if none."""
    if not root.exists("indexes", catalogue, "CURRENT"):
        return "", set()
    pointer = current(root, catalogue)
    manifest = published_manifest(root, catalogue, pointer)
    if manifest is None:
        return pointer["model_id"], set()
    return pointer["model_id"], manifest.files | {f"{manifest.kind}.manifest.json", "manifest.json"}


def _indexes(root: StorageRoot) -> list[Finding]:
    found = []
    for catalogue in root.names("indexes"):
        model_id, keep = _served_files(root, catalogue)
        for name in root.names("indexes", catalogue):
            parts = ("indexes", catalogue, name)
            if name in ("CURRENT", TOMBSTONES) or TEMP_NAME.match(name):
                continue
            if name != model_id:
                found.append(_finding(root, "unpublished-index", parts, "not the published model's index"))
                continue
            if not keep:  # CURRENT names a build whose manifest is gone: leave it for the checks to report
                continue
            for file in root.names(*parts):
                if file not in keep and not TEMP_NAME.match(file):
                    found.append(
                        _finding(root, "unpublished-index", (*parts, file), "a build CURRENT does not serve")
                    )
    return found


def _models(root: StorageRoot) -> list[Finding]:
    found = []
    for model_id in root.names("models"):
        names = set(root.names("models", model_id))
        if "model.json" in names and "last.pt" in names:
            found.append(
                _finding(root, "stale-resume-state", ("models", model_id, "last.pt"), "the model is complete")
            )
        if "model.safetensors" in names and not names & {"model.json", "last.pt"}:
            found.append(
                _finding(
                    root,
                    "orphan-weights",
                    ("models", model_id, "model.safetensors"),
                    "no card, no resume state",
                )
            )
    return found


def examine(root: StorageRoot, older_than_s: float = STALE_TEMP_SECONDS) -> list[Finding]:
    """Everything under ``root`` that no reader needs (see the module docstring), in a stable order."""
    findings = _temps(root, older_than_s) + _parts(root, older_than_s) + _indexes(root) + _models(root)
    return sorted(findings, key=lambda f: (PROBLEMS.index(f.problem), f.path))


def fix(root: StorageRoot, findings: list[Finding]) -> list[Finding]:
    """Remove what ``findings`` name; repoint a kind's latest-build manifest at the published build where its
    slot was removed. Returns the findings removed."""
    removed = []
    for f in findings:
        parts = tuple(f.path.split("/"))
        if root.exists(*parts):
            root.fs.rm(root.path(*parts), recursive=True)
            removed.append(f)
    for catalogue in root.names("indexes"):
        if not root.exists("indexes", catalogue, "CURRENT"):
            continue
        manifest = published_manifest(root, catalogue, current(root, catalogue))
        if manifest is None:
            continue
        folder = ("indexes", catalogue, manifest.model_id)
        for name in (f"{manifest.kind}.manifest.json", "manifest.json"):
            described = (
                IndexManifest.from_json(root.read_text(*folder, name)).files
                if root.exists(*folder, name)
                else {""}
            )
            if not all(root.exists(*folder, f) for f in described):
                root.write_text(root.read_text(*folder, f"{manifest.last_file}.json"), *folder, name)
    return removed
