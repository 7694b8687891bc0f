"""The evaluation protocol (helpers.evaluate) on the smoke test set in a temporary root.

Stand-in predictions are written here (never into the repository's reports/): a noisy
"fine-tuned DDPM" that also changes known pixels (the evaluator must composite them back), a
"RePaint" on a subset of the images, the real Telea baseline; both SD methods are left missing.
FID/KID use a small stand-in feature extractor so the test stays fast: the real InceptionV3 and
the FID/KID formulas are tested in test_metrics.py.
"""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import helpers as H
from helpers import evaluate as E
from helpers import findings as FD
from helpers import metrics as M


@pytest.fixture
def fake_inception(monkeypatch):
    status = M.MetricStatus("FID/KID InceptionV3", True, implementation="TEST STAND-IN: 4x4 average-pooled pixels",
                            weights="none", details={"resize": "none", "feature_dim": 48})

    def load(extra_dirs=(), device="cpu", backbone="auto"):
        return M.InceptionFeatures(lambda x: F.adaptive_avg_pool2d(x, 4).flatten(1), status, torch.device("cpu")), status

    monkeypatch.setattr(M, "load_inception", load)
    return status


@pytest.fixture
def no_lpips_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))


@pytest.fixture
def scored(prepared, fake_inception, no_lpips_weights):
    """Stand-in predictions for three methods, then the whole protocol: (cfg, test, evaluation)."""
    cfg, _ = prepared
    cfg.eval.bootstrap_samples = 100
    cfg.eval.kid_subsets = 5
    test = H.data.load_test_set(cfg)
    x, names = test["image"], test["name"]
    g = torch.Generator().manual_seed(0)
    # not composited on purpose: noise on known pixels too
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    H.data.write_predictions(cfg, "ddpm_finetuned", names, noisy, {"weights": "TEST stand-in", "sample_seconds_per_image": 0.5,
                                                                   "images_per_s": 2.0, "trainable_params": 123})
    H.data.write_predictions(cfg, "ddpm_repaint", names[:4], x[:4].neg(), {"weights": "TEST stand-in"})
    E.run_telea(cfg)
    return cfg, test, E.evaluate_all(cfg), noisy


def test_run_telea_fills_holes_keeps_context_and_records_meta(prepared):
    cfg, _ = prepared
    out = E.run_telea(cfg)
    test = H.data.load_test_set(cfg)
    pred, meta = H.data.read_predictions(cfg, "telea", test["name"])
    known = (1 - test["mask"]).bool().expand_as(pred)
    assert torch.allclose(pred[known], test["image"][known], atol=1 / 127.5)
    hole = test["mask"].bool().expand_as(pred)
    assert (pred[hole] != 0).float().mean() > 0.5           # filled, not left at the masked value
    assert "Telea" in meta["weights"] and meta["trainable_params"] == 0 and meta["sample_seconds_per_image"] > 0
    stamp = (out / f"{test['name'][0]}.png").stat().st_mtime_ns
    E.run_telea(cfg)                                         # already there: not recomputed
    assert (out / f"{test['name'][0]}.png").stat().st_mtime_ns == stamp


def test_evaluate_all_scores_every_method_with_predictions(scored):
    cfg, test, ev, noisy = scored
    n = len(test["name"])
    summ = ev.summary.set_index("method")
    # every method has a row; missing ones say so and why
    assert list(summ.index) == list(H.data.METHODS)
    assert summ.loc["ddpm_finetuned", "status"] == "ok" and summ.loc["ddpm_finetuned", "n"] == n
    assert summ.loc["ddpm_repaint", "status"] == "partial" and summ.loc["ddpm_repaint", "n"] == 4
    assert "4 of" in summ.loc["ddpm_repaint", "note"]
    assert {m["method"] for m in ev.missing} == {"sd_zeroshot", "sd_lora"}
    for m in ev.missing:
        assert "run notebook 04_sd_lora" in m["reason"]
    # per-image rows: exactly the images each method has
    counts = ev.per_image.groupby("method").size()
    assert counts["ddpm_finetuned"] == n and counts["ddpm_repaint"] == 4 and counts["telea"] == n
    # known pixels were composited back before scoring
    fixed = H.data.composite(noisy, test["image"], test["mask"])
    expected = M.psnr(fixed, test["image"], test["mask"]).numpy()
    got = ev.per_image[ev.per_image["method"] == "ddpm_finetuned"]["psnr_hole"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert ev.info["methods"]["ddpm_finetuned"]["known_pixels_max_change_before_composite"] > 0
    assert ev.info["methods"]["telea"]["known_pixels_max_change_before_composite"] == 0
    # CIs bracket the means; FID/KID computed on the n images each method has
    for m in ("ddpm_finetuned", "telea"):
        for metric in ("psnr", "ssim", "psnr_hole", "ssim_hole"):
            assert summ.loc[m, f"{metric}_lo"] <= summ.loc[m, metric] <= summ.loc[m, f"{metric}_hi"]
    assert summ.loc["ddpm_repaint", "fid_n"] == 4 and summ.loc["telea", "fid_n"] == n
    assert math.isfinite(summ.loc["telea", "fid"]) and summ.loc["ddpm_repaint", "kid_subset_size"] == 4
    # hole PSNR below whole-image PSNR (the hole holds all the error)
    assert (ev.per_image["psnr_hole"] <= ev.per_image["psnr"] + 1e-9).all()


def test_missing_lpips_weights_give_the_stated_message_not_a_number(scored):
    _, _, ev, _ = scored
    assert ev.info["lpips"]["available"] is False
    assert "alexnet-owt-7be5be79.pth" in ev.info["lpips"]["reason"]
    assert ev.per_image["lpips"].isna().all()
    table = FD.format_summary(ev)
    assert (table.loc[H.data.SHORT_LABELS["telea"], "LPIPS"] == "not computed")
    # the slides say why (the reason's statement), not where to put the file (the README does)
    caption = FD.table_caption(ev)
    assert "not computed" in caption and FD.first_sentence(ev.info["lpips"]["reason"]) in caption
    assert "alexnet-owt-7be5be79.pth" not in caption


def test_missing_method_is_reported_not_dropped(scored):
    cfg, _, ev, _ = scored
    table = FD.format_summary(ev)
    assert table.loc[H.data.SHORT_LABELS["sd_lora"], "PSNR (dB)"] == "missing"
    overview = FD.methods_overview(ev).loc[H.data.SHORT_LABELS["sd_lora"]]
    assert overview["status"] == "missing" and "no prediction folder" in overview["note"]
    text = FD.conclusions(ev, cfg)
    assert "SD 1.5 inpainting + LoRA** was not scored" in text
    comp = FD.comparison_table(ev, cfg.preset)
    assert comp.loc[H.data.METHODS["sd_lora"]].iloc[0]["protocol"].startswith("missing")


def test_grouped_tables_and_files(scored):
    cfg, test, ev, _ = scored
    P = H.common.paths(cfg)
    for name in E.TABLES.values():
        assert (P.tables / name).is_file()
    # buckets and kinds partition the images of each method
    for table, col in ((ev.by_bucket, "bucket"), (ev.by_kind, "kind")):
        t = table[(table["metric"] == "psnr") & (table["method"] == "ddpm_finetuned")]
        assert t["n"].sum() == len(test["name"])
        assert ((t["lo"] <= t["mean"] + 1e-12) & (t["mean"] <= t["hi"] + 1e-12)).all()
        assert set(t["group"]) == set(ev.per_image[col])
    # a reload gives the same tables
    again = E.load_evaluation(cfg)
    pd.testing.assert_frame_equal(FD.format_summary(again), FD.format_summary(ev))
    assert again.missing == ev.missing


def test_stale_or_wrong_size_predictions_are_missing_with_a_reason(prepared, fake_inception, no_lpips_weights):
    cfg, _ = prepared
    cfg.eval.bootstrap_samples = 20
    P = H.common.paths(cfg)
    H.common.save_png(torch.zeros(3, cfg.data.image_size, cfg.data.image_size), P.predictions("sd_zeroshot") / "old.png")
    test = H.data.load_test_set(cfg)
    H.data.write_predictions(cfg, "sd_lora", test["name"], torch.zeros(len(test["name"]), 3, 16, 16))
    ev = E.evaluate_all(cfg, methods=["sd_zeroshot", "sd_lora"])
    reasons = {m["method"]: m["reason"] for m in ev.missing}
    assert "none for this test set" in reasons["sd_zeroshot"]
    assert "predictions are (3, 16, 16)" in reasons["sd_lora"]
    assert ev.per_image.empty and "nothing to conclude" in FD.conclusions(ev, cfg)


def test_hole_buckets():
    edges = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
    assert E.bucket_labels(edges) == ["0-10%", "10-20%", "20-30%", "30-40%", "40%+"]
    assert E.hole_bucket([0.0, 0.05, 0.1, 0.399, 0.4, 0.5, 1.0], edges) == \
        ["0-10%", "0-10%", "10-20%", "30-40%", "40%+", "40%+", "40%+"]


def test_paired_difference_and_conclusions_follow_the_numbers(scored):
    cfg, _, ev, _ = scored
    d, lo, hi, n = E.paired_difference(ev.per_image, "telea", "ddpm_repaint", "psnr_hole", 200, 0)
    a = ev.per_image[ev.per_image.method == "telea"].set_index("name")["psnr_hole"]
    b = ev.per_image[ev.per_image.method == "ddpm_repaint"].set_index("name")["psnr_hole"]
    assert n == 4 and d == pytest.approx((a[b.index] - b).mean()) and lo <= d <= hi
    best = E.best_methods(ev)
    means, n_common = E.common_means(ev.per_image, "psnr_hole")
    assert best["psnr_hole"] == means.idxmax() and n_common == ev.per_image.groupby("method").size().min()
    assert "lpips" not in best                                 # unavailable: no winner claimed
    text = FD.conclusions(ev, cfg)
    assert text.startswith("* **Smoke preset") and "prove" in text
    assert (f"Best hole PSNR (dB) on the {n_common} images every method was scored on: "
            f"**{H.data.METHODS[best['psnr_hole']]}**") in text
    full = H.load_config("full")
    assert not FD.smoke_warning(full) and "Smoke preset" not in FD.conclusions(ev, full)


def test_comparison_table_labels_every_source(scored, monkeypatch):
    cfg, _, ev, _ = scored
    anchor = {"method": "X (wide masks)", "short_source": "X paper", "source": "Doe et al., X (arXiv:0000.00000), Table 2",
              "protocol": "CelebA-HQ 256, wide masks", "n_images": 2000, "fid": 6.5}
    monkeypatch.setattr(FD, "ANCHORS", [anchor])
    comp = FD.comparison_table(ev, cfg.preset)
    study = comp[comp["source"] == FD.STUDY_SOURCE]
    assert FD.STUDY_TITLE in FD.STUDY_SOURCE
    assert len(study) == 2 and set(study["PSNR ↑"]) == {"23.45", "20.97"} and set(study["FID ↓"]) == {"32.17", "40.45"}
    published = comp[comp["source"] == anchor["source"]]
    assert published.loc["X (wide masks)", "FID ↓"] == "6.50" and published.loc["X (wide masks)", "n images"] == 2000
    ours = comp[comp["source"] == "this run (measured)"]
    assert len(ours) == 3 and ours["protocol"].str.contains("this run (smoke)", regex=False).all()


def test_figures_and_runtime_table(scored, tmp_path):
    cfg, test, ev, _ = scored
    FD.plot_bars(ev, path=tmp_path / "bars.png")
    FD.plot_vs_hole(ev, path=tmp_path / "hole.png")
    FD.plot_vs_hole(ev, path=tmp_path / "kind.png", by="kind")
    names, why = FD.failure_cases(ev, 2)
    assert len(names) == 2 and "hole PSNR" in why
    FD.qualitative_grid(cfg, names, tmp_path / "grid.png", ev=ev)
    for f in ("bars", "hole", "kind", "grid"):
        assert (tmp_path / f"{f}.png").stat().st_size > 5000
    rt = FD.format_runtime(ev)
    assert rt.loc[H.data.SHORT_LABELS["ddpm_finetuned"], "trained params"] == "123"
    assert rt.loc[H.data.SHORT_LABELS["ddpm_repaint"], "s / image"] == "not recorded"
    assert "Telea" in FD.weights_table(ev).loc[H.data.METHODS["telea"], "weights used / reason missing"]


def test_reloaded_tables_keep_image_names_as_text(tmp_root, smoke_cfg):
    per_image = pd.DataFrame({"method": ["telea"], "label": ["x"], "name": ["000123"], "kind": ["box"],
                              "hole_fraction": [0.2], "psnr": [20.0], "ssim": [0.5], "psnr_hole": [15.0],
                              "ssim_hole": [0.4], "lpips": [float("nan")], "bucket": ["20-30%"]})
    empty = pd.DataFrame(columns=["method"])
    ev = E.Evaluation(per_image, pd.DataFrame({"method": ["telea"], "status": ["ok"], "n": [1]}), empty, empty,
                      empty, {"missing": []})
    E.save_evaluation(ev, H.common.paths(smoke_cfg).tables)
    again = E.load_evaluation(smoke_cfg)
    assert again.per_image.loc[0, "name"] == "000123" and math.isnan(again.per_image.loc[0, "lpips"])


def test_best_method_compares_the_same_images():
    """A method scored on an easy subset must not win on its higher mean over other images."""
    rows = [{"method": "telea", "name": f"i{k}", "psnr_hole": v} for k, v in enumerate([30, 30, 10, 10])]
    rows += [{"method": "ddpm_repaint", "name": f"i{k}", "psnr_hole": v} for k, v in enumerate([25, 25])]
    per_image = pd.DataFrame(rows).assign(psnr=1.0, ssim=1.0, ssim_hole=1.0, lpips=float("nan"))
    summary = pd.DataFrame([{"method": "telea", "status": "ok", "n": 4, "psnr_hole": 20.0},
                            {"method": "ddpm_repaint", "status": "ok", "n": 2, "psnr_hole": 25.0}])
    ev = E.Evaluation(per_image, summary, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                      {"bootstrap": {"samples": 50, "seed": 0}})
    means, n = E.common_means(per_image, "psnr_hole")
    assert n == 2 and means.to_dict() == {"ddpm_repaint": 25.0, "telea": 30.0}
    assert E.best_methods(ev)["psnr_hole"] == "telea"          # by own-image means RePaint would "win"
    assert "lpips" not in E.best_methods(ev)
    text = FD.conclusions(ev, H.load_config("full"))
    assert "Best hole PSNR (dB) on the 2 images every method was scored on: **" + H.data.METHODS["telea"] in text


def test_method_equations_carry_the_preset_values():
    text = FD.method_equations(H.load_config("full"))
    assert "W = 1\\, m + 0.05\\, (1 - m)" in text and "r = 16,\\ \\alpha = 16" in text
    assert "DDIM, 50 steps" in text and "w = 7.5" in text and "15 %" in text and "`to_out.0`" in text
    assert text.count("$$") % 2 == 0
