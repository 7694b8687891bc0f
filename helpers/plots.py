"""Figures shared by several notebooks: image grids and loss curves, saved as PNG and shown."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "inline")) else None
import matplotlib.pyplot as plt
import numpy as np
import torch

from .common import to_uint8


def _as_image(x) -> np.ndarray:
    """Tensor image in [-1, 1] (3,H,W), mask (1,H,W) in {0,1}, or uint8 array -> displayable array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.ndim == 3 and x.shape[0] == 1:       # a mask: white = hole
            return x[0].float().numpy()
        return to_uint8(x)
    return np.asarray(x)


def image_grid(rows: Sequence[Sequence], col_titles: Sequence[str] | None = None,
               row_titles: Sequence[str] | None = None, path: Path | None = None, cell: float = 1.6,
               title: str | None = None):
    """A grid of images: ``rows[i][j]`` is a tensor in [-1, 1], a (1,H,W) mask, or a uint8 array."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(row) and row[j] is not None:
                img = _as_image(row[j])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None,
                          interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0 and col_titles is not None and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=9)
            if j == 0 and row_titles is not None and i < len(row_titles):
                ax.set_ylabel(row_titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def loss_curve(history: Sequence[dict], path: Path | None = None, title: str = "training loss",
               key: str = "loss", smooth: int = 10):
    """Plot ``[{"step": s, key: v}, ...]`` with a moving average."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    steps = np.array([h["step"] for h in history])
    vals = np.array([h[key] for h in history], dtype=float)
    ax.plot(steps, vals, alpha=0.35, label=key)
    if len(vals) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(vals, kernel, mode="valid"), label=f"moving average ({smooth})")
    ax.set_xlabel("optimizer step"), ax.set_ylabel(key), ax.set_title(title)
    ax.set_yscale("log" if len(vals) and vals.min() > 0 else "linear")
    ax.legend()
    fig.tight_layout()
    return save(fig, path)


def save(fig, path: Path | None):
    """Save a figure (PNG, 150 dpi) when a path is given; return the figure for display."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def hole_histogram(fractions: dict[str, Sequence[float]], path: Path | None = None, bins: int = 20,
                   title: str = "hole-area fraction by mask kind"):
    """Overlaid histograms of hole-area fractions, one per mask kind (notebook 01)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    edges = np.linspace(0, max(0.5, max((max(v) for v in fractions.values() if len(v)), default=0.5)), bins + 1)
    for kind, values in fractions.items():
        ax.hist(values, bins=edges, alpha=0.5, label=f"{kind} (n={len(values)})")
    ax.set_xlabel("hole area / image area"), ax.set_ylabel("masks"), ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
