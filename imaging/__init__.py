"""Image decoding shared by ``ml/`` and ``storage/``: PIL and NumPy only, no torch, no project imports."""

from PIL import Image

# Pillow refuses images above this many pixels (decompression-bomb guard, errors instead of warnings).
Image.MAX_IMAGE_PIXELS = 64_000_000
