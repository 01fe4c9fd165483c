"""Small PNG figures for materialisation metadata (matplotlib, Agg): PR curve, bit balance, retrieval examples
and attention maps. Inputs are NumPy arrays; nothing here imports torch."""

import io
from collections.abc import Sequence

import numpy as np

DPI = 72


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=DPI)


def _png(plt, fig) -> bytes:
    """The figure as a 64-colour PNG: these go inline into the event log, so keep them small."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    with Image.open(buf) as img:
        out = io.BytesIO()
        img.convert("RGB").quantize(64).save(out, format="PNG", optimize=True)
    return out.getvalue()


def pr_curve_png(precision: Sequence[float], recall: Sequence[float], title: str) -> bytes:
    """Precision against recall by Hamming radius, radii 0, 2, 4 and 8 annotated."""
    plt, fig = _figure(4, 3)
    ax = fig.add_subplot()
    ax.plot(recall, precision, marker=".")
    for r in (0, 2, 4, 8):
        if r < len(recall):
            ax.annotate(f"r={r}", (recall[r], precision[r]), fontsize=7)
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1.02), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(plt, fig)


def bit_balance_png(ones_rate: Sequence[float], title: str) -> bytes:
    """Ones-rate of every bit (ideal 0.5) as bars, and their histogram."""
    rate = np.asarray(ones_rate, dtype=float)
    plt, fig = _figure(6, 2.6)
    bars, hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    off = np.abs(rate - 0.5) > 0.25
    bars.bar(np.arange(len(rate)), rate, color=np.where(off, "tab:red", "tab:blue"), width=0.8)
    bars.axhline(0.5, color="k", lw=0.8, ls="--")
    bars.set(xlabel="bit", ylabel="ones rate", ylim=(0, 1), xlim=(-1, len(rate)), title=title)
    hist.hist(rate, bins=np.linspace(0, 1, 21), orientation="horizontal", color="tab:blue")
    hist.axhline(0.5, color="k", lw=0.8, ls="--")
    hist.set(xlabel="bits", ylim=(0, 1), yticklabels=[])
    fig.tight_layout()
    return _png(plt, fig)


def _show(ax, image: np.ndarray) -> None:
    """Show a uint8 (c, h, w) image without axes ticks."""
    img = image.transpose(1, 2, 0)
    ax.imshow(
        img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255, interpolation="nearest"
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, colour: str, width: float = 2.5) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def retrieval_grid_png(
    queries: np.ndarray,
    query_labels: Sequence[str],
    results: np.ndarray,
    result_labels: Sequence[Sequence[str]],
    distances: np.ndarray,
    relevant: np.ndarray,
) -> bytes:
    """One row per query: the query, then its top results with Hamming distance and label; results sharing no
    label with the query are framed and labelled in red. ``results`` is (nq, k, c, h, w)."""
    nq, k = results.shape[:2]
    plt, fig = _figure(1.0 * (k + 1), 1.15 * nq)
    axes = np.asarray(fig.subplots(nq, k + 1, squeeze=False))
    for i in range(nq):
        _show(axes[i, 0], queries[i])
        _frame(axes[i, 0], "tab:blue", 3)
        axes[i, 0].set_title(f"Q: {query_labels[i]}"[:14], fontsize=7, color="tab:blue")
        for j in range(k):
            ax = axes[i, j + 1]
            _show(ax, results[i, j])
            colour = "tab:green" if relevant[i, j] else "red"
            _frame(ax, colour, 1.5 if relevant[i, j] else 3)
            mark = "" if relevant[i, j] else "✗ "
            ax.set_title(
                f"{mark}d={int(distances[i, j])} {result_labels[i][j]}"[:16], fontsize=6, color=colour
            )
    fig.tight_layout(pad=0.3)
    return _png(plt, fig)


def attention_png(images: np.ndarray, maps: np.ndarray, labels: Sequence[str]) -> bytes:
    """Each image above its attention rollout (upsampled, overlaid)."""
    n = len(images)
    plt, fig = _figure(1.3 * n, 2.8)
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for i in range(n):
        _show(axes[0, i], images[i])
        axes[0, i].set_title(str(labels[i])[:14], fontsize=7)
        _show(axes[1, i], images[i])
        h, w = images[i].shape[1:]
        axes[1, i].imshow(
            maps[i],
            cmap="inferno",
            alpha=0.6,
            extent=(-0.5, w - 0.5, h - 0.5, -0.5),
            interpolation="bilinear",
        )
    axes[1, 0].set_ylabel("rollout", fontsize=7)
    fig.tight_layout(pad=0.3)
    return _png(plt, fig)
