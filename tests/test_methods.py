"""The method registry (helpers.study.methods): one record per method, read by the demo, the
evaluation, the tables and the figures. A dummy method (it fills the hole with grey) is registered
here and found everywhere, then removed; nothing is trained, on the smoke test set in a temporary root."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.text import Text

import helpers as H

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

M = H.study.methods


def grey_sampler(cfg, model, device, steps, guidance, prompt):
    """fn(images, masks, seeds, names): grey (0 in [-1, 1]) everywhere; the caller pastes the known pixels back."""
    return lambda x, m, seeds, names: torch.zeros_like(x)


@pytest.fixture
def grey():
    """The dummy method, registered for one test: one record and its functions."""
    record = M.register(M.Method(
        "grey", "Grey fill (test dummy)", "Grey", "05_evaluation", marker="x", linestyle=":",
        status=lambda cfg, P: M.MethodStatus("grey", True, "no weights: fills the hole with grey"),
        load=lambda cfg, P, device, root: None, sample=grey_sampler))
    yield record
    M.unregister("grey")
    assert "grey" not in M.METHODS


@pytest.fixture
def no_learned_metrics(monkeypatch):
    """LPIPS and FID/KID off (their networks are tested in test_metrics.py): pixel scores only."""
    off = lambda name: (lambda *a, **k: (None, H.study.evaluation.metrics.MetricStatus(name, False,
                                                                                       "off in this test")))
    monkeypatch.setattr(H.study.evaluation.evaluate, "load_lpips", off("LPIPS"))
    monkeypatch.setattr(H.study.evaluation.evaluate, "load_inception", off("FID/KID InceptionV3"))


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_the_five_methods_and_their_records():
    assert list(M.METHODS) == ["ddpm_finetuned", "ddpm_repaint", "sd_zeroshot", "sd_lora", "telea"]
    assert M.SHORT_LABELS["sd_lora"] == "SD + LoRA" and M.notebook_of("ddpm_repaint") == "03_ddpm_inpainting"
    assert M.voting() == list(M.METHODS) and M.MARKERS["telea"] == "v" and M.LINESTYLES["ddpm_repaint"] == "--"
    # the PEFT variants: records of the same kind, built from the preset; unknown ids are refused
    cfg = H.load_config("smoke")
    variants = M.variants(cfg)
    assert [v.id for v in variants] == [M.ABLATION_PREFIX + v["name"] for v in cfg.ablation.variants]
    assert all(not v.votes and v.short.endswith(" (PEFT)") for v in variants)
    assert M.short_label("peft_loha_r8") == "loha_r8 (PEFT)" and M.short_label("other") == "other"
    with pytest.raises(ValueError, match="unknown method"):
        M.method_label("other")
    with pytest.raises(ValueError, match="PEFT"):
        M.register(M.Method("peft_x", "x", "x", "04_sd_lora"))


def test_a_registered_method_is_in_the_demo_the_tables_and_a_figure(prepared, grey, no_learned_metrics):
    cfg, _ = prepared
    # 1. the demo: listed, available, runs, and is a vote candidate once its completions are saved
    demo = H.apps.demo.Demo(cfg)
    assert "grey" in demo.models.available() and demo.models.status["grey"].label == "Grey"
    state, editor, prompt, _ = demo.load_test_image(demo.test_names[0])
    masked, gallery, truth, table, msg = demo.inpaint(state, editor, ["Grey"], 2, 7.5, 0, prompt)
    assert [cap.split(" · ")[0] for _, cap in gallery] == ["Grey"] and "| Grey |" in table, msg
    hole = state["test_mask"] > 0.5
    assert np.abs(gallery[0][0][hole].astype(int) - 128).max() <= 1          # grey in the hole
    assert np.array_equal(gallery[0][0][~hole], state["image"][~hole])       # the known pixels kept
    # 2. its test-set predictions, written as every method's are, then the evaluation
    test = H.study.data.dataset.load_test_set(cfg)
    fn = grey_sampler(cfg, None, "cpu", 0, 0.0, "")
    pred = H.study.data.dataset.composite(fn(test["image"], test["mask"], [], []), test["image"], test["mask"])
    H.study.data.predictions.write_predictions(cfg, "grey", test["name"], pred, {"weights": "none (test dummy)"})
    voting = H.apps.demo.Demo(cfg).scheduler                                   # the vote tab: grey vs the photo
    assert voting.pairs == [("grey", H.study.votes.GROUND_TRUTH)] and set(voting.candidates) == set(test["name"])
    ev = H.study.evaluation.evaluate.evaluate_all(cfg, methods=["grey"], save=False)
    assert ev.methods == ["grey"] and ev.summary.loc[0, "label"] == "Grey fill (test dummy)"
    # 3. the tables show its short label; a figure draws it with its marker
    assert list(H.report.tables.format_summary(ev).index) == ["Grey"]
    fig = H.report.figures.plot_vs_hole(ev, "psnr_hole", by="kind")
    try:
        assert "Grey" in _texts(fig)
        assert {line.get_marker() for ax in fig.axes for line in ax.get_lines()} & {"x"}
    finally:
        plt.close(fig)
