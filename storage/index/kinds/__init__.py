"""The built-in index kinds; importing this package registers them (in this order)."""

from storage.index.kinds.flat import FlatIndex
from storage.index.kinds.flat_dedup import DedupFlatIndex
from storage.index.kinds.hnsw import HNSWIndex
from storage.index.kinds.ivf import IVFIndex
from storage.index.kinds.ivf_dedup import IVFDedupIndex
from storage.index.kinds.multihash import MultiHashIndex

__all__ = ["DedupFlatIndex", "FlatIndex", "HNSWIndex", "IVFDedupIndex", "IVFIndex", "MultiHashIndex"]
