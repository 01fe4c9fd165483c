"""Evaluation protocols: which catalogue images train, which are queries, which form the database.

Seeded, and recorded with the catalogue (``Protocol.to_dict`` goes into its Parquet metadata).

* ``explicit``: the source names each image's split (train | query | database | validation).
* ``per_label``: for each label in id order, ``query_per_label`` then ``train_per_label`` images carrying it are
  drawn (seeded) from those not drawn yet. An image counts for every label it carries, so a single-label
  catalogue gets exactly the quota per class (or all its images, if fewer) and a multi-label one at least the
  quota per label where the images allow.

In both, ``database`` is ``all`` (every image that is not a query, training images included: the common
CIFAR-10 / NUS-WIDE protocol) or ``rest`` (images neither query nor train). Unless the source names
validation images, a seeded ``validation_size`` slice of the training images is held out for model selection
(database only, like the IDX protocol). Rows of an earlier ingest under the same protocol keep their roles;
only new rows are drawn, against the quotas still open.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("explicit", "per_label")
DATABASE = ("all", "rest")


@dataclass(frozen=True)
class Protocol:
    kind: str = "per_label"
    train_per_label: int = 500
    query_per_label: int = 100
    database: str = "all"
    validation_size: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"protocol {self.kind!r} is not one of {KINDS}")
        if self.database not in DATABASE:
            raise ValueError(f"database {self.database!r} is not one of {DATABASE}")
        if min(self.train_per_label, self.query_per_label, self.validation_size) < 0:
            raise ValueError("protocol quotas and validation_size must be >= 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.kind == "explicit":
            d.pop("train_per_label")
            d.pop("query_per_label")
        return d


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


def assign(
    protocol: Protocol,
    labels: list[list[int]],
    splits: list[str | None],
    kept: Membership | None = None,
    kept_mask: np.ndarray | None = None,
) -> Membership:
    """Roles of each image. ``kept``/``kept_mask``: flags of images already placed by an earlier ingest under
    this protocol; they are kept as they are and count against the quotas."""
    n = len(labels)
    rng = np.random.default_rng(protocol.seed)
    fixed = np.zeros(n, bool) if kept_mask is None else np.asarray(kept_mask, bool)
    role = np.full(n, "", dtype=object)  # train | query | validation | database | ""
    if kept is not None:
        role[fixed & kept.in_query] = "query"
        role[fixed & kept.in_train] = "train"
        role[fixed & kept.in_validation] = "validation"
        role[fixed & (role == "")] = "database"
    if protocol.kind == "explicit":
        for i in np.flatnonzero(~fixed):
            if splits[i] is None:
                raise ValueError(
                    "the explicit protocol needs a split for every image (split column or split folders)"
                )
            role[i] = splits[i]
    else:
        n_labels = 1 + max((max(row) for row in labels if row), default=-1)
        member = np.zeros((n, n_labels), bool)
        for i, row in enumerate(labels):
            member[i, row] = True
        for name, quota in (("query", protocol.query_per_label), ("train", protocol.train_per_label)):
            for label in range(n_labels):
                carriers = member[:, label]
                need = quota - int(
                    np.sum(carriers & np.isin(role, [name, "validation"] if name == "train" else [name]))
                )
                free = np.flatnonzero(carriers & (role == "") & ~fixed)
                if need > 0 and len(free):
                    role[rng.permutation(free)[:need]] = name
        role[(role == "") & ~fixed] = "database"
    has_validation = bool(np.any(role == "validation"))
    if not has_validation and protocol.validation_size:
        train = np.flatnonzero((role == "train") & ~fixed)
        if protocol.validation_size >= len(train):
            raise ValueError(
                f"validation_size {protocol.validation_size} leaves no training images out of {len(train)} "
                f"({int(np.sum(role == 'query'))} of {n} images are queries); lower validation_size"
                + (" or query_per_label" if protocol.kind == "per_label" else "")
            )
        role[rng.choice(train, size=protocol.validation_size, replace=False)] = "validation"
    in_query = role == "query"
    in_train = role == "train"
    in_validation = role == "validation"
    in_database = ~in_query if protocol.database == "all" else (role == "database") | in_validation
    return Membership(in_train, in_validation, in_query, np.asarray(in_database, bool))
