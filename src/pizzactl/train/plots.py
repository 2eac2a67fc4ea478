"""Training-curve and confusion-matrix PNGs for a run directory (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # A class named with an emoji draws as a box in the default font: not worth a warning per plot.
    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
    return plt


def training_curves(rows: Sequence[dict], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch (train and validation), phases one after another."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    x = list(range(1, len(rows) + 1))
    for key, ax, label in (
        ("loss", ax_loss, "train"),
        ("val_loss", ax_loss, "validation"),
        ("accuracy", ax_acc, "train"),
        ("val_accuracy", ax_acc, "validation"),
    ):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(
                x, [float("nan") if y is None else y for y in ys], label=label, marker="." if len(rows) < 40 else None
            )
    phases = [r["phase"] for r in rows]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            for ax in (ax_loss, ax_acc):
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=1)
                ax.text(i + 0.6, ax.get_ylim()[1], phases[i], va="top", fontsize=8, color="grey")
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "validation confusion matrix"
) -> Path:
    """Rows: true class; columns: predicted class. Grows with the number of classes."""
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.7 * n), max(4.0, 1.2 + 0.6 * n)))
    ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_xticks(range(n), classes, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
