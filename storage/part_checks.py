"""What a reader checks the parts of a codes or catalogue folder against: the sha256 and rows its manifest
(``parts.json``, ``catalogue.json``) recorded when each part was committed (``CHECKS``); a part that differs is
a ``CorruptCodesError`` naming it."""

from __future__ import annotations

import pyarrow.parquet as pq

from storage.fs import StorageRoot

CHECKS = "part_checks"  # parts.json: {part: {"sha256": ..., "rows": ...}}
_VERIFIED: set[tuple] = set()  # (folder, its files' names, sizes and stamps) whose parts matched


class CorruptCodesError(ValueError):
    """A live part that does not match what ``parts.json`` recorded when it was committed."""


def part_check(root: StorageRoot, *parts: str) -> dict:
    """The record of one part file: its sha256 and row count."""
    with root.fs.open(root.path(*parts), "rb") as f:
        rows = pq.ParquetFile(f).metadata.num_rows
    return {"sha256": root.sha256(*parts), "rows": rows}


def _listing(root: StorageRoot, *folder: str) -> tuple:
    """Names, sizes and modification stamps of the files in a folder (one listing call)."""
    entries = root.fs.ls(root.path(*folder), detail=True)
    stamp = ("mtime", "LastModified", "ETag")
    return tuple(
        sorted((e["name"], e.get("size"), str(next((e[k] for k in stamp if e.get(k)), ""))) for e in entries)
    )


def verify_parts(
    root: StorageRoot, folder: tuple[str, ...], manifest: dict, rebuild: str, listed_in: str = "parts.json"
) -> None:
    """Check every live part of ``folder`` against the sha256 ``manifest`` recorded (again only when a file of
    the folder changed); ``CorruptCodesError`` names the first part that differs and ``rebuild``, the command
    that writes it again. Parts committed before checks were recorded pass."""
    checks = manifest.get(CHECKS) or {}
    if not checks:
        return
    key = (root.uri, *folder, _listing(root, *folder))
    if key in _VERIFIED:
        return
    for name in manifest["parts"]:
        if name not in checks:
            continue
        found = root.sha256(*folder, name) if root.exists(*folder, name) else "missing"
        if found != checks[name]["sha256"]:
            what = "missing" if found == "missing" else f"sha256 differs from {listed_in}"
            raise CorruptCodesError(
                f"{root.url(*folder, name)}: {what} (damaged or partly copied); {rebuild}"
            )
    _VERIFIED.add(key)
