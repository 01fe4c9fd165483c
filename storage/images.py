"""Encoded image bytes of catalogue rows, and the checks an image passes before it enters a catalogue."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import fsspec
import pyarrow as pa
from PIL import Image, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError

from imaging.decode import model_channels, to_model_array
from imaging.formats import FORMATS, HEAD_BYTES, sniff_format
from imaging.integrity import container_problem

__all__ = [
    "FORMATS",
    "IMAGE_CHECKS",
    "ImageFacts",
    "RejectedImage",
    "encoded_images",
    "inspect_image",
    "read_files",
]
# Version of inspect_image's checks, stored with each catalogue: images that passed an older version are
# inspected again on re-ingest (2: content sniffing, container and checksum checks of damaged images).
IMAGE_CHECKS = 2


class RejectedImage(ValueError):
    """An image that cannot enter the catalogue; ``reason`` is a short code for the ``rejected`` table."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    channels: int  # what the model needs for it: 1 (grey modes) or 3


def _damage(err: Exception) -> str:
    return "truncated" if "truncated" in str(err).lower() else "corrupt"


def inspect_image(blob: bytes, max_pixels: int) -> ImageFacts:
    """Fully decode ``blob`` and run it through the model conversion; raise :class:`RejectedImage` if it is
    empty, not an image (by its content, see ``imaging.formats``), too many pixels (decompression bomb),
    cut short or damaged (``imaging.integrity``, Pillow's ``verify()`` with the PNG chunk checksums, then a
    decode of every frame with truncated images refused), or of an unusable mode. Width and height are after
    EXIF orientation."""
    if not blob:
        raise RejectedImage("empty-file", "zero bytes")
    fmt = sniff_format(blob[:HEAD_BYTES])
    if fmt is None:
        raise RejectedImage("not-an-image", f"not a {'/'.join(FORMATS)} image")
    problem = container_problem(blob, fmt)
    if problem:
        raise RejectedImage(*problem)
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # never decode a cut-short stream into blank pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode_checked(blob, fmt, max_pixels)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open(blob: bytes, fmt: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(blob), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RejectedImage("decompression-bomb", str(err)) from err
    except UnidentifiedImageError as err:  # the signature said fmt, the header does not parse
        raise RejectedImage("corrupt", f"{fmt} signature but no readable {fmt} header") from err
    except Exception as err:  # broken headers raise anything from SyntaxError to struct.error
        raise RejectedImage(_damage(err), f"{type(err).__name__}: {err}") from err


def _decode_checked(blob: bytes, fmt: str, max_pixels: int) -> ImageFacts:
    with _open(blob, fmt) as img:
        if img.width * img.height > max_pixels:
            raise RejectedImage(
                "decompression-bomb", f"{img.width}x{img.height} pixels > max_pixels {max_pixels}"
            )
        try:
            img.verify()  # PNG: every chunk's CRC and the end chunk
        except Exception as err:
            raise RejectedImage(_damage(err), f"{type(err).__name__}: {err}") from err
    with _open(blob, fmt) as img:
        try:
            for frame in ImageSequence.Iterator(img):  # every frame of a GIF / TIFF / WebP / APNG
                frame.load()
            img.seek(0)
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise RejectedImage("decompression-bomb", str(err)) from err
        except Exception as err:
            raise RejectedImage(_damage(err), f"{type(err).__name__}: {err}") from err
        try:
            upright = ImageOps.exif_transpose(img)
            channels = model_channels(upright.mode)
            to_model_array(upright, 8, channels)
        except Exception as err:
            raise RejectedImage("unsupported-mode", f"mode {img.mode}: {type(err).__name__}: {err}") from err
        return ImageFacts(upright.width, upright.height, channels)


def encoded_images(rows: pa.Table | pa.RecordBatch) -> list[bytes]:
    """Encoded bytes of each row: the ``image`` column where set, else the file at ``uri`` (local or any
    fsspec URI, fetched concurrently per filesystem). With a ``sha256`` column, fetched files are checked
    against it, so a file changed since ingest raises instead of silently training on other pixels."""
    names = rows.schema.names
    out = rows.column("image").to_pylist() if "image" in names else [None] * rows.num_rows
    todo = [i for i, blob in enumerate(out) if blob is None]
    if not todo:
        return out
    if "uri" not in names:
        raise ValueError("rows without image bytes need the 'uri' column")
    uris = rows.column("uri").to_pylist()
    shas = rows.column("sha256").to_pylist() if "sha256" in names else None
    groups: dict[int, tuple[fsspec.AbstractFileSystem, list[tuple[int, str]]]] = {}
    for i in todo:
        if uris[i] is None:
            raise ValueError(f"catalogue row {i} has neither image bytes nor a uri")
        fs, path = fsspec.core.url_to_fs(uris[i])
        groups.setdefault(id(fs), (fs, []))[1].append((i, path))
    for fs, pairs in groups.values():
        for (i, _), blob in zip(pairs, read_files(fs, [p for _, p in pairs]), strict=True):
            if isinstance(blob, Exception):
                raise OSError(f"cannot read catalogue image {uris[i]}: {blob}") from blob
            if shas is not None and hashlib.sha256(blob).digest() != shas[i]:
                raise ValueError(
                    f"{uris[i]} changed since it was ingested (sha256 differs); re-ingest the catalogue"
                )
            out[i] = blob
    return out


def read_files(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[bytes | Exception]:
    """Whole files, in order, concurrently on async filesystems (S3); a failed read comes back as its
    exception. No glob expansion, so names with ``[`` or ``*`` are read as they are."""
    return fs.cat_ranges(paths, None, None, on_error="return") if paths else []
