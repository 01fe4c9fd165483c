"""FAISS binary indexes with ids = row_id, written atomically with a manifest and published via CURRENT.

Each kind (``kind_names()``; ``flat`` by default, chosen per catalogue in the ``binary_index`` config) is one
registered ``BinaryIndex`` subclass under ``storage/index/kinds/``: ``flat`` and ``flat-dedup`` are exact and
rank by (Hamming distance, row_id); ``hnsw``, ``ivf`` and ``multihash`` are approximate, their results ordered
by (distance, row_id) among what they return. Adding a kind is one class with ``@register_kind``.

Modules: ``registry`` (kind name -> class, parameters), ``base`` (``BinaryIndex``), ``kinds``, ``distinct``
(search over distinct codes), ``threads`` (search thread pool), ``build`` (build, verify, search),
``publish`` (files, manifests, ``CURRENT``), ``load`` (sha256-checked, memory-mapped, cached loading),
``incremental`` (index from the stored codes, adding only new rows), ``filters`` (search with rows hidden or
restricted, ``--where``), ``tombstones`` (deletes and updates visible at once, compacted at the re-index).
No Dagster in here.
"""

from storage.index import kinds as _kinds  # noqa: F401  (registers the built-in kinds)
from storage.index.base import BinaryIndex
from storage.index.build import build_index, resolve_params, search, verify_index
from storage.index.filters import rows_where, search_published, search_rows
from storage.index.incremental import BuildReport, index_from_codes
from storage.index.load import cache_dir, load_index, load_index_cached, read_index_file
from storage.index.publish import (
    IndexManifest,
    current,
    index_dir,
    publish,
    published_manifest,
    read_manifest,
    write_index,
)
from storage.index.registry import (
    DEFAULT_KIND,
    Param,
    get_kind,
    kind_names,
    param_fields,
    register_kind,
    unregister_kind,
)
from storage.index.threads import default_query_batch, run_chunked, search_threads, set_search_threads
from storage.index.tombstones import (
    Tombstones,
    compact_tombstones,
    delete_rows,
    read_tombstones,
    update_rows,
)

KINDS = kind_names()  # the built-in kinds, for callers that want a tuple

__all__ = [
    "DEFAULT_KIND",
    "KINDS",
    "BinaryIndex",
    "BuildReport",
    "IndexManifest",
    "Param",
    "Tombstones",
    "build_index",
    "cache_dir",
    "compact_tombstones",
    "current",
    "default_query_batch",
    "delete_rows",
    "get_kind",
    "index_dir",
    "index_from_codes",
    "kind_names",
    "load_index",
    "load_index_cached",
    "param_fields",
    "publish",
    "published_manifest",
    "read_index_file",
    "read_manifest",
    "read_tombstones",
    "register_kind",
    "resolve_params",
    "rows_where",
    "run_chunked",
    "search",
    "search_published",
    "search_rows",
    "search_threads",
    "set_search_threads",
    "unregister_kind",
    "update_rows",
    "verify_index",
    "write_index",
]
