"""Fingerprints of a watched source URI (local folder or ``s3://`` prefix): one catalogue per child folder."""

from __future__ import annotations

import hashlib
import posixpath

import fsspec


def _stamp(info: dict) -> str:
    """What changes when a file changes: size plus the store's version (ETag) or modification time."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size', '')}:{version}"


def source_fingerprints(uri: str) -> dict[str, tuple[str, str]]:
    """``{catalogue name: (child URI, sha256 of its file listing)}`` for each child folder of ``uri``.
    Hidden names (``.``/``_`` prefix, e.g. temporary uploads) are ignored; empty folders are skipped."""
    fs, root = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache()  # object-store listings are cached per filesystem instance; a watcher needs them fresh
    root = root.rstrip("/")
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    out: dict[str, tuple[str, str]] = {}
    if not fs.exists(root):
        return out
    for entry in fs.ls(root, detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if entry["type"] != "directory" or name.startswith((".", "_")):
            continue
        files = fs.find(entry["name"], detail=True)
        listing = sorted(
            (posixpath.relpath(path, entry["name"]), _stamp(info))
            for path, info in files.items()
            if not posixpath.basename(path).startswith((".", "_"))
        )
        if not listing:
            continue
        digest = hashlib.sha256(repr(listing).encode()).hexdigest()[:16]
        child = entry["name"] if protocol in ("file", "local") else f"{protocol}://{entry['name']}"
        out[name] = (child, digest)
    return out
