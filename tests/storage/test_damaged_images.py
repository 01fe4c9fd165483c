"""Every supported format and mode ingests whole, and is rejected (``truncated`` / ``corrupt``), never decoded
into blank pixels, when its byte stream is cut short anywhere or its checksums are wrong."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from imaging.formats import sniff_format
from storage.images import RejectedImage, inspect_image

MAX_PIXELS = 1 << 24
DAMAGED = {"truncated", "corrupt"}


def _image(mode: str, size: tuple[int, int] = (37, 29)) -> Image.Image:
    rng = np.random.default_rng(sum(map(ord, mode)))
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return rgb.convert(mode)


def _encode(fmt: str, mode: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    _image(mode).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# (format, mode, save options) of every format ingest reads, in the modes each can store.
CASES = [
    ("PNG", "L", {}),
    ("PNG", "RGB", {}),
    ("PNG", "RGBA", {}),
    ("PNG", "P", {}),
    ("PNG", "I;16", {}),
    ("JPEG", "L", {}),
    ("JPEG", "RGB", {}),
    ("JPEG", "RGB", {"progressive": True}),
    ("WEBP", "RGB", {}),
    ("WEBP", "RGBA", {"lossless": True}),
    ("GIF", "P", {}),
    ("GIF", "L", {}),
    ("TIFF", "L", {}),
    ("TIFF", "RGB", {}),
    ("TIFF", "RGBA", {"compression": "tiff_deflate"}),
    ("TIFF", "P", {}),
    ("TIFF", "I;16", {}),
    ("BMP", "RGB", {}),
    ("BMP", "P", {}),
    ("PPM", "RGB", {}),
]
IDS = [f"{fmt}-{mode}{'-' + '-'.join(map(str, kw.values())) if kw else ''}" for fmt, mode, kw in CASES]


def _cuts(n: int) -> list[int]:
    """Where a half-written file may stop: inside the header, the pixel data, and the last bytes."""
    return sorted({64, n // 4, n // 2, 3 * n // 4, n - 12, n - 4, n - 2, n - 1})


@pytest.mark.parametrize(("fmt", "mode", "kwargs"), CASES, ids=IDS)
def test_whole_images_ingest_and_every_cut_is_rejected(fmt, mode, kwargs):
    blob = _encode(fmt, mode, **kwargs)
    assert sniff_format(blob[:4096]) == fmt
    facts = inspect_image(blob, MAX_PIXELS)
    assert (facts.width, facts.height) == (37, 29)
    for cut in _cuts(len(blob)):
        with pytest.raises(RejectedImage) as err:
            inspect_image(blob[:cut], MAX_PIXELS)
        assert err.value.reason in DAMAGED, f"{fmt} {mode} cut at {cut}/{len(blob)}: {err.value}"


@pytest.mark.parametrize(
    ("fmt", "cut", "says"),
    [
        ("PNG", 12, "IEND"),  # the whole end chunk missing: Pillow alone decodes this
        ("PNG", 1, "IEND"),  # the end chunk's checksum cut
        ("JPEG", 2, "FF D9"),  # no end-of-image marker
        ("GIF", 1, "trailer"),  # no trailer byte: Pillow alone decodes this
        ("WEBP", 1, "RIFF"),
        ("BMP", 1, "BMP"),  # one byte of the last row missing: Pillow alone decodes this
    ],
)
def test_a_missing_end_marker_is_named(fmt, cut, says):
    blob = _encode(fmt, "RGB" if fmt != "GIF" else "P")
    with pytest.raises(RejectedImage) as err:
        inspect_image(blob[:-cut], MAX_PIXELS)
    assert err.value.reason == "truncated" and says in err.value.detail


def _png_chunks(blob: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of every chunk of a PNG."""
    out, pos = [], 8
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos : pos + 8])
        out.append((pos, kind))
        pos += 12 + length
    return out


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT", b"IEND"])
def test_png_with_a_bad_checksum_is_corrupt(chunk):
    blob = bytearray(_encode("PNG", "RGB"))
    pos = next(p for p, kind in _png_chunks(bytes(blob)) if kind == chunk)
    length = int.from_bytes(blob[pos : pos + 4], "big")
    blob[pos + 8 + length] ^= 0xFF  # first byte of the chunk's CRC
    with pytest.raises(RejectedImage) as err:
        inspect_image(bytes(blob), MAX_PIXELS)
    assert err.value.reason in DAMAGED


def test_png_with_a_flipped_pixel_byte_is_corrupt():
    """A flipped byte in the compressed pixels, the CRC left as it was: the checksum finds it."""
    blob = bytearray(_encode("PNG", "RGB"))
    pos = next(p for p, kind in _png_chunks(bytes(blob)) if kind == b"IDAT")
    blob[pos + 8 + 20] ^= 0x01
    with pytest.raises(RejectedImage, match="checksum|crc|CRC") as err:
        inspect_image(bytes(blob), MAX_PIXELS)
    assert err.value.reason == "corrupt"


def test_png_whose_checksums_are_fixed_up_still_needs_whole_pixel_data():
    """An IDAT cut short and re-checksummed, IEND appended: a structurally valid file whose zlib stream ends
    early. It must not decode as an image padded with black."""
    good = _encode("PNG", "RGB")
    pos = next(p for p, kind in _png_chunks(good) if kind == b"IDAT")
    length = int.from_bytes(good[pos : pos + 4], "big")
    data = good[pos + 8 : pos + 8 + length][: length // 2]
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    with pytest.raises(RejectedImage) as err:
        inspect_image(good[:pos] + idat + iend, MAX_PIXELS)
    assert err.value.reason in DAMAGED


def test_animated_gif_cut_in_its_last_frame_is_rejected():
    frames = [_image("RGB").rotate(a).convert("P") for a in (0, 90, 180)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    blob = buf.getvalue()
    inspect_image(blob, MAX_PIXELS)
    for cut in (len(blob) - 40, len(blob) - 1):
        with pytest.raises(RejectedImage) as err:
            inspect_image(blob[:cut], MAX_PIXELS)
        assert err.value.reason == "truncated"


def test_truncated_images_are_refused_even_if_pillow_is_told_to_load_them(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    blob = _encode("JPEG", "RGB")
    with pytest.raises(RejectedImage) as err:
        inspect_image(blob[: len(blob) // 2], MAX_PIXELS)
    assert err.value.reason == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is put back


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"BM is a note about a car", None),  # weak magic, no BMP header behind it
        (b"P3 is a parking level", None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),  # a sound file: RIFF, but not WebP
        (b'{"caption": "a cat"}', None),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "JPEG"),
    ],
)
def test_content_sniffing(head, fmt):
    assert sniff_format(head) == fmt
