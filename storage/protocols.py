"""Evaluation protocols: which catalogue images train, which are queries, which form the database.

Seeded, and recorded with the catalogue (``Protocol.to_dict`` goes into its Parquet metadata).

* ``explicit``: the source names each image's split (train | query | database | validation).
* ``per_label``: for each label in id order, its queries then its training images are drawn (seeded) from
  the images carrying it that are not drawn yet. An image counts for every label it carries. The number per
  label is either a fixed quota (``query_per_label`` / ``train_per_label``: exactly that many, or as many as
  the label has) or, by default, a fraction that fits any catalogue size: ``query_fraction`` of the label's
  images (at least one), lowered evenly over the labels where the total would pass ``max_queries``; then
  ``train_fraction`` of the rest (at least one), likewise within ``max_train``. A label always keeps one image
  out of its queries. Labels with fewer than ``min_label_images`` images are drawn for neither: their images
  stay in the database only (see :func:`split_per_label`).

In both, ``database`` is ``all`` (every image that is not a query, training images included: the common
CIFAR-10 / NUS-WIDE protocol) or ``rest`` (images neither query nor train). Unless the source names
validation images, a seeded slice of the training images is held out for model selection (database only,
like the IDX protocol): ``validation_size`` images if given, else ``validation_fraction`` of them (at least
one, at most ``max_validation``, always leaving one to train on). Rows of an earlier ingest under the same
protocol keep their roles; only new rows are drawn, against the quotas still open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

KINDS = ("explicit", "per_label")
DATABASE = ("all", "rest")
_NONE, _QUERY, _TRAIN, _VALIDATION, _DATABASE = 0, 1, 2, 3, 4
_ROLE_OF_SPLIT = {"query": _QUERY, "train": _TRAIN, "validation": _VALIDATION, "database": _DATABASE}


@dataclass(frozen=True)
class Protocol:
    kind: str = "per_label"
    train_per_label: int | None = None  # fixed quota; None: train_fraction of the rest, within max_train
    query_per_label: int | None = None  # fixed quota; None: query_fraction, within max_queries
    database: str = "all"
    validation_size: int | None = None  # fixed; None: validation_fraction, within max_validation
    seed: int = 0
    query_fraction: float = 0.1
    max_queries: int = 10_000
    train_fraction: float = 1.0
    max_train: int = 50_000
    validation_fraction: float = 0.1
    max_validation: int = 5_000
    min_label_images: int = 2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"protocol {self.kind!r} is not one of {KINDS}")
        if self.database not in DATABASE:
            raise ValueError(f"database {self.database!r} is not one of {DATABASE}")
        counts = (self.train_per_label, self.query_per_label, self.validation_size)
        if min((c for c in counts if c is not None), default=0) < 0:
            raise ValueError("protocol quotas and validation_size must be >= 0")
        for name in ("query_fraction", "train_fraction", "validation_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], not {getattr(self, name)}")
        if min(self.max_queries, self.max_train, self.max_validation) < 0:
            raise ValueError("max_queries, max_train and max_validation must be >= 0")
        if self.min_label_images < 2:
            raise ValueError("min_label_images must be >= 2 (one query and one training image)")

    def to_dict(self) -> dict:
        """The fields that decide the roles (those a fixed quota or the explicit kind makes moot left out)."""
        d = asdict(self)
        drop = set()
        if self.kind == "explicit":
            drop |= {"train_per_label", "query_per_label", "query_fraction", "max_queries"}
            drop |= {"train_fraction", "max_train", "min_label_images"}
        if self.query_per_label is not None:
            drop |= {"query_fraction", "max_queries"}
        if self.train_per_label is not None:
            drop |= {"train_fraction", "max_train"}
        if self.validation_size is not None:
            drop |= {"validation_fraction", "max_validation"}
        return {k: v for k, v in d.items() if k not in drop}


@dataclass
class Membership:
    """Per-image role flags (numpy bool arrays) and the ``split`` name derived from them."""

    in_train: np.ndarray
    in_validation: np.ndarray
    in_query: np.ndarray
    in_database: np.ndarray

    @property
    def split(self) -> list[str]:
        return np.where(self.in_query, "query", np.where(self.in_train, "train", "database")).tolist()


def _label_lists(labels) -> tuple[np.ndarray, np.ndarray]:
    """(image index, label id) of every (image, label) pair: ``labels`` is a list of label-id lists, a
    pyarrow list array, or a 1-D integer array (one label per image)."""
    if isinstance(labels, np.ndarray) and labels.ndim == 1:
        return np.arange(len(labels)), labels.astype(np.int64)
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    if not isinstance(labels, pa.ListArray):
        labels = pa.array(labels, pa.list_(pa.int64()))
    offsets = labels.offsets.to_numpy()
    flat = labels.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return np.repeat(np.arange(len(labels)), np.diff(offsets)), flat


def _fractional(available: np.ndarray, fraction: float, cap: int) -> np.ndarray:
    """``floor(fraction * available)`` per label, at least 1 where anything is available; where the sum
    would pass ``cap`` the fraction is lowered (bisection) until it does not, or until one per label is left."""

    def quotas(f: float) -> np.ndarray:
        return np.where(available > 0, np.maximum(1, np.floor(f * available)), 0).astype(np.int64)

    if fraction <= 0:
        return np.zeros_like(available)
    if quotas(fraction).sum() <= cap:
        return quotas(fraction)
    low, high = 0.0, fraction
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if quotas(mid).sum() <= cap else (low, mid)
    return quotas(low)


def _draw(
    role: np.ndarray,
    fixed: np.ndarray,
    carriers: list[np.ndarray],
    quota: np.ndarray,
    code: int,
    counted: tuple[int, ...],
    rng: np.random.Generator,
) -> None:
    for label, images in enumerate(carriers):
        need = int(quota[label]) - int(np.isin(role[images], counted).sum())
        if need <= 0:
            continue
        free = images[(role[images] == _NONE) & ~fixed[images]]
        if len(free):
            role[rng.permutation(free)[:need]] = code


def assign(
    protocol: Protocol,
    labels: Sequence[Sequence[int]] | pa.ListArray | np.ndarray,
    splits: Sequence[str | None] | None = None,
    kept: Membership | None = None,
    kept_mask: np.ndarray | None = None,
) -> Membership:
    """Roles of each image. ``labels``: label ids per image (see :func:`_label_lists`); ``splits``: the
    source's split names (explicit protocol). ``kept``/``kept_mask``: flags of images already placed by an
    earlier ingest under this protocol; they are kept as they are and count against the quotas."""
    image_of, label_of = _label_lists(labels)
    n = len(labels)
    rng = np.random.default_rng(protocol.seed)
    fixed = np.zeros(n, bool) if kept_mask is None else np.asarray(kept_mask, bool)
    role = np.full(n, _NONE, dtype=np.int8)
    if kept is not None:
        role[fixed & kept.in_query] = _QUERY
        role[fixed & kept.in_train & (role == _NONE)] = _TRAIN
        role[fixed & kept.in_validation & (role == _NONE)] = _VALIDATION
        role[fixed & (role == _NONE)] = _DATABASE
    if protocol.kind == "explicit":
        for i in np.flatnonzero(~fixed):
            if splits is None or splits[i] is None:
                raise ValueError(
                    "the explicit protocol needs a split for every image (split column or split folders)"
                )
            role[i] = _ROLE_OF_SPLIT[splits[i]]
    else:
        n_labels = int(label_of.max()) + 1 if len(label_of) else 0
        order = np.argsort(label_of, kind="stable")
        sizes = np.bincount(label_of, minlength=n_labels)
        carriers = np.split(image_of[order], np.cumsum(sizes)[:-1]) if n_labels else []
        usable = np.where(sizes >= protocol.min_label_images, sizes, 0)
        if protocol.query_per_label is not None:
            queries = np.full(n_labels, protocol.query_per_label, np.int64)
        else:
            queries = _fractional(usable, protocol.query_fraction, protocol.max_queries)
        queries = np.minimum(queries, np.maximum(usable - 1, 0))
        if protocol.train_per_label is not None:
            train = np.where(usable > 0, protocol.train_per_label, 0)
        else:
            train = _fractional(usable - queries, protocol.train_fraction, protocol.max_train)
        _draw(role, fixed, carriers, queries, _QUERY, (_QUERY,), rng)
        _draw(role, fixed, carriers, train, _TRAIN, (_TRAIN, _VALIDATION), rng)
        role[(role == _NONE) & ~fixed] = _DATABASE
    if not np.any(role == _VALIDATION):
        _hold_out_validation(protocol, role, fixed, rng)
    in_query = role == _QUERY
    in_train = role == _TRAIN
    in_validation = role == _VALIDATION
    in_database = ~in_query if protocol.database == "all" else (role == _DATABASE) | in_validation
    return Membership(in_train, in_validation, in_query, np.asarray(in_database, bool))


def _hold_out_validation(
    protocol: Protocol, role: np.ndarray, fixed: np.ndarray, rng: np.random.Generator
) -> None:
    train = np.flatnonzero((role == _TRAIN) & ~fixed)
    if protocol.validation_size is not None:
        size = protocol.validation_size
        if size and size >= len(train):
            raise ValueError(
                f"validation_size {size} leaves no training images out of {len(train)} "
                f"({int(np.sum(role == _QUERY))} of {len(role)} images are queries); lower validation_size"
                + (" or query_per_label" if protocol.kind == "per_label" else "")
            )
    else:
        size = min(int(protocol.validation_fraction * len(train)), protocol.max_validation, len(train) - 1)
        size = max(size, 1 if protocol.validation_fraction > 0 and len(train) >= 2 else 0)
    if size:
        role[rng.choice(train, size=size, replace=False)] = _VALIDATION


def split_per_label(labels, membership: Membership, names: Sequence[str], min_label_images: int = 0) -> list:
    """Per label (in id order): its name, images, and how many of them are queries, train, validation and
    database; ``note`` says why a label has no query or no training image (fewer than ``min_label_images``
    images: kept in the database only)."""
    image_of, label_of = _label_lists(labels)
    count = lambda mask: np.bincount(label_of[mask[image_of]], minlength=len(names))  # noqa: E731
    totals = np.bincount(label_of, minlength=len(names))
    per = {
        role: count(np.asarray(flags, bool))
        for role, flags in (
            ("query", membership.in_query),
            ("train", membership.in_train),
            ("validation", membership.in_validation),
            ("database", membership.in_database),
        )
    }
    out = []
    for i, name in enumerate(names):
        row = {"label": name, "images": int(totals[i]), **{k: int(v[i]) for k, v in per.items()}}
        if totals[i] < min_label_images:
            row["note"] = f"database only (fewer than {min_label_images} images)"
        elif not row["query"] or not (row["train"] + row["validation"]):
            row["note"] = "without query" if not row["query"] else "without training image"
        out.append(row)
    return out
