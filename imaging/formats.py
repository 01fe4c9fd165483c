"""Which bytes are an image: the formats ingest accepts, recognised by their content (magic bytes, as Pillow's
own format plugins test them), whatever the file is called."""

from __future__ import annotations

import io

from PIL import Image

# Formats Pillow may decode at ingest; everything else is "not an image" (smaller attack surface).
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# Formats whose magic is two letters a text file may start with ("BM...", "P1..."): their header must parse too.
_WEAK_MAGIC = ("BMP", "PPM")
# Bytes of a file's head that :func:`sniff_format` needs (headers of the weak-magic formats fit easily).
HEAD_BYTES = 4096

Image.init()
# File name endings of the accepted formats (lower case, with the dot): ".png", ".jpg", ".tif", ...
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS)


def sniff_format(head: bytes) -> str | None:
    """The format (one of :data:`FORMATS`) whose signature ``head`` (the first bytes of a file, ideally
    :data:`HEAD_BYTES`) carries, or None. Reads no pixel; a damaged image with a good signature is still
    recognised (its decode then fails)."""
    for fmt in FORMATS:
        if not Image.OPEN[fmt][1](head[:16]):
            continue
        if fmt not in _WEAK_MAGIC:
            return fmt
        try:
            with Image.open(io.BytesIO(head), formats=[fmt]):
                return fmt
        except Exception:  # a text file that happens to begin with "BM" or "P3"
            continue
    return None


def has_image_extension(name: str) -> bool:
    """Whether ``name`` ends like a file of an accepted format (case-insensitive)."""
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS
