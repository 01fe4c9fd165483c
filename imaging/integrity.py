"""Is an encoded image whole? Structural checks that a decoder alone does not make.

Pillow decodes a PNG without its end chunk, a GIF without its trailer or a BMP short of a few bytes without
complaint, filling what is missing with black. :func:`container_problem` looks at the container itself (the
length a RIFF or BMP header declares, the JPEG end-of-image marker, the GIF trailer, the TIFF directory
offset, the PNG end chunk); PNG chunk checksums are checked by Pillow's ``verify()`` (see
``storage.images.inspect_image``), and every decoder runs with ``ImageFile.LOAD_TRUNCATED_IMAGES`` off.
"""

from __future__ import annotations

import struct

_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: markers without a length


def _jpeg(blob: bytes) -> tuple[str, str] | None:
    """The end-of-image marker must follow the first start-of-scan. Segments before the scan are skipped by
    their lengths (so the EOI of an EXIF thumbnail does not count); inside entropy-coded data 0xFF is always
    stuffed, so any FF D9 after the scan is a real marker."""
    pos = 2
    while True:
        while pos < len(blob) and blob[pos] == 0xFF and pos + 1 < len(blob) and blob[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(blob):
            return "truncated", f"JPEG ends at byte {len(blob)} before its first scan"
        if blob[pos] != 0xFF:
            return "corrupt", f"JPEG: no marker at byte {pos}"
        marker = blob[pos + 1]
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            return "corrupt", f"JPEG: end-of-image marker at byte {pos} before any scan"
        if marker == 0xDA:
            break
        pos += 2 + int.from_bytes(blob[pos + 2 : pos + 4], "big")
    if blob.find(b"\xff\xd9", pos + 2) < 0:
        return "truncated", f"JPEG without its end-of-image marker (FF D9) after the scan at byte {pos}"
    return None


def _png(blob: bytes) -> tuple[str, str] | None:
    """The end chunk, whole (Pillow's verify() stops at its name, before its checksum)."""
    if blob.rfind(b"IEND\xaeB`\x82") < 0:
        return "truncated", "PNG without its end chunk (IEND)"
    return None


def _gif(blob: bytes) -> tuple[str, str] | None:
    if not blob.rstrip(b"\x00").endswith(b";"):
        return "truncated", "GIF without its trailer byte (0x3B)"
    return None


def _webp(blob: bytes) -> tuple[str, str] | None:
    declared = 8 + int.from_bytes(blob[4:8], "little")
    if len(blob) < declared:
        return "truncated", f"WebP: RIFF header declares {declared} bytes, the file has {len(blob)}"
    return None


def _bmp(blob: bytes) -> tuple[str, str] | None:
    declared = int.from_bytes(blob[2:6], "little")  # 0 in some writers: nothing to check then
    if len(blob) < declared:
        return "truncated", f"BMP: header declares {declared} bytes, the file has {len(blob)}"
    return None


def _tiff(blob: bytes) -> tuple[str, str] | None:
    order = "<" if blob[:2] == b"II" else ">"
    version = struct.unpack(order + "H", blob[2:4])[0]
    big = version == 43  # BigTIFF: 8-byte offsets and counts, 20-byte entries
    head, count, entry = (16, "Q", 20) if big else (8, "I", 12)
    if len(blob) < head:
        return "truncated", f"TIFF: {len(blob)} bytes, shorter than its header"
    offset = struct.unpack(order + count, blob[head - (8 if big else 4) : head])[0]
    size = 8 if big else 2
    if offset + size > len(blob):
        return "truncated", f"TIFF: first image directory at byte {offset}, the file has {len(blob)}"
    entries = struct.unpack(order + ("Q" if big else "H"), blob[offset : offset + size])[0]
    end = offset + size + entries * entry + (8 if big else 4)
    if end > len(blob):
        return "truncated", f"TIFF: first image directory ends at byte {end}, the file has {len(blob)}"
    return None


_CHECKS = {"PNG": _png, "JPEG": _jpeg, "GIF": _gif, "WEBP": _webp, "BMP": _bmp, "TIFF": _tiff}


def container_problem(blob: bytes, fmt: str) -> tuple[str, str] | None:
    """``(reason, detail)`` if ``blob``, an image of format ``fmt`` (from ``imaging.formats.sniff_format``),
    is visibly cut short (``truncated``) or malformed (``corrupt``); None if its container looks whole."""
    check = _CHECKS.get(fmt)
    return check(blob) if check else None
