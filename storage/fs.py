"""One storage root URI (local path or ``s3://bucket/prefix``) accessed through fsspec, with atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

# What ``atomic_open`` writes before the rename: ``.<final name>.<random>.tmp`` beside the final file.
TEMP_NAME = re.compile(r"^\..+\.tmp$")
# A temporary file untouched for this long belongs to no live writer (a killed or crashed run left it).
STALE_TEMP_SECONDS = 15 * 60


class StorageRoot:
    """Paths under a root URI. Every write lands under a temporary name and is renamed into place."""

    def __init__(self, uri: str | os.PathLike):
        uri = os.fspath(uri)
        self.fs, root = fsspec.core.url_to_fs(uri)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(root) if self.is_local else root.rstrip("/")
        self.uri = (
            self.root
            if self.is_local
            else f"{self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol}://{self.root}"
        )

    def path(self, *parts: str) -> str:
        """Path of ``parts`` under the root, as understood by ``self.fs``."""
        return posixpath.join(self.root, *parts) if not self.is_local else os.path.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """Full URI of ``parts`` (for metadata and users)."""
        return self.path(*parts) if self.is_local else f"{self.uri}/{'/'.join(parts)}"

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as f:
            return f.read()

    def names(self, *parts: str) -> list[str]:
        """Names directly below ``parts``, sorted (empty if it does not exist)."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(
                p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(*parts), detail=False)
            )
        return []

    def sha256(self, *parts: str) -> str:
        """sha256 hex digest of a file, streamed."""
        h = hashlib.sha256()
        with self.fs.open(self.path(*parts), "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        return h.hexdigest()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    @contextlib.contextmanager
    def atomic_open(self, *parts: str) -> Iterator[IO[bytes]]:
        """Open ``parts`` for binary writing; the file appears whole under its name only if the block
        completes (local: temp file + ``os.replace``; object stores: temp key + server-side move)."""
        final = self.path(*parts)
        if self.is_local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=os.path.dirname(final)
            )
            try:
                with os.fdopen(fd, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        else:
            tmp = f"{posixpath.dirname(final)}/.{posixpath.basename(final)}.{uuid.uuid4().hex}.tmp"
            try:
                with self.fs.open(tmp, "wb") as f:
                    yield f
                self.fs.mv(tmp, final)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(tmp)
                raise

    def stale_temps(self, *parts: str, older_than_s: float = STALE_TEMP_SECONDS) -> list[str]:
        """Temporary files of ``atomic_open`` below ``parts`` last modified more than ``older_than_s`` ago."""
        top = self.path(*parts)
        if not self.fs.exists(top):
            return []
        cutoff = time.time() - older_than_s
        return [
            path
            for path in sorted(self.fs.find(top))
            if TEMP_NAME.match(posixpath.basename(path)) and self.fs.modified(path).timestamp() < cutoff
        ]

    def remove_stale_temps(self, *parts: str, older_than_s: float = STALE_TEMP_SECONDS) -> list[str]:
        """Remove what ``stale_temps`` lists (files a killed run left; never read as data); returns them."""
        stale = self.stale_temps(*parts, older_than_s=older_than_s)
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)
        return stale

    def write_bytes(self, data: bytes, *parts: str) -> str:
        with self.atomic_open(*parts) as f:
            f.write(data)
        return self.url(*parts)

    def write_text(self, text: str, *parts: str) -> str:
        return self.write_bytes(text.encode(), *parts)

    @contextlib.contextmanager
    def local_copy_for_write(self, *parts: str) -> Iterator[str]:
        """A local temp path to write with libraries that need a filename (faiss); uploaded atomically."""
        with tempfile.TemporaryDirectory(prefix="vitrieve-") as tmpdir:
            local = os.path.join(tmpdir, os.path.basename(parts[-1]))
            yield local
            with open(local, "rb") as src, self.atomic_open(*parts) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
