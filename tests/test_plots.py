"""Figures designed for a slide (helpers.report.figures): text readable when the figure is fitted into a
1280x720 slide, the smoke stamp on every figure made with the smoke preset, short human labels,
no blank cell where a method did not run. The evaluation's figures are built from hand-made tables."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.text import Text

import helpers as H
from tests.fixtures import reference


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_small_text_is_raised_to_the_slide_minimum():
    fig, ax = plt.subplots(figsize=(16, 9))            # a large figure: shrunk a lot to fit a slide
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set_xlabel("x", fontsize=5), ax.set_ylabel("y", fontsize=5), ax.legend(fontsize=4)
    ax.tick_params(labelsize=3)
    assert reference.smallest_text_px(fig) < H.report.figures.MIN_TEXT_PX
    H.report.figures.save(fig, preset="full")
    assert reference.smallest_text_px(fig) >= H.report.figures.MIN_TEXT_PX - 1e-9
    # the check is relative to the figure's size: at its own rcParams a 16x9 figure is too small
    assert H.report.figures.min_text_pt(fig) > plt.rcParams["font.size"]


def test_default_rcparams_are_readable_on_a_typical_figure():
    fig, ax = plt.subplots(figsize=(10, 5))
    ax.plot([0, 1]), ax.set_xlabel("x"), ax.set_ylabel("y"), ax.set_title("t")
    assert reference.smallest_text_px(fig) >= H.report.figures.MIN_TEXT_PX


def test_smoke_figures_are_stamped_visibly_and_in_the_png(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    H.report.figures.save(fig, tmp_path / "smoke.png", preset="smoke")
    assert H.report.figures.SMOKE_STAMP in _texts(fig) and H.report.figures.png_is_stamped(tmp_path / "smoke.png")
    H.report.figures.save(fig, tmp_path / "again.png", preset="smoke")            # saved twice: one stamp
    assert _texts(fig).count(H.report.figures.SMOKE_STAMP) == 1
    fig2, ax2 = plt.subplots()
    ax2.plot([0, 1])
    H.report.figures.save(fig2, tmp_path / "full.png", preset="full")
    assert H.report.figures.SMOKE_STAMP not in _texts(fig2)
    assert not H.report.figures.png_is_stamped(tmp_path / "full.png")
    fig3, ax3 = plt.subplots()                       # mini: its own stamp, not smoke's
    ax3.plot([0, 1])
    H.report.figures.save(fig3, tmp_path / "mini.png", preset="mini")
    assert H.report.figures.MINI_STAMP in _texts(fig3) and H.report.figures.SMOKE_STAMP not in _texts(fig3)
    assert H.report.figures.png_is_stamped(tmp_path / "mini.png", "mini")
    assert not H.report.figures.png_is_stamped(tmp_path / "mini.png")


def test_the_callers_preset_decides_the_stamp(tmp_root):
    """The preset reaches the figure as an argument: opening a preset's folders (paths) sets nothing."""
    history = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(30)]
    H.study.files.paths(H.load_config("smoke"))
    fig = H.report.figures.loss_curve(history, tmp_root / "l.png", preset="full")
    assert not H.report.figures.png_is_stamped(tmp_root / "l.png") and H.report.figures.SMOKE_STAMP not in _texts(fig)
    fig = H.report.figures.loss_curve(history, tmp_root / "n.png")
    assert not H.report.figures.png_is_stamped(tmp_root / "n.png") and H.report.figures.SMOKE_STAMP not in _texts(fig)
    H.study.files.paths(H.load_config("full"))
    fig = H.report.figures.loss_curve(history, tmp_root / "s.png", preset="smoke")
    assert H.report.figures.png_is_stamped(tmp_root / "s.png") and H.report.figures.SMOKE_STAMP in _texts(fig)


def test_image_grid_marks_cells_that_did_not_run():
    img = torch.zeros(3, 8, 8)
    fig = H.report.figures.image_grid([[img, None, img], [img, img, img]], ["a", "RePaint", "c"], ["row 1", "row 2"],
                        empty_text=[None, "not run", None])
    assert "not run" in _texts(fig)
    assert reference.smallest_text_px(fig) >= H.report.figures.MIN_TEXT_PX - 1e-9


# ---------------------------------------------------------------- the evaluation's figures
def _evaluation() -> H.study.evaluation.evaluate.Evaluation:
    """Five methods; RePaint on 2 of 6 images; SD + LoRA not run; LPIPS available."""
    rng = np.random.default_rng(0)
    kinds, buckets = ["box", "thin", "thick"] * 2, ["0-10%", "10-20%", "20%+"] * 2
    scores = {"ddpm_finetuned": 8, "ddpm_repaint": 7, "sd_zeroshot": 10, "telea": 20}
    rows = []
    for m, base in scores.items():
        for k in range(2 if m == "ddpm_repaint" else 6):
            v = base + rng.normal()
            rows.append({"method": m, "label": H.study.methods.METHODS[m], "name": f"i{k}", "kind": kinds[k],
                         "bucket": buckets[k], "hole_fraction": 0.1 * k, "psnr_hole": v, "psnr": v + 3,
                         "ssim_hole": v / 40, "ssim": v / 30, "lpips": 1 / v})
    per_image = pd.DataFrame(rows)
    summary = []
    for m in H.study.methods.METHODS:
        sub = per_image[per_image["method"] == m]
        if sub.empty:
            summary.append({"method": m, "label": H.study.methods.METHODS[m], "status": "missing", "n": 0,
                            "note": "no predictions"})
            continue
        row = {"method": m, "label": H.study.methods.METHODS[m], "status": "ok" if len(sub) == 6 else "partial",
               "n": len(sub)}
        for metric in H.study.evaluation.evaluate.PER_IMAGE:
            values = sub[metric]
            row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = values.mean(), values.min(), values.max()
        summary.append(row)

    def grouped(by):
        out = []
        for (m, g), sub in per_image.groupby(["method", by]):
            for metric in H.study.evaluation.evaluate.PER_IMAGE:
                v = sub[metric]
                out.append({"method": m, "label": H.study.methods.METHODS[m],
                            "group": g, "n": len(sub), "metric": metric,
                            "mean": v.mean(), "lo": v.min(), "hi": v.max()})
        return pd.DataFrame(out)

    return H.study.evaluation.evaluate.Evaluation(per_image, pd.DataFrame(summary), grouped("bucket"), grouped("kind"),
                                       pd.DataFrame(),
                                       {"hole_buckets": [0.0, 0.1, 0.2, 1.0], "n_test": 6,
                                        "bootstrap": {"samples": 50, "seed": 0},
                                        "missing": [{"method": "sd_lora", "label": H.study.methods.METHODS["sd_lora"],
                                                     "reason": "x"}]})


@pytest.mark.parametrize("make", [
    lambda ev: H.report.figures.plot_bars(ev, preset="smoke"),
    lambda ev: H.report.figures.plot_vs_hole(ev, "psnr_hole", preset="smoke"),
    lambda ev: H.report.figures.plot_vs_hole(ev, "lpips", by="kind", preset="smoke"),
], ids=["bars", "vs_hole", "vs_kind"])
def test_evaluation_figures_are_slide_ready(make, tmp_root):
    fig = make(_evaluation())
    texts = _texts(fig)
    assert reference.smallest_text_px(fig) >= H.report.figures.MIN_TEXT_PX - 1e-9
    assert H.report.figures.SMOKE_STAMP in texts
    # human labels, never the internal keys
    assert not any(k in t for t in texts for k in H.study.methods.METHODS), texts
    assert any(H.study.methods.SHORT_LABELS["telea"] in t for t in texts)
    # every axis with data is labelled; no rotated tick labels
    for ax in fig.axes:
        if ax.has_data():
            assert ax.get_xlabel() or ax.get_ylabel()
            assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())
    assert len([ax for ax in fig.axes if ax.has_data()]) <= 3          # no six-panel rows


def test_bars_say_which_method_did_not_run():
    fig = H.report.figures.plot_bars(_evaluation(), preset="full")
    assert "not run" in _texts(fig) and H.report.figures.SMOKE_STAMP not in _texts(fig)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "RePaint  (n=2)" in labels and "SD + LoRA  (n=0)" in labels


def test_lines_by_hole_size_do_not_hide_each_other():
    """Two methods with identical scores: their markers are drawn side by side, not on top."""
    ev = _evaluation()
    same = ev.by_bucket[ev.by_bucket["method"] == "sd_zeroshot"].assign(method="ddpm_finetuned")
    ev.by_bucket = pd.concat([ev.by_bucket[ev.by_bucket["method"] != "ddpm_finetuned"], same])
    fig = H.report.figures.plot_vs_hole(ev, "psnr_hole")
    ax = fig.axes[0]
    xs = {c.get_label(): tuple(np.round(c.lines[0].get_xdata(), 3)) for c in ax.containers}
    assert xs["DDPM"] != xs["SD zero-shot"]




def _title_boxes(fig):
    renderer = fig.canvas.get_renderer()
    return [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.title.get_text().strip()]


@pytest.mark.parametrize("titles", [
    ["image", "mask (1 = hole)", "masked input"],                                   # 01_test_samples
    ["masked input", "RePaint (no training)", "fine-tuned 7-ch", "ground truth"],   # 03_repaint_vs_finetuned
    ["masked input", "SD zero-shot", "SD + LoRA", "ground truth"],                  # 04_predictions
    ["masked input", "mask (white = hole)", "prediction", "ground truth"],          # 03_test_samples
    ["image\nlatent ch 0", "mask\nlatent ch 1", "masked image\nlatent ch 2", "m_down\nlatent ch 3"],   # 04_pieces
    ["masked input", "fine-tuned 7-ch, DDIM 20 steps", "a_very_long_method_name_without_spaces", "truth"],
])
@pytest.mark.parametrize("n_rows", [1, 3, 6])
def test_grid_column_titles_never_overlap_at_the_exported_size(tmp_path, titles, n_rows):
    """Column titles are wrapped to their column: rendered at the saved size, no two title boxes
    intersect, and each stays within its column pitch."""
    img = torch.zeros(3, 16, 16)
    rows = [[img] * len(titles) for _ in range(n_rows)]     # 6 rows: a tall figure, shrunk on the slide, larger fonts
    fig = H.report.figures.image_grid(rows, titles, [f"thin {i}%" for i in range(n_rows)], path=tmp_path / "g.png")
    fig.canvas.draw()
    boxes = _title_boxes(fig)
    assert len(boxes) == len(titles)
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 < b.x0, (a, b)            # left to right, a gap between neighbours
    shown = [ax.title.get_text() for ax in fig.axes if ax.title.get_text().strip()]
    for original, text in zip(titles, shown):  # lines break between words; ordinary words stay whole
        assert [w for w in original.split() if len(w) <= 12] == [w for w in text.split() if w in original.split()
                                                                 and len(w) <= 12], (original, text)
    assert reference.smallest_text_px(fig) >= H.report.figures.MIN_TEXT_PX - 1e-9


def test_figures_of_data_or_schedules_carry_no_smoke_stamp(tmp_path):
    """Only figures whose content depends on the trained models are stamped (issue 21)."""
    H.report.figures.schedule_figure(50, path=tmp_path / "s.png")
    H.report.figures.hole_histogram({"box": [0.1, 0.2]}, path=tmp_path / "h.png")
    img = torch.zeros(3, 8, 8)
    H.report.figures.image_grid([[img, img]], ["a", "b"], path=tmp_path / "data.png", smoke_stamp=False)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    H.report.figures.save(fig, tmp_path / "plain.png", preset="smoke", smoke_stamp=False)
    assert not any(H.report.figures.png_is_stamped(tmp_path / f) for f in ("s.png", "h.png", "data.png", "plain.png"))
    fig2, ax2 = plt.subplots()
    ax2.plot([0, 1])
    H.report.figures.save(fig2, tmp_path / "model.png", preset="smoke")            # the default: stamped
    assert H.report.figures.png_is_stamped(tmp_path / "model.png")
