"""The split per label of a catalogue, as a table and as one line: how many queries, training, validation and
database images each label has, and which labels are too small to be queried."""

from __future__ import annotations

import pyarrow as pa

from storage.protocols import Membership, split_per_label


def table_label_splits(table: pa.Table, names: list[str], min_label_images: int = 0) -> list[dict]:
    """:func:`storage.protocols.split_per_label` of a catalogue table (its ``labels`` and role flags)."""
    flags = [table[f].to_numpy(zero_copy_only=False) for f in ("in_train", "in_validation", "in_query")]
    roles = Membership(*flags, table["in_database"].to_numpy(zero_copy_only=False))
    return split_per_label(table["labels"], roles, names, min_label_images)


def split_summary(splits: list[dict], show: int = 5) -> str:
    """One line: the labels, their sizes, and the labels with a note (the first ``show`` of each note named)."""
    sizes = [s["images"] for s in splits]
    parts = [f"{len(splits)} labels" + (f" of {min(sizes)}..{max(sizes)} images" if sizes else "")]
    by_note: dict[str, list[dict]] = {}
    for s in splits:
        if s.get("note"):
            by_note.setdefault(s["note"], []).append(s)
    for note, group in by_note.items():
        names = ", ".join(f"{s['label']} ({s['images']})" for s in group[:show])
        more = f" and {len(group) - show} more" if len(group) > show else ""
        parts.append(f"{len(group)} {note}: {names}{more}")
    return "; ".join(parts)


def label_splits_markdown(splits: list[dict], limit: int = 50) -> str:
    """Markdown table of the split per label: labels with a note first, then the others, ``limit`` rows."""
    rows = sorted(splits, key=lambda s: not s.get("note"))
    lines = [
        "| label | images | query | train | validation | database | note |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['label']} | {s['images']} | {s['query']} | {s['train']} | {s['validation']} | "
        f"{s['database']} | {s.get('note', '')} |"
        for s in rows[:limit]
    ]
    if len(rows) > limit:
        lines.append(f"| … {len(rows) - limit} more | | | | | | |")
    return "\n".join(lines)
