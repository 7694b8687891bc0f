"""The evaluation protocol: scores, grouped means with confidence intervals, the statistics behind
every statement, and the decisions the conclusions word (:func:`ci_verdict`...). Computed in
notebook 05; :mod:`helpers.report` turns it into the tables, text and figures of notebooks 05 and 06.

Protocol (the same for every method):

1. the frozen test images and masks of ``data/<preset>`` (``data.load_test_set``), at the data
   resolution;
2. each method's predictions read from ``reports/<preset>/predictions/<method>/<name>.png``;
   the known pixels are composited back by the evaluator (``mask * pred + (1 - mask) * image``),
   whatever the method did, so no method is scored on context it was given;
3. per image: PSNR and SSIM on the whole image and on the hole only, LPIPS when its weights are
   present (:mod:`helpers.metrics`); per method: FID and KID against the real test images *of the
   same names* (a method run on a subset, e.g. RePaint, is scored on exactly the images it has,
   and every table says n);
4. means with percentile-bootstrap 95 % confidence intervals over images, overall, by hole-area
   bucket and by mask kind; a runtime table from each method's meta.json;
5. a method without prediction files is listed as *missing*, with the reason, never dropped;
6. on labelled (digits) data, the digit accuracy of a classifier trained on clean digits
   (:mod:`helpers.study.evaluation.digit_accuracy`, ``Evaluation.accuracy``).

Tables go to ``reports/<preset>/tables/05_*.csv`` and ``05_evaluation.json``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.course.metrics import pixel_scores, to_levels
from helpers.study.config import Config
from helpers.study.data.dataset import composite, load_test_set
from helpers.study.data.predictions import files_stamp, find_predictions, read_predictions
from helpers.study.data.splits import load_index
from helpers.study.evaluation.digit_accuracy import evaluate_digit_accuracy, load_digit_accuracy
from helpers.study.evaluation.metrics import (
    bootstrap_ci,
    fid_from_features,
    inception_features,
    kid_from_features,
    load_inception,
    load_lpips,
    means_on,
    paired_difference,
)
from helpers.study.files import load_json, paths, save_json, shown_paths
from helpers.study.methods import METHODS, SHORT_LABELS, method_label, notebook_of
from helpers.study.runtime import get_device, progress

# ---------------------------------------------------------------- names shared by every table
PER_IMAGE = ("psnr", "ssim", "psnr_hole", "ssim_hole", "lpips")


HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "psnr_hole": True, "ssim_hole": True,
                    "lpips": False, "fid": False, "kid": False}


LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "psnr_hole": "hole PSNR (dB)", "ssim_hole": "hole SSIM",
          "lpips": "LPIPS", "fid": "FID", "kid": "KID"}


TABLES = {"per_image": "05_per_image.csv", "summary": "05_summary.csv", "by_bucket": "05_by_bucket.csv",
          "by_kind": "05_by_kind.csv", "runtime": "05_runtime.csv", "info": "05_evaluation.json"}


@dataclass
class Evaluation:
    """Everything notebook 05 computes and notebook 06 presents."""
    per_image: pd.DataFrame      # one row per (method, image)
    summary: pd.DataFrame        # one row per method (missing ones too): means, CIs, FID, KID, n
    by_bucket: pd.DataFrame      # long: method, group (hole-area bucket), n, metric, mean, lo, hi
    by_kind: pd.DataFrame        # long: method, group (mask kind), n, metric, mean, lo, hi
    runtime: pd.DataFrame        # one row per method with predictions, from its meta.json
    info: dict = field(default_factory=dict)  # implementations, resize mode, LPIPS status, missing...
    accuracy: object = None      # digit_accuracy.DigitAccuracy (labelled data only; ``applies`` says)
    # this process only, never saved: the scorers, the real images' Inception features and each method's
    # scores with its prediction files' stamp, for a later evaluate_all(scored=...) of the same test set
    reusable: dict = field(default_factory=dict, repr=False)

    @property
    def missing(self) -> list[dict]:
        return self.info.get("missing", [])

    @property
    def methods(self) -> list[str]:
        """Methods that have scores, in the canonical order."""
        return [m for m in METHODS if m in set(self.per_image["method"])]


# ---------------------------------------------------------------- the classical baseline
def run_telea(cfg: Config, radius: int | None = None, root: Path | None = None, force: bool = False) -> Path:
    """OpenCV Telea (:func:`helpers.study.evaluation.predict.telea_inpaint`, classical, non-learned) on the frozen
    test set, saved as method ``telea``. Skipped when every test image already has one (``force`` re-runs)."""
    import cv2

    from helpers.study.evaluation.predict import method_meta, predict_test_set, telea_inpaint

    P = paths(cfg, root)
    out = P.predictions("telea")
    if not force and all((out / f"{n}.png").is_file() for n in load_test_set(cfg, root)["name"]):
        return out
    radius = int(radius if radius is not None else cfg.eval.telea_radius)
    meta = method_meta("telea", f"none: classical, non-learned OpenCV Telea (cv2.INPAINT_TELEA, "
                       f"OpenCV {cv2.__version__}, radius {radius})", "cpu", {}, 0, 0, None,
                       "single CPU thread per image; no training")
    predict_test_set(cfg, "telea", lambda x, m, seeds, names: telea_inpaint(x, m, radius), cfg.eval.batch_size,
                     torch.device("cpu"), meta, root=root, desc="Telea inpainting")
    return out


# ---------------------------------------------------------------- per-image scores
def score_images(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, device: torch.device,
                 batch_size: int = 50, lpips_fn=None, desc: str = "scoring",
                 scores_fn=pixel_scores) -> dict[str, np.ndarray]:
    """PSNR / SSIM (whole and hole), LPIPS (NaN when unavailable), batched on ``device``."""
    out = {k: [] for k in PER_IMAGE}
    for i in progress(range(0, len(pred), batch_size), desc=desc, leave=False):
        p, x, m = (t[i:i + batch_size].to(device) for t in (pred, image, mask))
        for k, v in scores_fn(p, x, m).items():
            out[k].append(v.cpu())
        out["lpips"].append(lpips_fn(p, x).cpu() if lpips_fn is not None
                            else torch.full((len(p),), float("nan"), dtype=torch.float64))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def bucket_labels(edges: Sequence[float]) -> list[str]:
    """[0, .1, .2, 1] -> ["0-10%", "10-20%", "20%+"] (the last bucket is open-ended up to 100 %)."""
    labels = [f"{lo:.0%}-{hi:.0%}".replace("%-", "-") for lo, hi in zip(edges[:-2], edges[1:-1])]
    return labels + [f"{edges[-2]:.0%}+"]


def hole_bucket(fractions: Sequence[float], edges: Sequence[float]) -> list[str]:
    """Bucket of each hole fraction: [lo, hi) per bucket, the last one closed."""
    labels = bucket_labels(edges)
    idx = np.clip(np.searchsorted(np.asarray(edges[1:-1]), np.asarray(fractions), side="right"), 0, len(labels) - 1)
    return [labels[i] for i in idx]


def _grouped(per_image: pd.DataFrame, by: str, metrics: Iterable[str], n_boot: int, seed: int,
             order: Sequence[str] | None = None) -> pd.DataFrame:
    rows = []
    groups = order if order is not None else sorted(per_image[by].unique())
    present = list(dict.fromkeys(per_image["method"]))
    for method in [m for m in METHODS if m in present] + [m for m in present if m not in METHODS]:
        sub = per_image[per_image["method"] == method]
        for g in groups:
            part = sub[sub[by] == g]
            if part.empty:
                continue
            for metric in metrics:
                mean, lo, hi = bootstrap_ci(part[metric].to_numpy(), n_boot, seed)
                rows.append({"method": method, "label": method_label(method), "group": g, "n": len(part),
                             "metric": metric, "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["method", "label", "group", "n", "metric", "mean", "lo", "hi"])


def _runtime_row(method: str, meta: dict) -> dict:
    def mib(v):
        return None if v in (None, "") else float(v) / 2**20
    return {"method": method, "label": method_label(method), "weights": meta.get("weights", "not recorded"),
            "device": meta.get("device", "not recorded"),
            "seconds_per_image": meta.get("sample_seconds_per_image"), "images_per_s": meta.get("images_per_s"),
            "peak_memory_MiB": mib(meta.get("peak_memory_bytes")), "trainable_params": meta.get("trainable_params"),
            "total_params": meta.get("total_params"), "train_steps": meta.get("train_steps"),
            "train_seconds": meta.get("train_seconds"),
            "train_images_per_s": meta.get("train_images_per_s"),
            "train_peak_memory_MiB": mib(meta.get("train_peak_memory_bytes")), "n_images": meta.get("n_images"),
            "note": meta.get("note", "")}


# ---------------------------------------------------------------- the whole protocol
def _missing(method: str, reason: str) -> dict:
    return {"method": method, "label": method_label(method), "status": "missing", "n": 0, "note": reason}


def _score_method(cfg: Config, method: str, test: dict, found: dict, device, lpips_fn, inception, real_feats,
                  scores_fn, root: Path | None) -> dict:
    """One method: read its predictions, re-composite the known pixels, score per image and as a set.
    Returns {"summary": row} for a method that cannot be scored, else also its per-image frame, runtime
    row and info."""
    E = cfg.eval
    row_of = {n: i for i, n in enumerate(test["name"])}
    idx = [row_of[n] for n in found["names"]]
    image, mask = test["image"][idx], test["mask"][idx]
    raw, meta = read_predictions(cfg, method, found["names"], root)
    if raw.shape != image.shape:
        return {"summary": _missing(method, f"predictions are {tuple(raw.shape[1:])}, the test images "
                                            f"{tuple(image.shape[1:])}: re-run notebook {notebook_of(method)} "
                                            "at data.image_size")}
    pred = composite(raw, image, mask)
    known_change = int((to_levels(raw) - to_levels(image)).abs().mul(1 - mask).amax().item())
    scores = score_images(pred, image, mask, device, E.batch_size, lpips_fn, f"scoring {method}", scores_fn)
    frame = pd.DataFrame({"method": method, "label": method_label(method), "name": found["names"],
                          "kind": [test["kind"][i] for i in idx],
                          "hole_fraction": [test["hole_fraction"][i] for i in idx], **scores})
    row = {"method": method, "label": method_label(method), "status": "ok" if not found["reason"] else "partial",
           "n": len(idx), "note": found["reason"], "weights": meta.get("weights", "not recorded")}
    for metric in PER_IMAGE:
        row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = bootstrap_ci(scores[metric], E.bootstrap_samples,
                                                                            cfg.seed)
    if inception is not None and len(idx) >= 2:
        fake = inception_features(inception, pred, E.batch_size, f"Inception: {method}")
        row["fid"] = fid_from_features(real_feats[idx], fake)
        row["kid"], row["kid_std"], row["kid_subset_size"] = kid_from_features(
            real_feats[idx], fake, E.kid_subset_size, E.kid_subsets, cfg.seed)
        row["fid_n"] = len(idx)
    info = {"n": len(idx), "known_pixels_max_change_before_composite": known_change,
            "weights": meta.get("weights", "not recorded"), "captions": meta.get("captions")}
    return {"summary": row, "frame": frame, "runtime": _runtime_row(method, meta), "info": info}


def _protocol_info(cfg: Config, n_test: int, device, lpips_status, fid_status, missing: list, methods: dict,
                   index: dict) -> dict:
    """How every number was measured (saved as 05_evaluation.json; the tables' captions read it); ``index``:
    notebook 01's record of the prepared data."""
    E = cfg.eval
    info = {
        "preset": cfg.preset, "n_test": n_test, "image_size": cfg.data.image_size, "device": str(device),
        "protocol": "frozen test images and masks; known pixels composited back by the evaluator; "
                    f"{cfg.data.image_size}x{cfg.data.image_size} px; metrics on 8-bit PNG values",
        "psnr_ssim": "own batched float64 code, equal to scikit-image peak_signal_noise_ratio / "
                     "structural_similarity(channel_axis=-1, data_range=255, win_size=7, uniform window); "
                     "hole PSNR: MSE over hole pixels only; hole SSIM: mean of the SSIM map over hole pixels",
        "lpips": lpips_status.to_dict(), "fid": fid_status.to_dict(),
        "kid": {"kernel": "(x.y/d + 1)^3", "estimator": "unbiased MMD^2", "subset_size": E.kid_subset_size,
                "subsets": E.kid_subsets},
        "bootstrap": {"kind": "percentile bootstrap of the mean over images", "samples": E.bootstrap_samples,
                      "seed": cfg.seed, "confidence": 0.95},
        "hole_buckets": list(E.hole_buckets), "missing": missing, "methods": methods,
    }
    res = index.get("resolution") or {}   # where the test set came from, at which sizes (notebook 01)
    info["data"] = {"test_split": index.get("test_split"), "sizes": res.get("text"),
                    "sd_upsampled": res.get("sd_upsampled"), "prepared_px": res.get("prepared_px"),
                    "sd_px": res.get("sd_px")}
    return info


def _scorers(cfg: Config, test: dict, device, scores_fn, scored: Evaluation | None, root: Path | None,
             fingerprint: str | None) -> dict:
    """LPIPS, the Inception network and the real test images' features, taken from ``scored`` when it
    evaluated the same test images (``fingerprint``: the prepared data's, images and masks) with the same
    settings in this process, else loaded and computed."""
    E, P = cfg.eval, paths(cfg, root)
    key = (str(P.root), fingerprint, tuple(test["name"]), scores_fn, repr(E), str(device))
    if scored is not None and scored.reusable.get("key") == key:
        return scored.reusable
    lpips_fn, lpips_status = load_lpips(E.lpips_net, [P.cache], device)
    inception, fid_status = load_inception([P.cache], device, E.get("fid_backbone", "auto"))
    real_feats = (inception_features(inception, test["image"], E.batch_size, "Inception: real test images")
                  if inception is not None else None)
    return {"key": key, "lpips_fn": lpips_fn, "lpips_status": lpips_status, "inception": inception,
            "fid_status": fid_status, "real_feats": real_feats, "methods": {}}


def _method_scores(cfg: Config, method: str, test: dict, device, scorers: dict, scores_fn, root: Path | None) -> dict:
    """:func:`_score_method`'s result; one already computed for these scorers is reused (and said so) while
    the method's prediction files are unchanged."""
    stamp = files_stamp(cfg, method, root)
    earlier = scorers["methods"].get(method)
    if earlier is not None and earlier["stamp"] == stamp:
        print(f"{method}: scores reused from the evaluation above (same test images, settings and prediction files)")
        return earlier["out"]
    found = find_predictions(cfg, method, list(test["name"]), root)
    out = (_score_method(cfg, method, test, found, device, scorers["lpips_fn"], scorers["inception"],
                         scorers["real_feats"], scores_fn, root)
           if found["names"] else {"summary": _missing(method, found["reason"])})
    scorers["methods"][method] = {"stamp": stamp, "out": out}
    return out


def evaluate_all(cfg: Config, root: Path | None = None, methods: Sequence[str] | None = None,
                 device: torch.device | str | None = None, scores_fn=pixel_scores, save: bool = True,
                 scored: Evaluation | None = None) -> Evaluation:
    """Score every method on the frozen test set; save and return the tables (see module doc).
    ``scores_fn`` computes PSNR and SSIM (whole image and hole) of a batch: notebook 05 passes its own.
    ``save=False``: return the tables without writing them (the PEFT ablation scores its variants so).
    ``scored``: an evaluation of this process (notebook 05's) whose scores of a method are reused while the
    test images, settings and the method's prediction files are unchanged, instead of computed again."""
    P = paths(cfg, root)
    E = cfg.eval
    device = torch.device(device) if device is not None else get_device(cfg)
    methods = list(methods or METHODS)
    # 1. the frozen test set and the learned metrics' networks (found without downloading)
    test = load_test_set(cfg, root)
    names = list(test["name"])
    index = load_index(cfg, root)                     # notebook 01's record of the prepared data
    scorers = _scorers(cfg, test, device, scores_fn, scored, root, index.get("fingerprint"))
    # 2. each method: read, re-composite, score per image and as a set
    frames, summary, runtime, missing, method_info = [], [], [], [], {}
    for method in progress(methods, desc="methods"):
        out = _method_scores(cfg, method, test, device, scorers, scores_fn, root)
        summary.append(out["summary"])
        if "frame" not in out:
            missing.append({"method": method, "label": method_label(method), "reason": out["summary"]["note"]})
            continue
        frames.append(out["frame"])
        runtime.append(out["runtime"])
        method_info[method] = out["info"]
    # 3. tables: per image, summary, by hole-area bucket and mask kind, runtime
    per_image = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["method", "label", "name", "kind", "hole_fraction", *PER_IMAGE])
    per_image["bucket"] = hole_bucket(per_image["hole_fraction"].to_numpy(dtype=float), E.hole_buckets)
    kinds = [k for k in cfg.data.masks.kinds if k in set(per_image["kind"])]
    by_bucket = _grouped(per_image, "bucket", PER_IMAGE, E.bootstrap_samples, cfg.seed, bucket_labels(E.hole_buckets))
    by_kind = _grouped(per_image, "kind", PER_IMAGE, E.bootstrap_samples, cfg.seed, kinds)
    info = _protocol_info(cfg, len(names), device, scorers["lpips_status"], scorers["fid_status"], missing,
                          method_info, index)
    ev = Evaluation(per_image, pd.DataFrame(summary), by_bucket, by_kind,
                    pd.DataFrame(runtime, columns=list(_runtime_row("telea", {}))), info, reusable=scorers)
    if save:
        save_evaluation(ev, P.tables)
        # 4. the semantic score of a labelled (digits) run; says it does not apply otherwise
        ev.accuracy = evaluate_digit_accuracy(cfg, root)
    return ev


def save_evaluation(ev: Evaluation, folder: Path) -> None:
    folder = Path(folder)
    for key in ("per_image", "summary", "by_bucket", "by_kind", "runtime"):
        getattr(ev, key).to_csv(folder / TABLES[key], index=False)
    save_json(shown_paths(ev.info), folder / TABLES["info"])


def load_evaluation(cfg: Config, root: Path | None = None) -> Evaluation:
    """The tables notebook 05 saved (FileNotFoundError saying so when it has not run)."""
    folder = paths(cfg, root).tables
    if not (folder / TABLES["info"]).is_file():
        raise FileNotFoundError(f"{folder / TABLES['info']} not found: run notebook 05 (evaluation) for "
                                f"preset {cfg.preset!r} first")
    # names and groups stay text ("000123" is an image name, not the number 123)
    text = {"name": str, "group": str, "method": str, "kind": str, "bucket": str}
    frames = {k: pd.read_csv(folder / TABLES[k], dtype=text) for k in
              ("per_image", "summary", "by_bucket", "by_kind", "runtime")}
    return Evaluation(**frames, info=load_json(folder / TABLES["info"]), accuracy=load_digit_accuracy(cfg, root))


# ---------------------------------------------------------------- statistics behind the statements
# Every statement is made on ONE named set of images: the means it quotes, the paired difference
# and its CI are all computed over exactly that set (a method run on a subset, RePaint, is compared
# on its subset, in its own statement).
@dataclass(frozen=True)
class ImageSet:
    """A set of test images and the methods scored on every one of them; ``name`` says it in words."""
    name: str
    images: tuple[str, ...]
    methods: tuple[str, ...]
    subset_of: str | None = None      # the method that ran on only these images (RePaint), if any

    @property
    def n(self) -> int:
        return len(self.images)


def images_of(per_image: pd.DataFrame, method: str, metric: str | None = None) -> list[str]:
    """The images ``method`` was scored on (with a value for ``metric`` when given)."""
    df = per_image[per_image["method"] == method]
    if metric is not None:
        df = df.dropna(subset=[metric])
    return list(dict.fromkeys(df["name"]))


def common_images(per_image: pd.DataFrame, methods: Sequence[str], metric: str | None = None) -> list[str]:
    """The images every one of ``methods`` was scored on, in test-set order."""
    methods = list(methods)
    if not methods:
        return []
    keep = set(images_of(per_image, methods[0], metric))
    for m in methods[1:]:
        keep &= set(images_of(per_image, m, metric))
    return [n for n in images_of(per_image, methods[0], metric) if n in keep]


def common_means(per_image: pd.DataFrame, metric: str) -> tuple[pd.Series, int]:
    """Each method's mean of a per-image ``metric`` over the images **every** method was scored on
    (RePaint may run on a subset: means over different images must not be ranked). Returns
    (method -> mean, number of common images); methods without values for the metric are left out."""
    df = per_image.dropna(subset=[metric])
    if df.empty:
        return pd.Series(dtype=float), 0
    wide = df.pivot(index="name", columns="method", values=metric).dropna()
    return wide.mean().astype(float), len(wide)


def statement_sets(ev: Evaluation) -> list[ImageSet]:
    """The image sets the conclusions speak about, in order:

    1. the **main set**: the whole test set, with every method scored on all of it;
    2. one set per method scored on a subset only (RePaint): its images, with every method that
       has all of them.

    When no method covers the whole test set, the main set is the images every scored method
    shares. A statement names its set; no statement mixes two."""
    df = ev.per_image
    methods = ev.methods
    if df.empty or not methods:
        return []
    n_test = int(ev.info.get("n_test", 0)) or len(set(df["name"]))
    counts = {m: len(images_of(df, m)) for m in methods}
    full = [m for m in methods if counts[m] >= n_test]
    sets = []
    if full:
        imgs = common_images(df, full)
        sets.append(ImageSet(f"all {len(imgs)} test images", tuple(imgs), tuple(full)))
        partial = [m for m in methods if m not in full]
    else:
        imgs = common_images(df, methods)
        sets.append(ImageSet(f"the {len(imgs)} test images every method was scored on", tuple(imgs), tuple(methods)))
        partial = []
    for m in partial:
        imgs = images_of(df, m)
        with_all = tuple(x for x in methods if set(imgs) <= set(images_of(df, x)))
        sets.append(ImageSet(f"the {len(imgs)} test images {SHORT_LABELS.get(m, m)} ran on", tuple(imgs), with_all, m))
    return sets


def best_methods(ev: Evaluation) -> dict[str, str]:
    """metric -> the method with the best mean (higher PSNR/SSIM, lower LPIPS/FID/KID). Per-image
    metrics compare means over the main image set (:func:`statement_sets`: the whole test set, the
    methods scored on all of it); FID and KID are set-level, so they compare each method's own value
    (the text states n)."""
    out = {}
    ok = ev.summary[ev.summary["status"] != "missing"]
    sets = statement_sets(ev) if not ev.per_image.empty else []
    for metric, higher in HIGHER_IS_BETTER.items():
        if metric in PER_IMAGE:
            if not sets:
                continue
            main = sets[0]
            methods = [m for m in main.methods if len(images_of(ev.per_image, m, metric)) and
                       set(main.images) <= set(images_of(ev.per_image, m, metric))]
            if not methods or not main.n:
                continue
            col = means_on(ev.per_image, methods, metric, main.images)
            out[metric] = col.idxmax() if higher else col.idxmin()
            continue
        if metric not in ok or ok[metric].isna().all():
            continue
        col = ok[metric].astype(float)
        out[metric] = ok.loc[col.idxmax() if higher else col.idxmin(), "method"]
    return out


# ---------------------------------------------------------------- the decisions behind the conclusions
# Each function returns numbers and decisions as data; helpers.report.text words them.
MIN_IMAGES_TO_CONCLUDE = 30     # below this many images a bootstrap CI is too unstable to conclude from


def ci_verdict(lo: float, hi: float, n: int, min_n: int = MIN_IMAGES_TO_CONCLUDE) -> str:
    """What a paired difference's 95 % CI over ``n`` images supports: ``"too few"`` below ``min_n``
    images (a percentile bootstrap over a handful of values is too narrow to trust), else
    ``"resolved"`` when the CI excludes 0 and ``"not resolved"`` when it contains 0."""
    if n < min_n:
        return "too few"
    return "resolved" if lo > 0 or hi < 0 else "not resolved"


def _bootstrap_settings(ev: Evaluation) -> tuple[int, int]:
    return ev.info["bootstrap"]["samples"], ev.info["bootstrap"]["seed"]


def best_on_set(ev: Evaluation, metric: str, image_set: ImageSet) -> dict | None:
    """The best and runner-up method on ``metric`` over exactly ``image_set``: both means, the paired
    difference best - runner-up with its bootstrap 95 % CI and :func:`ci_verdict`, all over the same
    images. None when no method of the set has the metric on all of its images."""
    methods = [m for m in image_set.methods
               if set(image_set.images) <= set(images_of(ev.per_image, m, metric))]
    if not methods or not image_set.n:
        return None
    means = means_on(ev.per_image, methods, metric, image_set.images)
    means = means.sort_values(ascending=not HIGHER_IS_BETTER[metric])
    out = {"metric": metric, "set": image_set, "best": means.index[0], "means": means}
    if len(means) >= 2:
        d, lo, hi, n = paired_difference(ev.per_image, means.index[0], means.index[1], metric,
                                         *_bootstrap_settings(ev), images=image_set.images)
        out.update({"runner_up": means.index[1], "diff": d, "lo": lo, "hi": hi, "n": n,
                    "verdict": ci_verdict(lo, hi, n)})
    return out


def subset_comparison(ev: Evaluation, image_set: ImageSet, metric: str = "psnr_hole") -> dict | None:
    """The method run on a subset (RePaint) against its closest relative (fine-tuned DDPM, else the best
    other method) over exactly that subset: both means and the paired difference with its CI and
    verdict. None when no other method has all of the subset's images."""
    method = image_set.subset_of
    others = [m for m in image_set.methods if m != method]
    if not others:
        return None
    other = ("ddpm_finetuned" if "ddpm_finetuned" in others
             else means_on(ev.per_image, others, metric, image_set.images).idxmax())
    means = means_on(ev.per_image, [method, other], metric, image_set.images)
    d, lo, hi, n = paired_difference(ev.per_image, method, other, metric, *_bootstrap_settings(ev),
                                     images=image_set.images)
    return {"method": method, "other": other, "metric": metric, "means": means, "diff": d, "lo": lo, "hi": hi,
            "n": n, "verdict": ci_verdict(lo, hi, n)}


def against_baseline(ev: Evaluation, image_set: ImageSet, baseline: str = "telea",
                     metric: str = "psnr_hole") -> dict | None:
    """The learned methods of ``image_set`` whose mean ``metric`` is above the classical baseline's
    (None when the baseline is not in the set)."""
    if baseline not in image_set.methods:
        return None
    learned = [m for m in image_set.methods if m != baseline]
    means = means_on(ev.per_image, list(image_set.methods), metric, image_set.images)
    return {"baseline": baseline, "baseline_mean": float(means[baseline]), "learned": learned,
            "higher": [m for m in learned if means[m] > means[baseline]]}


def study_ranking(ev: Evaluation, image_set: ImageSet) -> dict | None:
    """The study's ranking (SD + LoRA ahead of fine-tuned DDPM) checked on ``image_set``: the metrics
    compared (PSNR, SSIM, LPIPS when computed, FID when both have it) and those that agree."""
    if not {"sd_lora", "ddpm_finetuned"} <= set(image_set.methods):
        return None
    pair = ["sd_lora", "ddpm_finetuned"]
    agree, compared = [], []
    lpips_ok = not ev.per_image["lpips"].isna().all()
    for metric in ("psnr", "ssim") + (("lpips",) if lpips_ok else ()):
        m = means_on(ev.per_image, pair, metric, image_set.images)
        compared.append(metric)
        if (m["sd_lora"] > m["ddpm_finetuned"]) == HIGHER_IS_BETTER[metric]:
            agree.append(metric)
    summ = ev.summary.set_index("method")
    if "fid" in summ and not summ.loc[pair, "fid"].isna().any():
        compared.append("fid")
        if summ.loc["sd_lora", "fid"] < summ.loc["ddpm_finetuned", "fid"]:
            agree.append("fid")
    return {"compared": compared, "agree": agree}


def lowest_kid(ev: Evaluation, image_set: ImageSet) -> dict | None:
    """The method of ``image_set`` with the lowest KID, with its KID and spread (None without KID)."""
    summ = ev.summary.set_index("method")
    if "kid" not in summ:
        return None
    kids = summ.loc[list(image_set.methods), "kid"].astype(float).dropna()
    if not len(kids):
        return None
    w = kids.idxmin()
    return {"method": w, "kid": float(kids[w]), "kid_std": summ.loc[w].get("kid_std")}


def speed_range(ev: Evaluation) -> dict | None:
    """The fastest and slowest method in seconds per image, and the device when all ran on one
    (None with fewer than two timed methods)."""
    rt = ev.runtime.dropna(subset=["seconds_per_image"]) if not ev.runtime.empty else ev.runtime
    if len(rt) < 2:
        return None
    fast, slow = rt.loc[rt["seconds_per_image"].idxmin()], rt.loc[rt["seconds_per_image"].idxmax()]
    devices = {str(d) for d in rt["device"]}
    return {"fastest": fast["method"], "fastest_s": float(fast["seconds_per_image"]),
            "slowest": slow["method"], "slowest_s": float(slow["seconds_per_image"]),
            "device": devices.pop() if len(devices) == 1 else None}


def failure_cases(ev: Evaluation, k: int = 4) -> tuple[list[str], str]:
    """The ``k`` test images that are hardest across the scored methods: highest mean LPIPS when
    LPIPS is available, else lowest mean hole PSNR. Returns (names, the criterion in words)."""
    df = ev.per_image
    if df.empty:
        return [], "no scores"
    use_lpips = not df["lpips"].isna().all()
    metric = "lpips" if use_lpips else "psnr_hole"
    mean = df.groupby("name")[metric].mean()
    order = mean.sort_values(ascending=not use_lpips)
    return list(order.index[:k]), f"{'highest' if use_lpips else 'lowest'} mean {LABELS[metric]} across methods"
