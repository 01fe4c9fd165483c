"""Code length: the one check of a usable number of bits (packed codes take ``bits // 8`` bytes a row)."""

from __future__ import annotations

MAX_BITS = 1024  # the longest code a model may emit


def check_bits(bits: int, item: str = "bits", most: int | None = None) -> int:
    """``bits`` if it is a positive multiple of 8 (at most ``most``), else ``ValueError`` naming ``item``."""
    if most is not None:
        if bits % 8 or not 8 <= bits <= most:
            raise ValueError(f"{item} must be a multiple of 8 in [8, {most}], got {bits}")
    elif bits <= 0 or bits % 8:
        raise ValueError(f"{item} must be a positive multiple of 8, got {bits}")
    return bits
