"""The digit accuracy of a labelled run (helpers.study.evaluation.digit_accuracy): the classifier's rows
on synthetic cases whose answer is known, the paired intervals, and the tables written only when the
prepared data has labels."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import helpers as H

DA = H.study.evaluation.digit_accuracy


def _frame(rows: dict) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"method": m, "label": m, "name": [f"{i:03d}" for i in range(len(c))],
                                    "correct": np.asarray(c, dtype=float)}) for m, c in rows.items()],
                     ignore_index=True)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits as (N, 3, 8, 8) in [-1, 1], a classifier fitted on the first 400, and
    60 test digits with a fixed box hole."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images / 8.0 - 1.0).float()[:, None].repeat(1, 3, 1, 1)
    mask = torch.zeros(60, 1, 8, 8)
    mask[:, :, 2:6, 1:5] = 1
    test = {"image": x[400:460], "mask": mask, "name": [f"t{i}" for i in range(60)]}
    labels = {n: int(v) for n, v in zip(test["name"], d.target[400:460])}
    return DA.fit_classifier(x[:400], d.target[:400], seed=0), test, labels


def test_perfect_completion_reaches_the_ceiling_and_grey_equals_the_floor(digits):
    clf, test, labels = digits
    names = test["name"]
    frame = DA.per_image_frame(clf, test, labels, {
        "sd_lora": (names, test["image"].clone()),                       # the clean images themselves
        "telea": (names, test["image"] * (1 - test["mask"]))})           # the hole left grey
    summ = DA.accuracy_summary(frame).set_index("method")
    assert list(summ.index) == [DA.GROUND_TRUTH, DA.HOLE_GREY, "sd_lora", "telea"]
    assert summ.loc["sd_lora", "accuracy"] == summ.loc[DA.GROUND_TRUTH, "accuracy"] > 0.8
    assert summ.loc["telea", "correct"] == summ.loc[DA.HOLE_GREY, "correct"]
    assert summ.loc[DA.HOLE_GREY, "accuracy"] < summ.loc[DA.GROUND_TRUTH, "accuracy"]
    lo, hi = H.study.models.digits.wilson_ci(int(summ.loc["sd_lora", "correct"]), 60)
    assert (summ.loc["sd_lora", "accuracy_lo"], summ.loc["sd_lora", "accuracy_hi"]) == (lo, hi)
    # the classifier reads the grey channel: the same images give the same answers, run after run
    again = DA.correct(clf, test["image"], [labels[n] for n in names])
    assert np.array_equal(again, frame[frame.method == DA.GROUND_TRUTH]["correct"].to_numpy())


def test_paired_intervals_identical_zero_and_strictly_better_positive():
    n = 200
    base = np.r_[np.ones(120), np.zeros(80)]
    better = base.copy()
    better[120:150] = 1                                      # correct on 30 more images, never on fewer
    frame = _frame({"telea": base, "ddpm_finetuned": base.copy(), "sd_lora": better})
    paired = DA.paired_table(frame, [("ddpm_finetuned", "telea"), ("sd_lora", "telea")], 500, 0)
    same, up = paired.iloc[0], paired.iloc[1]
    assert (same["diff"], same["lo"], same["hi"], same["n"]) == (0.0, 0.0, 0.0, n)
    assert not same["excludes_zero"]
    assert up["diff"] == pytest.approx(30 / n) and 0 < up["lo"] <= up["diff"] <= up["hi"]
    assert up["excludes_zero"]


def test_comparisons_name_every_pair_the_issue_asks_for():
    methods = [DA.GROUND_TRUTH, DA.HOLE_GREY, "ddpm_finetuned", "ddpm_repaint", "sd_zeroshot", "sd_lora", "telea",
               "peft_lora_r1"]
    pairs = DA.comparisons(methods)
    learned = ["ddpm_finetuned", "ddpm_repaint", "sd_zeroshot", "sd_lora", "peft_lora_r1"]
    assert all((m, "telea") in pairs for m in learned)
    assert all((m, DA.HOLE_GREY) in pairs for m in learned + ["telea"])
    assert ("sd_lora", "sd_zeroshot") in pairs and ("ddpm_finetuned", "ddpm_repaint") in pairs
    assert ("peft_lora_r1", "sd_lora") in pairs
    assert not any(DA.GROUND_TRUTH in p for p in pairs) and len(pairs) == len(set(pairs))
    assert DA.comparisons([DA.GROUND_TRUTH, DA.HOLE_GREY, "sd_lora"]) == [("sd_lora", DA.HOLE_GREY)]


def test_tables_written_with_labels_and_skipped_without(prepared):
    cfg, index = prepared
    cfg.eval.bootstrap_samples = 100
    tables = H.study.files.paths(cfg).tables
    # 1. the smoke data has no labels: the metric says it does not apply and writes nothing
    acc = DA.evaluate_digit_accuracy(cfg)
    assert not acc.applies and "does not apply" in acc.reason
    assert not any((tables / f).exists() for f in DA.TABLES.values())
    assert not DA.load_digit_accuracy(cfg).applies
    # 2. the same data with (made-up, seeded) labels: every table written, predictions read back
    rng = np.random.default_rng(0)
    index["labels"] = {n: int(rng.integers(0, 10)) for s in ("train", "val", "test") for n in index["splits"][s]}
    path = H.study.files.paths(cfg).data / "index.json"
    path.write_text(json.dumps(index))
    test = H.study.data.dataset.load_test_set(cfg)
    H.study.data.predictions.write_predictions(cfg, "sd_lora", test["name"], test["image"], {"weights": "TEST"})
    acc = DA.evaluate_digit_accuracy(cfg)
    assert acc.applies and all((tables / f).is_file() for f in DA.TABLES.values())
    summ = acc.summary.set_index("method")
    assert summ.loc["sd_lora", "correct"] == summ.loc[DA.GROUND_TRUTH, "correct"]
    assert len(acc.per_image) == 3 * len(test["name"])
    assert list(zip(acc.paired["a"], acc.paired["b"])) == [("sd_lora", DA.HOLE_GREY)]
    loaded = DA.load_digit_accuracy(cfg)
    assert loaded.applies and loaded.summary["correct"].tolist() == acc.summary["correct"].tolist()
    assert loaded.paired["excludes_zero"].tolist() == acc.paired["excludes_zero"].tolist()


def test_report_shows_the_accuracy_column_and_the_paired_lines(digits):
    clf, test, labels = digits
    names = test["name"]
    frame = DA.per_image_frame(clf, test, labels, {"sd_lora": (names, test["image"])})
    acc = DA.DigitAccuracy(True, "", frame, DA.accuracy_summary(frame),
                           DA.paired_table(frame, DA.comparisons(DA.accuracy_summary(frame)["method"]), 100, 0))
    lines = H.report.text.accuracy_statements(acc)
    assert len(lines) == 1 and "Hole left grey" not in lines[0] and "hole left grey" in lines[0]
    assert ("excludes 0" in lines[0]) == bool(acc.paired["excludes_zero"].iloc[0])
    table = H.report.tables.format_digit_accuracy(acc)
    assert table.loc[H.study.methods.short_label("sd_lora"), "correct"] == int(acc.summary["correct"].iloc[0])
    assert H.report.text.accuracy_statements(DA.DigitAccuracy(False, "no labels")) == []


def test_accuracy_highlights_fit_three_bullets():
    """The conclusions' short form: against Telea in one bullet, against the grey hole in one, the other pairs in
    one; a resolved difference in bold, a pair over fewer images with its own n."""
    row = lambda a, b, d, lo, hi, n=200: {"a": a, "b": b, "n": n, "diff": d, "lo": lo, "hi": hi,  # noqa: E731
                                          "excludes_zero": lo > 0 or hi < 0}
    paired = pd.DataFrame([row("sd_lora", "telea", 0.05, 0.005, 0.095),
                           row("ddpm_finetuned", "telea", -0.03, -0.085, 0.025),
                           row("ddpm_repaint", "telea", 0.02, -0.01, 0.05, 50),
                           row("sd_lora", DA.HOLE_GREY, 0.155, 0.1, 0.205),
                           row("telea", DA.HOLE_GREY, 0.105, 0.045, 0.16),
                           row("sd_lora", "sd_zeroshot", -0.015, -0.04, 0.005)])
    lines = H.report.text.accuracy_highlights(DA.DigitAccuracy(True, paired=paired))
    assert len(lines) == 3 and all(line.startswith("* ") for line in lines)
    label = H.study.methods.short_label
    assert "n = 200;" in lines[0] and f"{label('sd_lora')} **+0.050 [+0.005, +0.095]**" in lines[0]
    assert f"{label('ddpm_finetuned')} -0.030 [-0.085, +0.025]," in lines[0] and "(n = 50)" in lines[0]
    assert "2 of 2 methods higher" in lines[1] and "Telea **+0.105 [+0.045, +0.160]**" in lines[1]
    assert lines[2] == f"* {label('sd_lora')} − {label('sd_zeroshot')} -0.015 [-0.040, +0.005]."
    assert H.report.text.accuracy_highlights(DA.DigitAccuracy(False, "no labels")) == []


def test_guidance_sweep_is_read_back_and_concluded_on(tmp_path):
    """Notebook 04's sweep, saved by guidance_sweep_summary, is read back beside notebook 05's tables and
    becomes one line of notebook 06's conclusions: both accuracies, their costs, the paired CI."""
    names = [f"d{i}" for i in range(40)]
    rows, per_image = [], []
    for s, correct in ((1.0, [1] * 20 + [0] * 20), (3.0, [1] * 36 + [0] * 4)):
        rows.append({"guidance s": s, "accuracy": float(np.mean(correct)), "s/image": 0.01 * s})
        per_image += [{"method": f"s={s:g}", "name": n, "correct": float(c)} for n, c in zip(names, correct)]
    assert DA.load_guidance_sweep(tmp_path) is None
    _, sw = DA.guidance_sweep_summary(rows, per_image, 200, 0, folder=tmp_path)
    assert DA.load_guidance_sweep(tmp_path) == sw and sw["best_scale"] == 3.0
    line = H.report.text.guidance_statement(DA.DigitAccuracy(True, guidance=DA.load_guidance_sweep(tmp_path)))
    assert "0.500 at s = 1 (0.01 s/image)" in line and "0.900 at s = 3 (0.03 s/image)" in line
    assert f"{sw['diff_vs_s1']:+.3f} [{sw['low']:+.3f}, {sw['high']:+.3f}]" in line and "excludes 0" in line
    assert H.report.text.guidance_statement(DA.DigitAccuracy(True)) is None
    assert H.report.text.guidance_statement(None) is None


def test_the_sweep_gives_lora_over_zero_shot_at_each_scale_when_both_ran(tmp_path):
    """Notebook 04 runs the zero-shot model (adapter off) beside LoRA at each scale: the paired LoRA - zero-shot
    difference in accuracy and hole PSNR joins the table and the saved summary, one per scale."""
    names = [f"d{i}" for i in range(40)]
    rows, per_image = [], []
    for s, lora, zero in ((1.0, [1] * 30 + [0] * 10, [1] * 20 + [0] * 20),
                          (3.0, [1] * 36 + [0] * 4, [1] * 36 + [0] * 4)):
        rows.append({"guidance s": s, "accuracy": float(np.mean(lora)), "s/image": 0.01 * s})
        per_image += [{"method": f"s={s:g}", "name": n, "correct": float(c), "psnr_hole": 15.0 + (s == 1.0)}
                      for n, c in zip(names, lora)]
        per_image += [{"method": f"zero-shot s={s:g}", "name": n, "correct": float(c), "psnr_hole": 15.0}
                      for n, c in zip(names, zero)]
    table, sw = DA.guidance_sweep_summary(rows, per_image, 200, 0, folder=tmp_path)
    gains = {g["guidance s"]: g for g in sw["lora_vs_zero_shot"]}
    assert gains[1.0]["accuracy"][0] == pytest.approx(0.25) and gains[1.0]["accuracy"][1] > 0
    assert gains[1.0]["psnr_hole"] == pytest.approx([1.0, 1.0, 1.0])
    assert gains[3.0]["accuracy"] == pytest.approx([0.0, 0.0, 0.0]) and gains[3.0]["psnr_hole"][0] == 0
    assert list(table["LoRA - zero-shot accuracy"]) == pytest.approx([0.25, 0.0])
    assert DA.load_guidance_sweep(tmp_path)["lora_vs_zero_shot"] == sw["lora_vs_zero_shot"]
    line = H.report.text.lora_gain_statement(DA.DigitAccuracy(True, guidance=sw))
    assert line.endswith("(notebook 04): s = 1 **+1.00 dB [+1.00, +1.00]**, s = 3 +0.00 dB [+0.00, +0.00]."), line
    marked = H.report.text.lora_gain_statement(DA.DigitAccuracy(True, guidance=sw), run_scale=3)
    assert marked.endswith("s = 1 **+1.00 dB [+1.00, +1.00]**, s = 3 (this run's) +0.00 dB [+0.00, +0.00]."), marked
    lora_only = [r for r in per_image if not r["method"].startswith("zero-shot")]
    _, alone = DA.guidance_sweep_summary(rows, lora_only, 200, 0)
    assert "lora_vs_zero_shot" not in alone
    assert H.report.text.lora_gain_statement(DA.DigitAccuracy(True, guidance=alone)) is None
