"""Build a catalogue from a listed source: read, validate, de-duplicate, label and split every item.

Bad items do not stop ingestion: each becomes a :class:`Rejection` (item, reason, detail) and the rest go on.
Reasons: ``missing``, ``unreadable``, ``empty-file``, ``too-large``, ``not-an-image``, ``corrupt``,
``truncated``, ``decompression-bomb``, ``unsupported-mode``, ``escapes-root``, ``duplicate-id``,
``duplicate-image`` (same sha256 as an accepted item), ``bad-label``, ``no-label``, ``bad-split``,
``bad-id``, ``bad-row`` (a manifest line that does not parse). Past ``max_reject_fraction`` of the listed
items (exact duplicates not counted), :func:`ingest` raises :class:`TooManyRejects` naming the worst reasons (and carrying the rejections).

Files of a folder that are not images (sidecars, system and hidden files, files left out by globs) are
*skipped*, not rejected: they are counted apart (:class:`storage.folder_rules.Skip`) and do not count
towards ``max_reject_fraction``. A file is an image by its content, whatever its name.

Re-ingesting keeps the ``row_id``, roles and ``ingested_at`` of every image whose id is unchanged, so an
unchanged source gives an identical table; new images get new row_ids (never reused: the next free id is
stored with the catalogue); images gone from the source are dropped. Only new or changed files are decoded
(all of them when the catalogue's images passed an older version of the checks, ``IMAGE_CHECKS``).
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from imaging.formats import FORMATS, HEAD_BYTES, sniff_format
from storage.catalogue import SCHEMA, CatalogueInfo
from storage.folder_rules import Skip, skip_counts
from storage.images import IMAGE_CHECKS, ImageFacts, RejectedImage, inspect_image, read_files
from storage.protocols import Membership, Protocol, assign, split_per_label
from storage.sources import Item, Source, natural_sorted


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 40_000_000  # per image, checked from the header before decoding
    max_file_bytes: int = 64 << 20
    max_reject_fraction: float = 0.05


@dataclass(frozen=True)
class Rejection:
    item: str
    reason: str
    detail: str


# An exact copy of an accepted image is left out and reported, but is no sign of a damaged source (real folders
# hold the same picture under several names), so it does not count towards ``max_reject_fraction``.
UNCOUNTED_REASONS = frozenset({"duplicate-image"})


class TooManyRejects(ValueError):
    """More than ``max_reject_fraction`` of the source's ``listed`` items (less the ``skipped`` ones) were
    ``rejected``."""

    def __init__(
        self, message: str, rejected: list[Rejection], listed: int, skipped: list[Skip] | None = None
    ) -> None:
        super().__init__(message)
        self.rejected, self.listed, self.skipped = rejected, listed, skipped or []


@dataclass
class IngestResult:
    table: pa.Table
    info: CatalogueInfo
    rejected: list[Rejection]
    listed: int  # every file or manifest row looked at: accepted + rejected + skipped
    added: int
    removed: int
    unchanged: bool
    skipped: list[Skip]


def _not_images(source: Source, items: list[Item], chunk: int) -> set[str]:
    """Ids of the ``items`` whose first bytes are no image format (a head that cannot be read is left to the
    full read, which rejects it with its reason)."""
    out = set()
    for start in range(0, len(items), chunk):
        batch = items[start : start + chunk]
        heads = source.fs.cat_ranges(
            [it.path for it in batch], [0] * len(batch), [HEAD_BYTES] * len(batch), on_error="return"
        )
        for item, head in zip(batch, heads, strict=True):
            if not isinstance(head, Exception) and sniff_format(head) is None:
                out.add(item.image_id)
    return out


def _read_and_check(
    source: Source,
    items: list,
    limits: Limits,
    known: dict[str, tuple[bytes, ImageFacts]],
    chunk: int,
    log: Callable[[str], None],
) -> tuple[list, list[Rejection]]:
    """(item, sha256, facts) of every readable, valid image; rejections of the others. Files whose id and
    sha256 match ``known`` are not decoded again."""
    from tqdm import tqdm

    accepted, rejected = [], []
    bar = tqdm(total=len(items), desc="ingest", unit="img", disable=not sys.stderr.isatty())
    for start in range(0, len(items), chunk):
        batch = items[start : start + chunk]
        for item, blob in zip(batch, read_files(source.fs, [it.path for it in batch]), strict=True):
            if isinstance(blob, Exception):
                reason = "missing" if isinstance(blob, FileNotFoundError) else "unreadable"
                rejected.append(
                    Rejection(item.image_id, reason, f"{item.uri}: {type(blob).__name__}: {blob}")
                )
                continue
            if len(blob) > limits.max_file_bytes:
                rejected.append(
                    Rejection(item.image_id, "too-large", f"{len(blob)} bytes > {limits.max_file_bytes}")
                )
                continue
            sha = hashlib.sha256(blob).digest()
            if item.image_id in known and known[item.image_id][0] == sha:
                accepted.append((item, sha, known[item.image_id][1]))
                continue
            try:
                accepted.append((item, sha, inspect_image(blob, limits.max_pixels)))
            except RejectedImage as err:
                rejected.append(Rejection(item.image_id, err.reason, err.detail))
        bar.update(len(batch))
        log(f"read {min(start + chunk, len(items))}/{len(items)} files")
    bar.close()
    return accepted, rejected


def ingest(
    name: str,
    source: Source,
    protocol: Protocol,
    limits: Limits = Limits(),
    previous: tuple[pa.Table, CatalogueInfo] | None = None,
    channels: int = 0,
    chunk: int = 256,
    log: Callable[[str], None] = lambda _: None,
) -> IngestResult:
    """Catalogue table of ``source`` under ``protocol``, merged with the ``previous`` catalogue (see module
    docstring). ``channels`` 1 or 3 forces the model channel count; 0 takes it from each image's mode."""
    if channels not in (0, 1, 3):
        raise ValueError(f"channels must be 0 (from the images), 1 or 3, not {channels}")
    rejected: list[Rejection] = []
    skipped = list(source.skipped)
    not_images = _not_images(source, [it for it in source.items if it.sniff], chunk)
    seen: set[str] = set()
    candidates = []
    for item in sorted(source.items, key=lambda it: it.image_id):
        if item.image_id in not_images:
            skipped.append(Skip(item.image_id, "not-an-image"))
        elif item.reject:
            rejected.append(Rejection(item.image_id, *item.reject))
        elif item.image_id in seen:
            rejected.append(
                Rejection(item.image_id, "duplicate-id", f"{item.uri}: image_id listed more than once")
            )
        elif item.size is not None and item.size > limits.max_file_bytes:
            rejected.append(
                Rejection(item.image_id, "too-large", f"{item.size} bytes > {limits.max_file_bytes}")
            )
        else:
            seen.add(item.image_id)
            candidates.append(item)

    prev_rows: dict[str, dict] = {}
    prev_info = None
    if previous is not None:
        prev_table, prev_info = previous
        for row in prev_table.select([c for c in SCHEMA.names if c != "image"]).to_pylist():
            prev_rows[row["image_id"]] = row
    same_checks = prev_info is not None and prev_info.image_checks == IMAGE_CHECKS
    known = {
        k: (r["sha256"], ImageFacts(r["width"], r["height"], r["channels"]))
        for k, r in (prev_rows.items() if same_checks else ())
    }  # images that passed these checks before are not decoded again
    accepted, bad = _read_and_check(source, candidates, limits, known, chunk, log)
    rejected += bad

    # Duplicate images: images already in the catalogue win, then the smallest image_id.
    accepted.sort(key=lambda a: (known.get(a[0].image_id, (None,))[0] != a[1], a[0].image_id))
    first: dict[bytes, str] = {}
    unique = []
    for item, sha, facts in accepted:
        if sha in first:
            rejected.append(Rejection(item.image_id, "duplicate-image", f"same sha256 as {first[sha]!r}"))
        else:
            first[sha] = item.image_id
            unique.append((item, sha, facts))
    unique.sort(key=lambda a: a[0].image_id)
    rejected.sort(key=lambda r: (r.reason, r.item))
    listed = len(source.items) + len(source.skipped)
    skipped.sort(key=lambda k: (k.reason, k.item))
    check_rejects(rejected, listed - len(skipped), limits.max_reject_fraction, listed, skipped)
    if not unique:
        raise ValueError(
            f"{source.uri}: no image among {listed} files ({len(rejected)} rejected, {len(skipped)} skipped: "
            f"{skip_counts(skipped)}); images are recognised by content: {', '.join(FORMATS)}"
        )

    old_names = list(prev_info.label_names) if prev_info is not None else []
    new_names = natural_sorted({n for item, _, _ in unique for n in item.labels} - set(old_names))
    label_names = old_names + new_names
    label_id = {n: i for i, n in enumerate(label_names)}

    next_id = 0
    if prev_info is not None:
        ids = [r["row_id"] for r in prev_rows.values()]
        next_id = prev_info.next_row_id if prev_info.next_row_id is not None else max(ids, default=-1) + 1
    row_ids = []
    for item, _, _ in unique:
        if item.image_id in prev_rows:
            row_ids.append(prev_rows[item.image_id]["row_id"])
        else:
            row_ids.append(next_id)
            next_id += 1

    labels = [sorted(label_id[n] for n in item.labels) for item, _, _ in unique]
    same_protocol = prev_info is not None and prev_info.protocol == protocol.to_dict()
    kept_mask = np.array([same_protocol and it.image_id in prev_rows for it, _, _ in unique], bool)
    flag = lambda f: np.array([bool(prev_rows.get(it.image_id, {}).get(f)) for it, _, _ in unique], bool)  # noqa: E731
    kept = Membership(flag("in_train"), flag("in_validation"), flag("in_query"), flag("in_database"))
    roles = assign(protocol, labels, [it.split for it, _, _ in unique], kept, kept_mask)
    min_images = protocol.min_label_images if protocol.kind == "per_label" else 0

    now = datetime.now(UTC)
    same_file = [
        it.image_id in prev_rows and prev_rows[it.image_id]["sha256"] == sha for it, sha, _ in unique
    ]
    table = pa.table(
        {
            "row_id": pa.array(row_ids, pa.int64()),
            "image_id": [it.image_id for it, _, _ in unique],
            "uri": [it.uri for it, _, _ in unique],
            "image": pa.nulls(len(unique), pa.binary()),
            "labels": pa.array(labels, pa.list_(pa.int32())),
            "split": roles.split,
            "in_train": roles.in_train,
            "in_validation": roles.in_validation,
            "in_query": roles.in_query,
            "in_database": roles.in_database,
            "sha256": pa.array([sha for _, sha, _ in unique], pa.binary(32)),
            "width": pa.array([f.width for _, _, f in unique], pa.int32()),
            "height": pa.array([f.height for _, _, f in unique], pa.int32()),
            "channels": pa.array([channels or f.channels for _, _, f in unique], pa.int32()),
            "ingested_at": pa.array(
                [
                    prev_rows[it.image_id]["ingested_at"] if same else now
                    for (it, _, _), same in zip(unique, same_file, strict=True)
                ],
                pa.timestamp("us", tz="UTC"),
            ),
        },
        schema=SCHEMA,
    ).sort_by("row_id")
    info = CatalogueInfo(
        name=name,
        label_names=label_names,
        protocol=protocol.to_dict(),
        source=source.uri,
        next_row_id=next_id,
        label_splits=split_per_label(labels, roles, label_names, min_images),
        image_checks=IMAGE_CHECKS,
    )
    unchanged = (
        previous is not None
        and _same(previous[0], table)
        and prev_info.label_names == label_names
        and same_protocol
        and same_checks
        and prev_info.source == source.uri
    )
    return IngestResult(
        table=table,
        info=info,
        rejected=rejected,
        skipped=skipped,
        listed=listed,
        added=sum(it.image_id not in prev_rows for it, _, _ in unique),
        removed=len(set(prev_rows) - {it.image_id for it, _, _ in unique}),
        unchanged=unchanged,
    )


def _same(old: pa.Table, new: pa.Table) -> bool:
    if old.num_rows != new.num_rows:
        return False
    old = old.sort_by("row_id")
    return all(old[c].equals(new[c]) for c in SCHEMA.names if c not in ("image", "ingested_at"))


def reject_reasons(rejected: list[Rejection]) -> list[tuple[str, int, Rejection]]:
    """(reason, count, first example) per reason, most frequent first."""
    counts = Counter(r.reason for r in rejected)
    example = {}
    for r in rejected:
        example.setdefault(r.reason, r)
    return [(reason, n, example[reason]) for reason, n in counts.most_common()]


def check_rejects(
    rejected: list[Rejection],
    candidates: int,
    max_fraction: float,
    listed: int | None = None,
    skipped: list[Skip] | None = None,
) -> None:
    """Raise :class:`TooManyRejects` if more than ``max_fraction`` of the ``candidates`` (listed items less
    the skipped ones) were rejected for a reason that counts (``UNCOUNTED_REASONS`` do not)."""
    counted = [r for r in rejected if r.reason not in UNCOUNTED_REASONS]
    if candidates and len(counted) / candidates > max_fraction:
        worst = "; ".join(
            f"{reason} x{n} (e.g. {ex.item!r}: {ex.detail})" for reason, n, ex in reject_reasons(counted)[:3]
        )
        uncounted = len(rejected) - len(counted)
        also = f"; {uncounted} exact duplicates also left out, not counted" if uncounted else ""
        also += f"; {len(skipped)} other files skipped, not counted" if skipped else ""
        raise TooManyRejects(
            f"{len(counted)} of {candidates} items rejected ({len(counted) / candidates:.1%} > "
            f"max_reject_fraction {max_fraction:.1%}); worst reasons: {worst}{also}",
            rejected,
            candidates if listed is None else listed,
            skipped,
        )


def rejected_markdown(rejected: list[Rejection], limit: int = 50) -> str:
    """Markdown table of the rejections (the first ``limit``), for asset metadata."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")[:200]

    lines = ["| item | reason | detail |", "|---|---|---|"]
    lines += [f"| {cell(r.item)} | {r.reason} | {cell(r.detail)} |" for r in rejected[:limit]]
    if len(rejected) > limit:
        lines.append(f"| … {len(rejected) - limit} more | | |")
    return "\n".join(lines)
