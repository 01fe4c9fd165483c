"""Protocols that fit any catalogue size: query, training and validation shares with caps, labels too small to
split kept in the database only, and the split per label checked against a brute-force count."""

from __future__ import annotations

import time

import numpy as np
import pytest

from storage.protocols import Membership, Protocol, assign, split_per_label

DEFAULT = Protocol()


def _per_label(labels: np.ndarray, flags: np.ndarray) -> np.ndarray:
    return np.bincount(labels[flags], minlength=labels.max() + 1)


def _check_single_label(labels: np.ndarray, roles: Membership, protocol: Protocol) -> None:
    """The protocol's promises, by brute force over a single-label array."""
    sizes = np.bincount(labels)
    usable = sizes >= protocol.min_label_images
    q, t, v = roles.in_query, roles.in_train, roles.in_validation
    assert not (q & (t | v)).any() and not (t & v).any()
    assert (_per_label(labels, q)[usable] >= 1).all() and (_per_label(labels, t | v)[usable] >= 1).all()
    assert (_per_label(labels, q | t | v)[~usable] == 0).all()  # too small: database only
    assert roles.in_database[~(q | t | v)].all() and not roles.in_database[q].any()
    assert q.sum() <= max(protocol.max_queries, usable.sum())
    assert (t | v).sum() <= max(protocol.max_train, usable.sum())
    assert 1 <= v.sum() <= protocol.max_validation and t.sum() >= 1


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("tiny 50", [10] * 5),
        ("digits 1,797", [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),
        ("skewed 67", [40, 15, 6, 3, 2, 1]),
        ("fashion-mnist 70,000", [7000] * 10),
    ],
)
def test_defaults_fit_small_and_medium_catalogues(name, sizes):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(0).shuffle(labels)
    roles = assign(DEFAULT, labels)
    _check_single_label(labels, roles, DEFAULT)
    queries = _per_label(labels, roles.in_query)
    expected = np.maximum(1, np.floor(0.1 * np.array(sizes))).astype(int)
    expected[np.array(sizes) < 2] = 0
    if expected.sum() <= DEFAULT.max_queries:
        assert queries.tolist() == expected.tolist()  # 10 % of each label, at least one
    splits = split_per_label(labels, roles, [f"L{i}" for i in range(len(sizes))], DEFAULT.min_label_images)
    noted = [s["label"] for s in splits if "note" in s]
    assert noted == [f"L{i}" for i, n in enumerate(sizes) if n < 2]


def test_five_million_images_stay_within_the_caps():
    """A 5M-image label array (skewed over 1,000 labels, plus single-image labels): queries, training and
    validation images within their caps, every splittable label queried and trained on, in seconds."""
    rng = np.random.default_rng(1)
    weights = 1.0 / np.arange(1, 1001) ** 1.1
    labels = rng.choice(1000, size=5_000_000, p=weights / weights.sum())
    labels[:5] = np.arange(1000, 1005)  # five labels of one image each
    start = time.perf_counter()
    roles = assign(DEFAULT, labels)
    took = time.perf_counter() - start
    _check_single_label(labels, roles, DEFAULT)
    assert roles.in_query.sum() <= 10_000 and roles.in_validation.sum() == 5_000
    assert (roles.in_train | roles.in_validation).sum() <= 50_000
    assert not (roles.in_query | roles.in_train | roles.in_validation)[:5].any()
    assert took < 60, f"assign took {took:.1f}s on 5M images"


def test_fixed_quotas_keep_their_meaning():
    labels = np.repeat(np.arange(3), 8)
    roles = assign(Protocol(train_per_label=4, query_per_label=2, validation_size=2, seed=7), labels)
    assert _per_label(labels, roles.in_query).tolist() == [2, 2, 2]
    assert _per_label(labels, roles.in_train | roles.in_validation).tolist() == [4, 4, 4]
    assert roles.in_validation.sum() == 2


def test_fixed_validation_size_larger_than_the_training_set_is_refused_clearly():
    with pytest.raises(ValueError, match="validation_size 5000 leaves no training images out of 45"):
        assign(Protocol(validation_size=5000), np.repeat(np.arange(5), 10))


def test_multi_label_shares():
    rng = np.random.default_rng(2)
    labels = [sorted({int(a), int(b)}) for a, b in rng.integers(0, 4, (400, 2))]
    roles = assign(DEFAULT, labels)
    splits = split_per_label(labels, roles, list("abcd"))
    for label, s in enumerate(splits):
        carriers = np.array([label in row for row in labels])
        assert s["images"] == carriers.sum() and s["query"] == (carriers & roles.in_query).sum()
        assert s["query"] >= int(0.1 * s["images"]) and s["train"] >= 1
    assert roles.in_validation.sum() == int(0.1 * (roles.in_train.sum() + roles.in_validation.sum()))


def test_protocol_checks_and_record():
    with pytest.raises(ValueError, match="query_fraction"):
        Protocol(query_fraction=1.5)
    with pytest.raises(ValueError, match="min_label_images"):
        Protocol(min_label_images=1)
    assert "query_fraction" in DEFAULT.to_dict() and "query_per_label" in DEFAULT.to_dict()
    fixed = Protocol(query_per_label=2, train_per_label=4, validation_size=2).to_dict()
    assert not {"query_fraction", "max_queries", "train_fraction", "max_train", "validation_fraction"} & set(
        fixed
    )
