"""Figures shared by several notebooks: image grids and loss curves, and :func:`save`, the one door
every figure of the course goes through on its way to a PNG and to a slide.

Every figure is designed for a 1280x720 slide: it is shown fitted into the slide's content area
(:data:`FIT_PX`), and :func:`save` makes sure that no text is then smaller than :data:`MIN_TEXT_PX`
pixels, lays the figure out, and, for the smoke preset, stamps it "smoke preset: pipeline check,
not a result" (visibly, and in the PNG's metadata) so that a figure shown alone cannot pass for a
result. The preset is the one whose output folders :func:`helpers.study.files.paths` opened last, or
``save(..., preset=...)``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from helpers.course.diffusion import alpha_bar, make_betas
from helpers.study.files import to_uint8

log = logging.getLogger(__name__)


def schedule_figure(T: int = 1000, path: Path | None = None):
    """beta_t and alpha_bar_t of the linear and cosine schedules (notebook 02)."""
    import matplotlib.pyplot as plt

    pass  # REMOVED

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for name in ("linear", "cosine"):
        b = make_betas(name, T)
        ab = alpha_bar(b)
        axes[0].plot(b, label=name)
        axes[1].plot(ab, label=name)
        axes[2].plot((ab / (1 - ab)).log10(), label=name)
    for ax, title in zip(axes, (r"$\beta_t$", r"$\bar\alpha_t$", r"$\log_{10}$ SNR $= \bar\alpha_t / (1 - \bar\alpha_t)$")):
        ax.set_title(title), ax.set_xlabel("timestep t"), ax.set_ylabel(title), ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    return save(fig, path)


def toy_figure(samples: dict, weights, means, stds, path: Path | None = None, labels: Sequence[str] | None = None):
    """Histograms of toy samples against the data density (notebook 02)."""
    import matplotlib.pyplot as plt
    import numpy as np

    pass  # REMOVED

    labels = [k for k in samples if k != "data"] if labels is None else list(labels)
    grid = np.linspace(-1.5, 1.5, 400)
    dens = sum(w * np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * np.sqrt(2 * np.pi)) for w, m, s in zip(weights, means, stds))
    fig, axes = plt.subplots(1, len(labels), figsize=(2.6 * len(labels), 2.6), sharey=True, squeeze=False)
    for ax, lab in zip(axes[0], labels):
        ax.hist(samples[lab].numpy(), bins=120, range=(-1.5, 1.5), density=True, alpha=0.6)
        ax.plot(grid, dens, "k", lw=1)
        ax.set_title(lab), ax.set_xlabel("x")
    axes[0][0].set_ylabel("density")
    return save(fig, path)


matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "inline")) else None


# ---------------------------------------------------------------- designed for a slide
SLIDE_PX = (1280, 720)


FIT_PX = (1200, 560)         # what a figure gets on a slide below its title: it is scaled to fit in here


MIN_TEXT_PX = 14             # smallest text height on the slide, in pixels (slide body text is ~24 px)


SMOKE_STAMP = "smoke preset: pipeline check, not a result"


SLIDE_RC = {"font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13, "xtick.labelsize": 12,
            "ytick.labelsize": 12, "legend.fontsize": 12, "figure.titlesize": 15, "axes.spines.top": False,
            "axes.spines.right": False}


plt.rcParams.update(SLIDE_RC)


def px_per_inch(fig) -> float:
    """Slide pixels per figure inch when ``fig`` is fitted into :data:`FIT_PX` (it is never enlarged
    beyond the size at which it is saved, 150 dpi)."""
    w, h = fig.get_size_inches()
    return min(FIT_PX[0] / w, FIT_PX[1] / h, 150.0)


def min_text_pt(fig) -> float:
    """The smallest font size (points) that is :data:`MIN_TEXT_PX` high on the slide for this figure."""
    return MIN_TEXT_PX * 72.0 / px_per_inch(fig)


def _texts(fig) -> list:
    """Every visible, non-empty text artist of the figure (titles, labels, ticks, legends, notes)."""
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
            and (t.axes is None or t.axes.get_visible())]


def enforce_legible(fig) -> None:
    """Raise every text smaller than :func:`min_text_pt` to it: a figure made with small fonts (or
    too many inches for its fonts) stays readable at slide size."""
    floor = min_text_pt(fig)
    for ax in fig.axes:             # tick labels: also those matplotlib creates later, at draw time
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            labels = axis.get_ticklabels(which="both")
            if labels and min(t.get_fontsize() for t in labels) < floor:
                ax.tick_params(axis=name, which="both", labelsize=floor)
    for t in _texts(fig):
        if t.get_fontsize() < floor:
            t.set_fontsize(floor)


def current_preset() -> str | None:
    from helpers.study.files import ACTIVE_PRESET
    return ACTIVE_PRESET


def stamp(fig, preset: str | None = None) -> bool:
    """Write the smoke stamp above the figure when ``preset`` (default: the active one) is smoke."""
    if (preset or current_preset()) != "smoke":
        return False
    if not any(t.get_text() == SMOKE_STAMP for t in fig.texts):
        fig.text(0.5, 1.0, SMOKE_STAMP, ha="center", va="bottom", color="#a00000", fontweight="bold",
                 fontsize=max(13.0, min_text_pt(fig)), gid="smoke-stamp",
                 bbox={"boxstyle": "round,pad=0.3", "fc": "#fff3f3", "ec": "#a00000"})
    return True


def save(fig, path: Path | None = None, preset: str | None = None):
    """Finish a figure for a slide and save it (PNG, 150 dpi) when a path is given; return it for display.

    1. every text at least :data:`MIN_TEXT_PX` slide pixels high (:func:`enforce_legible`);
    2. layout; 3. the smoke stamp above it (``preset``, default the active preset) and in the PNG's
    ``Description``; 4. the PNG, cropped to its content."""
    enforce_legible(fig)
    try:
        fig.tight_layout()
    except Exception:           # a layout that cannot be tightened (e.g. fixed axes) is kept as drawn
        pass
    enforce_legible(fig)        # the layout may have created tick labels
    stamped = stamp(fig, preset)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        meta = {"Description": SMOKE_STAMP} if stamped else {}
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata=meta)
    return fig


def png_is_stamped(path: Path) -> bool:
    """Whether a PNG saved by :func:`save` carries the smoke stamp in its metadata."""
    from PIL import Image

    with Image.open(path) as im:
        return im.info.get("Description") == SMOKE_STAMP


# ---------------------------------------------------------------- shared figures
def _as_image(x) -> np.ndarray:
    """Tensor image in [-1, 1] (3,H,W), mask (1,H,W) in {0,1}, or uint8 array -> displayable array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.ndim == 3 and x.shape[0] == 1:       # a mask: white = hole
            return x[0].float().numpy()
        return to_uint8(x)
    return np.asarray(x)


def image_grid(rows: Sequence[Sequence], col_titles: Sequence[str] | None = None,
               row_titles: Sequence[str] | None = None, path: Path | None = None, cell: float = 1.9,
               title: str | None = None, empty_text: str | Sequence[str] | None = None):
    """A grid of images: ``rows[i][j]`` is a tensor in [-1, 1], a (1,H,W) mask, or a uint8 array.

    A ``None`` cell is drawn as a grey box saying ``empty_text`` (per column when a list; default
    "not run"), never left blank: a reader sees that a method did not run on that image."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    extra_w = 1.4 if row_titles is not None else 0.0
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols + extra_w, cell * n_rows + 0.7), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if j < len(row) and row[j] is not None:
                img = _as_image(row[j])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None,
                          interpolation="nearest")
            else:
                note = empty_text[j] if isinstance(empty_text, (list, tuple)) else (empty_text or "not run")
                ax.set_facecolor("#eeeeee")
                ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="#555555",
                        wrap=True)
            if i == 0 and col_titles is not None and j < len(col_titles):
                ax.set_title(col_titles[j])
            if j == 0 and row_titles is not None and i < len(row_titles):
                ax.set_ylabel(row_titles[i], rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return save(fig, path)


def loss_curve(history: Sequence[dict], path: Path | None = None, title: str = "training loss",
               key: str = "loss", smooth: int = 10):
    """Plot ``[{"step": s, key: v}, ...]`` with a moving average (drawn on top, thicker)."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    steps = np.array([h["step"] for h in history])
    vals = np.array([h[key] for h in history], dtype=float)
    ax.plot(steps, vals, alpha=0.35, lw=1, label=f"{key} per step")
    if len(vals) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(vals, kernel, mode="valid"), lw=2.5,
                label=f"moving average of {smooth} steps")
    ax.set_xlabel("optimizer step"), ax.set_ylabel(key), ax.set_title(title)
    ax.set_yscale("log" if len(vals) and vals.min() > 0 else "linear")
    ax.legend()
    return save(fig, path)


def hole_histogram(fractions: dict[str, Sequence[float]], path: Path | None = None, bins: int = 20,
                   title: str = "hole-area fraction by mask kind"):
    """Histograms of hole-area fractions, one per mask kind, drawn as outlines so none hides
    another (notebook 01)."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    edges = np.linspace(0, max(0.5, max((max(v) for v in fractions.values() if len(v)), default=0.5)), bins + 1)
    for kind, values in fractions.items():
        ax.hist(values, bins=edges, histtype="step", lw=2.5, label=f"{kind} ({len(values)} masks)")
    ax.set_xlabel("hole area / image area"), ax.set_ylabel("masks"), ax.set_title(title)
    ax.legend()
    return save(fig, path)


def digits_summary(grid_png: Path, table, path: Path | None = None):
    """The toy digits experiment of notebook 02 on one figure: its checkpoint grid (left) and its
    table of digit accuracy and hole PSNR with 95 % intervals (right)."""
    fig, (ax_grid, ax_table) = plt.subplots(1, 2, figsize=(16, 7.5), gridspec_kw={"width_ratios": [1.1, 1]})
    ax_grid.imshow(plt.imread(grid_png))
    ax_grid.set_axis_off()
    cells = [[r["method"], f"{r['accuracy']:.3f} [{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]",
              "-" if r["hole_psnr"] != r["hole_psnr"] or r["hole_psnr"] is None
              else f"{r['hole_psnr']:.1f} [{r['hole_psnr_low']:.1f}, {r['hole_psnr_high']:.1f}]"]
             for r in table.to_dict(orient="records")]
    ax_table.set_axis_off()
    labels = ["completion", "digit accuracy [95 % CI]", "hole PSNR, dB [95 % CI]"]
    tab = ax_table.table(cellText=cells, colLabels=labels, loc="center", cellLoc="left")
    tab.auto_set_font_size(False)
    tab.set_fontsize(12)
    tab.auto_set_column_width([0, 1, 2])
    tab.scale(1, 2.0)
    return save(fig, path)
