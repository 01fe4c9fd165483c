"""Import timm beside the CPU build of torch.

timm imports torchvision, and PyPI's torchvision wheels are CUDA builds whose C extension cannot load next
to torch's ``+cpu`` wheel; torchvision then fails at import while registering fake kernels for
``torchvision::nms``. No library offers a CPU torchvision here, so when (and only when) that happens we
declare the two operator schemas it registers against and import again. The NMS kernels stay absent
(vitrieve never calls them); everything timm builds (ViT, layers, FrozenBatchNorm) works.
"""

from __future__ import annotations

import sys
from types import ModuleType

_fragment = None  # keeps the schema registration alive for the life of the process


def _declare_torchvision_schemas() -> None:
    global _fragment
    import torch

    if _fragment is None:
        _fragment = torch.library.Library("torchvision", "FRAGMENT")
        for name in ("nms", "qnms"):
            _fragment.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def import_timm() -> ModuleType:
    """Return the ``timm`` module, working around a torchvision build that cannot load its ops."""
    try:
        import timm
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] in ("timm", "torchvision")]:
            del sys.modules[name]
        _declare_torchvision_schemas()
        import timm
    return timm
