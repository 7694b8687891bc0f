"""Figures shared by several notebooks: image grids and loss curves, and :func:`save`, the one door
every figure of the course goes through on its way to a PNG and to a slide.

Every figure is designed for a 1280x720 slide: it is shown fitted into the slide's content area
(:data:`FIT_PX`), and :func:`save` makes sure that no text is then smaller than :data:`MIN_TEXT_PX`
pixels, lays the figure out, and, for the smoke preset, stamps a figure whose content depends on
the (there tiny, untrained) models "smoke preset: pipeline check, not a result" (visibly, and in
the PNG's metadata) so that a figure shown alone cannot pass for a result; figures of data,
schedules or exact computations pass ``smoke_stamp=False``. The preset reaches every figure that
may be stamped as an argument from its caller (``preset=cfg.preset``; :func:`qualitative_grid`
reads it from its ``cfg``); without one nothing is stamped.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from helpers.course.diffusion import alpha_bar, make_betas
from helpers.report.tables import SHORT, metric_name
from helpers.study.config import Config
from helpers.study.data.dataset import composite, load_test_set, masked_image
from helpers.study.data.predictions import read_predictions
from helpers.study.evaluation.evaluate import (
    HIGHER_IS_BETTER,
    LABELS,
    PER_IMAGE,
    Evaluation,
    bucket_labels,
    find_predictions,
)
from helpers.study.files import to_uint8
from helpers.study.methods import LINESTYLES, MARKERS, METHODS, SHORT_LABELS, is_variant, short_label

log = logging.getLogger(__name__)


def schedule_figure(T: int = 1000, path: Path | None = None):
    """beta_t and alpha_bar_t of the linear and cosine schedules (notebook 02): no model, no stamp."""
    import matplotlib.pyplot as plt

    pass  # REMOVED

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for name in ("linear", "cosine"):
        b = make_betas(name, T)
        ab = alpha_bar(b)
        axes[0].plot(b, label=name)
        axes[1].plot(ab, label=name)
        axes[2].plot((ab / (1 - ab)).log10(), label=name)
    for ax, title in zip(axes, (r"$\beta_t$", r"$\bar\alpha_t$",
                                r"$\log_{10}$ SNR $= \log_{10}[\bar\alpha_t / (1 - \bar\alpha_t)]$")):
        ax.set_title(title), ax.set_xlabel("timestep t"), ax.set_ylabel(title), ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    return save(fig, path, smoke_stamp=False)


def toy_figure(samples: dict, weights, means, stds, path: Path | None = None, labels: Sequence[str] | None = None):
    """Histograms of toy samples against the data density (notebook 02): exact noise predictor, no
    trained model, so no smoke stamp."""
    import matplotlib.pyplot as plt
    import numpy as np

    pass  # REMOVED

    labels = [k for k in samples if k != "data"] if labels is None else list(labels)
    grid = np.linspace(-1.5, 1.5, 400)
    dens = sum(w * np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))
               for w, m, s in zip(weights, means, stds))
    fig, axes = plt.subplots(1, len(labels), figsize=(2.6 * len(labels), 2.6), sharey=True, squeeze=False)
    for ax, lab in zip(axes[0], labels):
        ax.hist(samples[lab].numpy(), bins=120, range=(-1.5, 1.5), density=True, alpha=0.6)
        ax.plot(grid, dens, "k", lw=1)
        ax.set_title(lab), ax.set_xlabel("x")
    axes[0][0].set_ylabel("density")
    return save(fig, path, smoke_stamp=False)


matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "inline")) else None


# ---------------------------------------------------------------- designed for a slide
SLIDE_PX = (1280, 720)


FIT_PX = (1200, 560)         # what a figure gets on a slide below its title: it is scaled to fit in here


MIN_TEXT_PX = 14             # smallest text height on the slide, in pixels (slide body text is ~24 px)


SMOKE_STAMP = "smoke preset: pipeline check, not a result"
MINI_STAMP = "mini: the study at toy scale on digits"
# the stamp above every figure whose content depends on a preset's trained models: what its numbers are
PRESET_STAMPS = {"smoke": (SMOKE_STAMP, "#a00000", "#fff3f3"), "mini": (MINI_STAMP, "#174a7c", "#eef4fb")}


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


def text_artists(fig) -> list:
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
    for t in text_artists(fig):
        if t.get_fontsize() < floor:
            t.set_fontsize(floor)


def stamp(fig, preset: str | None = None) -> bool:
    """Write the preset's stamp (:data:`PRESET_STAMPS`: smoke's "pipeline check", mini's "toy scale")
    above the figure; other presets (the study's) carry none."""
    if preset not in PRESET_STAMPS:
        return False
    text, colour, fill = PRESET_STAMPS[preset]
    if not any(t.get_text() == text for t in fig.texts):
        fig.text(0.5, 1.0, text, ha="center", va="bottom", color=colour, fontweight="bold",
                 fontsize=max(13.0, min_text_pt(fig)), gid=f"{preset}-stamp",
                 bbox={"boxstyle": "round,pad=0.3", "fc": fill, "ec": colour})
    return True


def save(fig, path: Path | None = None, preset: str | None = None, smoke_stamp: bool = True):
    """Finish a figure for a slide and save it (PNG, 150 dpi) when a path is given; return it for display.

    1. every text at least :data:`MIN_TEXT_PX` slide pixels high (:func:`enforce_legible`);
    2. layout; 3. the smoke stamp above it (when ``preset``, the caller's preset, is smoke) and in the PNG's
    ``Description``; 4. the PNG, cropped to its content.

    ``smoke_stamp``: whether the figure's content depends on the trained (smoke: tiny, untrained)
    models. A figure that shows only data, a schedule or an exact computation (notebook 01's masks,
    notebook 02's schedules, noised images, VLB weights and the mixture toy) passes ``False``: it is
    as true in the smoke preset as in ``full`` and carries no stamp."""
    enforce_legible(fig)
    try:
        fig.tight_layout()
    except Exception:           # a layout that cannot be tightened (e.g. fixed axes) is kept as drawn
        pass
    enforce_legible(fig)        # the layout may have created tick labels
    stamped = stamp(fig, preset) if smoke_stamp else False
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        meta = {"Description": PRESET_STAMPS[preset][0]} if stamped else {}
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata=meta)
    return fig


def png_is_stamped(path: Path, preset: str = "smoke") -> bool:
    """Whether a PNG saved by :func:`save` carries ``preset``'s stamp in its metadata."""
    from PIL import Image

    with Image.open(path) as im:
        return im.info.get("Description") == PRESET_STAMPS[preset][0]


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
               title: str | None = None, empty_text: str | Sequence[str] | None = None, smoke_stamp: bool = True,
               preset: str | None = None):
    """A grid of images: ``rows[i][j]`` is a tensor in [-1, 1], a (1,H,W) mask, or a uint8 array.

    A ``None`` cell is drawn as a grey box saying ``empty_text`` (per column when a list; default
    "not run"), never left blank: a reader sees that a method did not run on that image. Column
    titles are wrapped onto several lines where they are wider than their column
    (:func:`fit_column_titles`), so neighbours never overlap. ``smoke_stamp``, ``preset``: see :func:`save`."""
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
    fit_column_titles(fig, [axes[0][j] for j in range(n_cols)])
    return save(fig, path, preset, smoke_stamp=smoke_stamp)


def fit_column_titles(fig, axes_row: Sequence, gap_px: float = 8.0, rounds: int = 3) -> None:
    """Wrap each axes title until it is no wider than the column pitch (the distance between
    neighbouring axes) minus ``gap_px``, at the font size it will be saved with (the slide minimum
    applied first): centred titles then never touch. Lines break between words; a word is split only
    when it alone is wider than the column. The layout is redone after each round, since taller
    titles make the images, and so the columns, narrower."""
    import textwrap

    enforce_legible(fig)
    for _ in range(rounds):
        try:
            fig.tight_layout()
        except Exception:
            pass
        renderer = fig.canvas.get_renderer()
        boxes = [ax.get_window_extent(renderer) for ax in axes_row]
        pitch = min((b.x0 - a.x0 for a, b in zip(boxes, boxes[1:])), default=boxes[0].width if boxes else 0)
        limit = pitch - gap_px
        changed = False
        for ax in axes_row:
            t = ax.title
            if not t.get_text().strip() or t.get_window_extent(renderer).width <= limit:
                continue
            flat = " ".join(t.get_text().split())
            for split_words in (False, True):
                chars = len(flat)
                while t.get_window_extent(renderer).width > limit and chars > 3:
                    chars -= 1
                    t.set_text(textwrap.fill(flat, chars, break_long_words=split_words, break_on_hyphens=False))
                if t.get_window_extent(renderer).width <= limit:
                    break
            changed = True
        if not changed:
            break


def loss_curve(history: Sequence[dict], path: Path | None = None, title: str = "training loss",
               key: str = "loss", smooth: int = 10, smoke_stamp: bool = True, preset: str | None = None):
    """Plot ``[{"step": s, key: v}, ...]`` with a moving average (drawn on top, thicker).
    ``smoke_stamp``, ``preset``: see :func:`save`."""
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
    return save(fig, path, preset, smoke_stamp=smoke_stamp)


def hole_histogram(fractions: dict[str, Sequence[float]], path: Path | None = None, bins: int = 20,
                   title: str = "hole-area fraction by mask kind"):
    """Histograms of hole-area fractions, one per mask kind, drawn as outlines so none hides
    another (notebook 01): the mask generators only, no model, no smoke stamp."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    edges = np.linspace(0, max(0.5, max((max(v) for v in fractions.values() if len(v)), default=0.5)), bins + 1)
    for kind, values in fractions.items():
        ax.hist(values, bins=edges, histtype="step", lw=2.5, label=f"{kind} ({len(values)} masks)")
    ax.set_xlabel("hole area / image area"), ax.set_ylabel("masks"), ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)   # beside the axes, off the bars
    return save(fig, path, smoke_stamp=False)



# ---------------------------------------------------------------- the evaluation's figures
# Designed for a slide (helpers.report.figures.save checks the text size and stamps smoke figures): one
# message per figure, the short labels, markers and line styles of the method records (helpers.study.methods),
# every axis labelled; a method's colour follows its place in the registry.
def _colors(methods: Sequence[str]) -> dict:
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i) for i, m in enumerate(METHODS) if m in methods}


def _no_scores(path, preset: str | None = None, message: str = "no scores to plot"):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off"), ax.text(0.5, 0.5, message, ha="center", va="center")
    return save(fig, path, preset)


def _better(metric: str) -> str:
    return "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"


def plot_bars(ev: Evaluation, metrics: Sequence[str] = ("psnr_hole", "ssim_hole", "lpips"),
              path: Path | None = None, title: str | None = None, preset: str | None = None):
    """Message: how well each method fills the hole. One panel per per-image metric (at most three),
    one horizontal bar per method (short label and n on the y axis, never rotated): the mean over the
    images the method was scored on, with its bootstrap 95 % CI. A method that did not run is listed
    with "not run" instead of a bar. Metrics nobody could compute are left out; FID and KID live in
    the tables (set-level numbers with their n)."""
    import matplotlib.pyplot as plt

    summ = ev.summary
    ok = summ[summ["status"] != "missing"]
    metrics = [m for m in metrics if m in PER_IMAGE and m in ok and not ok[m].isna().all()][:3]
    if not metrics:
        return _no_scores(path, preset)
    order = [m for m in METHODS if m in set(summ["method"])][::-1]     # first method at the top
    rows = summ.set_index("method").loc[order]
    colors = _colors(order)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1.6, 0.75 * len(order) + 1.8),
                             sharey=True, squeeze=False)
    y = np.arange(len(order))
    for ax, metric in zip(axes[0], metrics):
        for yi, m in zip(y, order):
            r = rows.loc[m]
            if r["status"] == "missing" or pd.isna(r.get(metric)):
                ax.text(0.02, yi, "not run" if r["status"] == "missing" else "n/a", va="center",
                        transform=ax.get_yaxis_transform(), color="#666666")
                continue
            v = float(r[metric])
            err = [[v - float(r[f"{metric}_lo"])], [float(r[f"{metric}_hi"]) - v]]
            ax.barh(yi, v, xerr=err, capsize=4, color=colors[m], height=0.6)
        ax.set_xlabel(f"{LABELS[metric]}\n({_better(metric)})")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, [f"{SHORT_LABELS[m]}  (n={int(rows.loc[m, 'n'])})" for m in order])
    fig.suptitle(title or "Hole quality per method: mean over its test images, 95 % CI")
    return save(fig, path, preset)


def plot_digit_accuracy(acc, path: Path | None = None, preset: str | None = None):
    """Message: is the completion still the same digit? One horizontal bar per row of
    :mod:`helpers.study.evaluation.digit_accuracy` (the ground-truth ceiling and the hole-left-grey floor
    in grey, each method in its colour), the accuracy with its Wilson 95 % interval and n on the y axis."""
    import matplotlib.pyplot as plt

    summ = acc.summary.iloc[::-1]                       # first row at the top
    methods = [m for m in summ["method"] if m in METHODS or is_variant(m)]
    colors = _colors(methods)       # the study's methods in their colours; variants one colour, references grey
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(summ) + 1.6))
    y = np.arange(len(summ))
    for yi, (_, r) in zip(y, summ.iterrows()):
        v = float(r["accuracy"])
        err = [[v - float(r["accuracy_lo"])], [float(r["accuracy_hi"]) - v]]
        color = colors.get(r["method"], "#4c72b0" if r["method"] in methods else "#9a9a9a")
        ax.barh(yi, v, xerr=err, capsize=4, color=color, height=0.6)
    names = [short_label(r["method"]) if r["method"] in methods else r["label"] for _, r in summ.iterrows()]
    ax.set_yticks(y, [f"{name}  (n={int(n)})" for name, n in zip(names, summ["n"])])
    ax.set_xlim(0, 1)
    ax.set_xlabel("digit accuracy of a classifier trained on clean digits (higher is better)")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Is it still the same digit? Accuracy per method, Wilson 95 % interval")
    return save(fig, path, preset)


def plot_vs_hole(ev: Evaluation, metric: str = "psnr_hole", path: Path | None = None, by: str = "bucket",
                 preset: str | None = None):
    """Message: how one metric changes with the hole's size (``by="bucket"``) or the mask kind
    (``by="kind"``). One line (buckets) or one set of markers (kinds) per method with its 95 % CI
    as error bars; methods are drawn side by side within a group so none hides another; the number
    of images of each group is on the x axis."""
    import matplotlib.pyplot as plt

    table = ev.by_bucket if by == "bucket" else ev.by_kind
    if isinstance(metric, (list, tuple)):          # older call style: the first metric only
        metric = metric[0]
    t_all = table[table["metric"] == metric] if not table.empty else table
    if t_all.empty or t_all["mean"].isna().all():
        return _no_scores(path, preset)
    groups = (bucket_labels(ev.info["hole_buckets"]) if by == "bucket" else list(dict.fromkeys(t_all["group"])))
    methods = [m for m in METHODS if m in set(t_all["method"])]
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.6 / max(1, len(methods))
    for k, method in enumerate(methods):
        t = t_all[t_all["method"] == method].set_index("group")
        t = t.reindex([g for g in groups if g in t.index]).dropna(subset=["mean"])
        if t.empty:
            continue
        x = np.array([groups.index(g) for g in t.index]) + (k - (len(methods) - 1) / 2) * width
        mean = t["mean"].astype(float).to_numpy()
        err = np.vstack([mean - t["lo"].astype(float).to_numpy(), t["hi"].astype(float).to_numpy() - mean])
        ax.errorbar(x, mean, yerr=err, color=colors[method], marker=MARKERS[method], ms=8, capsize=3, lw=2,
                    ls=LINESTYLES[method] if by == "bucket" else "none", label=SHORT_LABELS[method])
    n_per_group = ev.per_image.drop_duplicates("name").groupby(by).size() if not ev.per_image.empty else {}
    ax.set_xticks(range(len(groups)), [f"{g}\n({int(n_per_group.get(g, 0))} images)" for g in groups])
    ax.set_xlabel("hole area (share of the image)" if by == "bucket" else "mask kind")
    ax.set_ylabel(f"{LABELS[metric]} ({_better(metric)})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    what = "the hole grows" if by == "bucket" else "the mask kind changes"
    ax.set_title(f"{metric_name(metric)} as {what}: mean and 95 % CI per group")
    return save(fig, path, preset)



def qualitative_grid(cfg: Config, names: Sequence[str], path: Path | None = None, title: str | None = None,
                     root: Path | None = None, ev: Evaluation | None = None, metric: str = "psnr_hole"):
    """Rows = test images; columns = masked input | each method (short label) | ground truth. A method
    without a prediction for an image shows a grey "not run" cell, never a blank one."""
    test = load_test_set(cfg, root)
    row_of = {n: i for i, n in enumerate(test["name"])}
    names = [n for n in names if n in row_of]
    cols = list(METHODS)
    have = {m: find_predictions(cfg, m, names, root)["names"] for m in cols}
    titles = ["masked input"] + [SHORT_LABELS[m] for m in cols] + ["ground truth"]
    empty = [None] + [("not run" if not have[m] else "not run\non this image") for m in cols] + [None]
    rows, row_titles = [], []
    for n in names:
        i = row_of[n]
        x, m = test["image"][i], test["mask"][i]
        row = [masked_image(x, m)]
        for method in cols:
            if n in have[method]:
                p, _ = read_predictions(cfg, method, [n], root)
                row.append(composite(p[0], x, m))
            else:
                row.append(None)
        rows.append(row + [x])
        label = f"{test['kind'][i]}\n{test['hole_fraction'][i]:.0%} hole"
        if ev is not None and not ev.per_image.empty:
            s = ev.per_image[ev.per_image["name"] == n][metric]
            if len(s):
                label += f"\nmean {SHORT[metric]} {s.mean():.3g}"
        row_titles.append(label)
    return image_grid(rows, titles, row_titles, path=path, title=title, empty_text=empty, preset=cfg.preset)


def peft_tradeoff(table, metric: str = "psnr_hole", path: Path | None = None, label: str = "hole PSNR (dB)",
                  higher_is_better: bool = True, preset: str | None = None):
    """Message: what each PEFT variant buys per trainable parameter (the ablation of notebook 04).
    One point per scored variant at (trainable parameters, log scale; mean ``metric``) with its
    bootstrap 95 % CI; the reference method (``variant`` starting with "reference") as a dashed line
    with its CI as a band; variants without scores named above the axes with their status. Variants of
    about the same size are dodged sideways, their labels in a column with leader lines."""
    import pandas as pd

    fig, ax = plt.subplots(figsize=(9, 4.8))
    scored = table[table["status"].eq("trained") & table.get(metric, pd.Series(dtype=float)).notna()
                   & table["trainable_params"].notna()] if metric in table else table.iloc[0:0]
    ref = scored[scored["variant"].astype(str).str.startswith("reference")]
    pts = scored.drop(ref.index)
    notes = []
    for _, r in ref.iterrows():
        ax.axhline(r[metric], ls="--", color="#444444", lw=1.5)
        ax.axhspan(r[f"{metric}_lo"], r[f"{metric}_hi"], color="#999999", alpha=0.2)
        notes.append(f"dashed: {r['variant']}, {int(r['trainable_params']):,} params, its CI shaded")
    # variants within 0.2 decades of each other form a cluster: their points are dodged sideways and
    # their labels fanned out with leader lines, so that none is drawn over another
    clusters = []
    for _, r in pts.sort_values("trainable_params").iterrows():
        x = float(r["trainable_params"])
        if clusters and np.log10(x) - np.log10(float(clusters[-1][0]["trainable_params"])) < 0.2:
            clusters[-1].append(r)
        else:
            clusters.append([r])
    for cluster in clusters:
        n = len(cluster)
        xs = [float(r["trainable_params"]) * 10 ** (0.04 * (k - (n - 1) / 2)) for k, r in enumerate(cluster)]
        label_x = max(xs) * 10 ** 0.12                 # the cluster's labels in one column right of it
        by_height = sorted(range(n), key=lambda k: -float(cluster[k][metric]))
        for k, (x, r) in enumerate(zip(xs, cluster)):
            err = [[r[metric] - r[f"{metric}_lo"]], [r[f"{metric}_hi"] - r[metric]]]
            ax.errorbar([x], [r[metric]], yerr=err, fmt="o", capsize=4, ms=7)
            if n == 1:
                ax.annotate(r["variant"], (x, r[metric]), textcoords="offset points", xytext=(6, 6))
            else:                                      # highest point, highest label; a leader line to each
                ax.annotate(r["variant"], (x, r[metric]), textcoords=("data", "offset points"), va="center",
                            xytext=(label_x, 24 * ((n - 1) / 2 - by_height.index(k))),
                            arrowprops=dict(arrowstyle="-", color="#888888", lw=0.8))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{label}\n({'higher' if higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    missing = table[~table.index.isin(scored.index)]
    if len(missing):
        notes.append("no scores: " + "; ".join(f"{r['variant']} ({r['status']})" for _, r in missing.iterrows()))
    if notes:
        import textwrap
        ax.set_title("\n".join(textwrap.fill(n, 90) for n in notes), loc="left", color="#555555")
    sizes = sorted({int(v) for v in scored["n"].dropna()}) if "n" in scored else []
    on = f"the same {sizes[0]} test images" if len(sizes) == 1 else "the test images"
    fig.suptitle(f"Quality against trainable parameters: mean over {on}, 95 % CI")
    return save(fig, path, preset)


def digits_curve(table, path: Path | None = None, clock: str = "cpu"):
    """Message: when the digits DDPM of notebook 02 passes the classical baseline. Digit accuracy and
    hole PSNR of each checkpoint against the training budget in ``clock``'s unit (digits.clock: steps, or
    CPU / wall seconds), with their 95 % intervals; the rows without a training time (ground truth, grey
    fill, Telea) as horizontal lines, their intervals shaded."""
    trained = table["seconds"].notna()                    # the DDPM checkpoints; the others are baselines
    ddpm, refs = table[trained], table[~trained].reset_index(drop=True)
    x, x_label = {"steps": ("steps", "training steps"), "wall": ("seconds", "training seconds (wall clock)")}.get(
        clock, ("seconds", "training CPU-seconds"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = ["-", ":", "--", "-."]
    for ax, key, label in ((axes[0], "accuracy", "digit accuracy"), (axes[1], "hole_psnr", "hole PSNR (dB)")):
        err = np.stack([ddpm[key] - ddpm[f"{key}_low"], ddpm[f"{key}_high"] - ddpm[key]]).astype(float)
        ax.errorbar(ddpm[x], ddpm[key], yerr=err, marker="o", capsize=4, lw=2, color="tab:blue",
                    label="DDPM (from scratch)")
        for i, r in refs[refs[key].notna()].iterrows():     # ground truth has no hole PSNR
            color = f"C{i + 1}"
            ax.axhline(r[key], ls=styles[i % len(styles)], color=color, lw=1.5, label=r["method"])
            if pd.notna(r.get(f"{key}_low")):
                ax.axhspan(r[f"{key}_low"], r[f"{key}_high"], color=color, alpha=0.12, lw=0)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{label} (higher is better)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()     # the accuracy panel has every row
    axes[1].legend(handles, labels, loc="lower right", fontsize=10)   # below a learning curve: empty
    fig.suptitle("Digits DDPM against the baselines as it trains: mean over the test digits, 95 % CI")
    return save(fig, path, smoke_stamp=False)     # a real result in every preset (not a pipeline check)


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
    return save(fig, path, smoke_stamp=False)     # a real result in every preset (not a pipeline check)
