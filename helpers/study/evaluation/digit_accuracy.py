"""The semantic score of a labelled (digits) run: is the completion still the same digit?

PSNR rewards a blurred hole; a classifier trained on the **clean** prepared training images of the
run reads each completion the way a reader would and asks "is it still a seven?". Computed in
notebook 05 beside the pixel metrics, only when the prepared index has digit labels (``data.source:
digits``, preset ``mini``); for any other data it says that the metric does not apply.

Protocol:

1. the classifier: scikit-learn ``LogisticRegression`` (lbfgs, seeded, deterministic) on the grey
   channel of the clean train-split images, flattened, values in [-1, 1];
2. per test image, correct or not, for every method's completion (known pixels composited back, as
   the evaluator scores them) and two reference rows: **ground truth** (the clean test image: the
   ceiling) and **hole left grey** (the masked input, hole = 0, mid-grey: the floor of doing nothing);
3. accuracy per row with its Wilson 95 % interval (:func:`helpers.study.models.digits.wilson_ci`);
4. paired differences of accuracy, image by image, with the evaluator's paired percentile bootstrap
   (:func:`helpers.study.evaluation.metrics.paired_difference`: the same resampled images for both):
   every learned method - Telea, every method - hole left grey, SD + LoRA - SD zero-shot, fine-tuned
   DDPM - RePaint, every PEFT variant - the ablation's reference (SD + LoRA).

Tables go to ``reports/<preset>/tables/05_digit_accuracy*.csv`` and ``05_digit_accuracy.json``; notebook 04's
guidance sweep (accuracy per guidance scale, :func:`guidance_sweep_summary`) is read back beside them
(``DigitAccuracy.guidance``), so that notebook 06 concludes on it too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.study.config import Config
from helpers.study.data.dataset import composite, load_test_set
from helpers.study.data.predictions import find_predictions, read_predictions
from helpers.study.data.splits import load_index
from helpers.study.evaluation.metrics import paired_difference
from helpers.study.files import load_json, load_pngs, paths, save_json, shown_paths
from helpers.study.methods import all_methods, is_variant, method_label
from helpers.study.models.digits import wilson_ci

GROUND_TRUTH = "ground_truth"     # the clean test images: the ceiling
HOLE_GREY = "hole_grey"           # the masked input, hole = 0 (mid-grey): what doing nothing scores
REFERENCE_LABELS = {GROUND_TRUTH: "ground truth (clean test images)", HOLE_GREY: "hole left grey (masked input)"}
BASELINE = "telea"                # the classical, non-learned baseline

TABLES = {"per_image": "05_digit_accuracy_per_image.csv", "summary": "05_digit_accuracy.csv",
          "paired": "05_digit_accuracy_paired.csv", "info": "05_digit_accuracy.json"}
GUIDANCE_SWEEP = "04_guidance_accuracy"       # notebook 04's sweep: .csv (the table) and .json (the summary)

SUMMARY_COLUMNS = ["method", "label", "n", "correct", "accuracy", "accuracy_lo", "accuracy_hi"]
PAIRED_COLUMNS = ["a", "b", "label_a", "label_b", "n", "diff", "lo", "hi", "excludes_zero"]


@dataclass
class DigitAccuracy:
    """The digit accuracy of every row; ``applies`` False (with ``reason``) when the data has no labels."""
    applies: bool
    reason: str = ""
    per_image: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["method", "label", "name",
                                                                                  "correct"]))
    summary: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SUMMARY_COLUMNS))
    paired: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIRED_COLUMNS))
    info: dict = field(default_factory=dict)
    guidance: dict | None = None    # notebook 04's guidance sweep (:func:`guidance_sweep_summary`), if it ran


def row_label(method: str) -> str:
    return REFERENCE_LABELS.get(method) or method_label(method)


# ---------------------------------------------------------------- the classifier
def labels_of(cfg: Config, root: Path | None = None) -> dict[str, int] | None:
    """{image name: digit} from the prepared index; None when the data has no labels."""
    labels = load_index(cfg, root).get("labels")
    return {str(k): int(v) for k, v in labels.items()} if labels else None


def grey_features(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H * W) float64: the grey channel, flattened."""
    return images[:, 0].reshape(len(images), -1).double().numpy()


def fit_classifier(images: torch.Tensor, labels, seed: int = 0, max_iter: int = 5000):
    """Multinomial logistic regression on :func:`grey_features` (lbfgs: deterministic for a given input)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=max_iter, random_state=seed).fit(grey_features(images), np.asarray(labels))


def train_classifier(cfg: Config, labels: dict[str, int], root: Path | None = None):
    """The classifier of this run: fitted on the clean prepared train-split images."""
    P = paths(cfg, root)
    names = list(load_index(cfg, root)["splits"]["train"])
    images = load_pngs([P.data / "images" / "train" / f"{n}.png" for n in names])
    return fit_classifier(images, [labels[n] for n in names], cfg.seed)


def correct(classifier, images: torch.Tensor, labels) -> np.ndarray:
    """Per image: 1.0 when the classifier reads the right digit, else 0.0."""
    return (classifier.predict(grey_features(images)) == np.asarray(labels)).astype(np.float64)


# ---------------------------------------------------------------- the statistics
def accuracy_summary(per_image: pd.DataFrame) -> pd.DataFrame:
    """One row per method (in the order of ``per_image``): accuracy and its Wilson 95 % interval."""
    rows = []
    for method in dict.fromkeys(per_image["method"]):
        c = per_image.loc[per_image["method"] == method, "correct"].to_numpy(dtype=float)
        k, n = int(c.sum()), len(c)
        lo, hi = wilson_ci(k, n)
        rows.append({"method": method, "label": row_label(method), "n": n, "correct": k, "accuracy": k / n,
                     "accuracy_lo": lo, "accuracy_hi": hi})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def comparisons(methods, reference: str = "sd_lora") -> list[tuple[str, str]]:
    """The paired differences (a, b) worth stating among ``methods`` (ids with scores, reference rows
    included): learned - Telea, method - hole left grey, SD + LoRA - SD zero-shot, fine-tuned DDPM -
    RePaint, PEFT variant - ``reference``."""
    methods = list(methods)
    scored = [m for m in methods if m not in REFERENCE_LABELS]
    pairs = []
    if BASELINE in scored:
        pairs += [(m, BASELINE) for m in scored if m != BASELINE]
    if HOLE_GREY in methods:
        pairs += [(m, HOLE_GREY) for m in scored]
    for a, b in (("sd_lora", "sd_zeroshot"), ("ddpm_finetuned", "ddpm_repaint")):
        if a in scored and b in scored:
            pairs.append((a, b))
    if reference in scored:
        pairs += [(m, reference) for m in scored if is_variant(m)]
    return list(dict.fromkeys(pairs))


def paired_table(per_image: pd.DataFrame, pairs, n_boot: int, seed: int) -> pd.DataFrame:
    """Each pair's accuracy difference a - b over the images both have, with the paired bootstrap 95 % CI."""
    rows = []
    for a, b in pairs:
        diff, lo, hi, n = paired_difference(per_image, a, b, "correct", n_boot, seed)
        rows.append({"a": a, "b": b, "label_a": row_label(a), "label_b": row_label(b), "n": n, "diff": diff,
                     "lo": lo, "hi": hi, "excludes_zero": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


# ---------------------------------------------------------------- notebook 04's guidance sweep
def guidance_sweep_summary(rows: list[dict], per_image: list[dict], n_boot: int, seed: int,
                           folder: Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Notebook 04's accuracy per guidance scale: ``rows`` ({"guidance s", "accuracy", ...} per scale, the
    first at s = 1) and ``per_image`` ({"method": "s=<s>", "name", "correct"}) -> the table and the
    paired difference best s - (s = 1) with its bootstrap 95 % CI; saved as ``04_guidance_accuracy.csv``
    and ``.json`` in ``folder`` when given. Where ``per_image`` also holds the zero-shot model at a scale
    ("zero-shot s=<s>", with "correct" and "psnr_hole"), the LoRA's gain over it at that scale, paired image
    by image, joins the table and the summary (``lora_vs_zero_shot``)."""
    table, frame = pd.DataFrame(rows), pd.DataFrame(per_image)
    best = float(table.loc[table["accuracy"].idxmax(), "guidance s"])
    diff, lo, hi, n = paired_difference(frame, f"s={best:g}", f"s={rows[0]['guidance s']:g}",
                                        "correct", n_boot=n_boot, seed=seed)
    gains = lora_gains(frame, [float(r["guidance s"]) for r in rows], n_boot, seed)
    summary = {"best_scale": best, "n": n, "diff_vs_s1": diff, "low": lo, "high": hi, "rows": rows}
    if gains:
        summary["lora_vs_zero_shot"] = gains
        for key, (i, part) in product(GAIN_COLUMNS, enumerate(("", " low", " high"))):
            table[f"LoRA - zero-shot {key}{part}"] = [g[key][i] for g in gains]
    if folder is not None:
        table.to_csv(Path(folder) / f"{GUIDANCE_SWEEP}.csv", index=False)
        save_json(summary, Path(folder) / f"{GUIDANCE_SWEEP}.json")
    return table, summary


GAIN_COLUMNS = {"accuracy": "correct", "psnr_hole": "psnr_hole"}   # a gain's name: its per-image column


def lora_gains(frame: pd.DataFrame, scales: list[float], n_boot: int, seed: int) -> list[dict]:
    """LoRA - zero-shot at each scale where both ran: digit accuracy and hole PSNR, (mean, low, high) of the
    paired difference over the same images; [] when the sweep ran the LoRA model only."""
    out = []
    for s in scales:
        a, b = f"s={s:g}", f"zero-shot s={s:g}"
        if b not in set(frame["method"]):
            return []
        row = {"guidance s": s}
        for key, column in GAIN_COLUMNS.items():
            d, lo, hi, _ = paired_difference(frame, a, b, column, n_boot=n_boot, seed=seed)
            row[key] = [float(d), float(lo), float(hi)]
        out.append(row)
    return out


def load_guidance_sweep(folder: Path) -> dict | None:
    """The summary :func:`guidance_sweep_summary` saved in ``folder``; None when notebook 04's sweep has not run."""
    f = Path(folder) / f"{GUIDANCE_SWEEP}.json"
    return load_json(f) if f.is_file() else None


# ---------------------------------------------------------------- the whole protocol
def per_image_frame(classifier, test: dict, labels: dict[str, int], completions: dict) -> pd.DataFrame:
    """Correctness per (row, image): the two reference rows on the whole test set, then each method
    of ``completions`` ({method: (names, completed images)})."""
    names = list(test["name"])
    rows = {GROUND_TRUTH: (names, test["image"]), HOLE_GREY: (names, test["image"] * (1 - test["mask"])),
            **completions}
    frames = [pd.DataFrame({"method": m, "label": row_label(m), "name": list(n),
                            "correct": correct(classifier, images, [labels[x] for x in n])})
              for m, (n, images) in rows.items()]
    return pd.concat(frames, ignore_index=True)


def read_completions(cfg: Config, test: dict, root: Path | None = None) -> tuple[dict, dict]:
    """{method: (names, completions with the known pixels composited back)} for every method and PEFT
    variant with predictions; and {method: why it is missing} for the others."""
    names = list(test["name"])
    row_of = {n: i for i, n in enumerate(names)}
    out, missing = {}, {}
    for method in [m.id for m in all_methods(cfg)]:
        found = find_predictions(cfg, method, names, root)
        if not found["names"]:
            missing[method] = found["reason"]
            continue
        idx = [row_of[n] for n in found["names"]]
        raw, _ = read_predictions(cfg, method, found["names"], root)
        if raw.shape != test["image"][idx].shape:
            missing[method] = f"predictions are {tuple(raw.shape[1:])}, not the test images' size"
            continue
        out[method] = (found["names"], composite(raw, test["image"][idx], test["mask"][idx]))
    return out, missing


def evaluate_digit_accuracy(cfg: Config, root: Path | None = None, save: bool = True) -> DigitAccuracy:
    """The digit accuracy of every method (see module doc); tables saved to the run's tables folder
    when the data has labels. Without labels: ``applies`` False, the reason, nothing written."""
    # 1. labels: the metric applies only to labelled (digits) data
    labels = labels_of(cfg, root)
    if labels is None:
        return DigitAccuracy(False, f"the digit accuracy does not apply: the prepared data of preset "
                                    f"{cfg.preset!r} (data.source: {cfg.data.source}) has no digit labels")
    # 2. the classifier on the clean train split; the test set and every method's completions
    classifier = train_classifier(cfg, labels, root)
    test = load_test_set(cfg, root)
    completions, missing = read_completions(cfg, test, root)
    # 3. per image, per row; accuracy with Wilson intervals; paired bootstrap differences
    per_image = per_image_frame(classifier, test, labels, completions)
    E = cfg.eval
    reference = (cfg.get("ablation") or {}).get("reference", "sd_lora")
    paired = paired_table(per_image, comparisons(dict.fromkeys(per_image["method"]), reference),
                          E.bootstrap_samples, cfg.seed)
    info = {"applies": True, "classifier": "scikit-learn LogisticRegression (lbfgs), grey channel flattened, "
                                           "fitted on the clean train-split images",
            "n_train": int(len(load_index(cfg, root)["splits"]["train"])), "n_test": len(test["name"]),
            "accuracy_interval": "Wilson score 95 %",
            "paired": {"kind": "paired percentile bootstrap of the mean difference over images",
                       "samples": E.bootstrap_samples, "seed": cfg.seed, "confidence": 0.95},
            "missing": missing}
    acc = DigitAccuracy(True, "", per_image, accuracy_summary(per_image), paired, info,
                        load_guidance_sweep(paths(cfg, root).tables))
    if save:
        save_digit_accuracy(acc, paths(cfg, root).tables)
    return acc


def save_digit_accuracy(acc: DigitAccuracy, folder: Path) -> None:
    folder = Path(folder)
    for key in ("per_image", "summary", "paired"):
        getattr(acc, key).to_csv(folder / TABLES[key], index=False)
    save_json(shown_paths(acc.info), folder / TABLES["info"])


def load_digit_accuracy(cfg: Config, root: Path | None = None) -> DigitAccuracy:
    """The tables notebook 05 saved; ``applies`` False when there are none (no labels, or not run)."""
    folder = paths(cfg, root).tables
    if not (folder / TABLES["info"]).is_file():
        return DigitAccuracy(False, f"no digit accuracy for preset {cfg.preset!r}: its data has no digit "
                                    "labels, or notebook 05 has not run")
    text = {"name": str, "method": str, "a": str, "b": str}
    frames = {k: pd.read_csv(folder / TABLES[k], dtype=text) for k in ("per_image", "summary", "paired")}
    return DigitAccuracy(True, "", **frames, info=load_json(folder / TABLES["info"]),
                         guidance=load_guidance_sweep(folder))
