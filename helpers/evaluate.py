"""The evaluation protocol, its tables and figures. Computed in notebook 05, presented in notebook 06.

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
5. a method without prediction files is listed as *missing*, with the reason, never dropped.

Tables go to ``reports/<preset>/tables/05_*.csv`` and ``05_evaluation.json``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from . import data as D
from . import metrics as M
from .common import get_device, load_json, paths, progress, save_json, to_uint8
from .config import Config

# ---------------------------------------------------------------- names shared by every table
NOTEBOOK_OF = {"ddpm_finetuned": "03_ddpm_inpainting", "ddpm_repaint": "03_ddpm_inpainting",
               "sd_zeroshot": "04_sd_lora", "sd_lora": "04_sd_lora", "telea": "05_evaluation"}
PER_IMAGE = ("psnr", "ssim", "psnr_hole", "ssim_hole", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "psnr_hole": True, "ssim_hole": True,
                    "lpips": False, "fid": False, "kid": False}
LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "psnr_hole": "hole PSNR (dB)", "ssim_hole": "hole SSIM",
          "lpips": "LPIPS", "fid": "FID", "kid": "KID"}
TABLES = {"per_image": "05_per_image.csv", "summary": "05_summary.csv", "by_bucket": "05_by_bucket.csv",
          "by_kind": "05_by_kind.csv", "runtime": "05_runtime.csv", "info": "05_evaluation.json"}

# The study this project reproduces: its reported numbers, never ours.
STUDY_SOURCE = "reported by the study"
STUDY_PROTOCOL = "the study's CelebA-HQ 256 test split and masks (its own protocol; not re-run here)"
STUDY = [
    {"method": "SD 1.5 inpainting + LoRA", "psnr": 23.45, "ssim": 0.845, "lpips": 0.112, "fid": 32.17},
    {"method": "DDPM fine-tuned", "psnr": 20.97, "ssim": 0.801, "lpips": 0.1625, "fid": 40.45},
]
# Published anchors on CelebA-HQ 256 (numbers as quoted in the project's issue; each with its protocol).
ANCHORS = [
    {"method": "LaMa (narrow masks)", "source": "Suvorov et al. 2022 (LaMa), Table: CelebA-HQ",
     "protocol": "CelebA-HQ 256, LaMa narrow masks", "n_images": 2000, "fid": 7.26, "lpips": 0.085},
    {"method": "LaMa (wide masks)", "source": "Suvorov et al. 2022 (LaMa), Table: CelebA-HQ",
     "protocol": "CelebA-HQ 256, LaMa wide masks", "n_images": 2000, "fid": 6.96, "lpips": 0.098},
    {"method": "RePaint (wide masks)", "source": "Lugmayr et al. 2022 (RePaint), CelebA-HQ",
     "protocol": "CelebA-HQ 256, LaMa wide masks", "n_images": 100, "lpips": 0.059},
    {"method": "RePaint (narrow masks)", "source": "Lugmayr et al. 2022 (RePaint), CelebA-HQ",
     "protocol": "CelebA-HQ 256, LaMa narrow masks", "n_images": 100, "lpips": 0.028},
    {"method": "DeepFill v2 (centre mask)", "source": "Yu et al. 2019 (DeepFill v2), as cited by the issue",
     "protocol": "CelebA-HQ 256, centre square mask", "n_images": None, "psnr": 25.55, "ssim": 0.801},
]


@dataclass
class Evaluation:
    """Everything notebook 05 computes and notebook 06 presents."""
    per_image: pd.DataFrame      # one row per (method, image)
    summary: pd.DataFrame        # one row per method (missing ones too): means, CIs, FID, KID, n
    by_bucket: pd.DataFrame      # long: method, group (hole-area bucket), n, metric, mean, lo, hi
    by_kind: pd.DataFrame        # long: method, group (mask kind), n, metric, mean, lo, hi
    runtime: pd.DataFrame        # one row per method with predictions, from its meta.json
    info: dict = field(default_factory=dict)  # implementations, resize mode, LPIPS status, missing...

    @property
    def missing(self) -> list[dict]:
        return self.info.get("missing", [])

    @property
    def methods(self) -> list[str]:
        """Methods that have scores, in the canonical order."""
        return [m for m in D.METHODS if m in set(self.per_image["method"])]


# ---------------------------------------------------------------- the classical baseline
def run_telea(cfg: Config, radius: int | None = None, root: Path | None = None, force: bool = False) -> Path:
    """OpenCV Telea (fast-marching, non-learned) on the frozen test set, saved as method ``telea``.

    Telea 2004: each hole pixel, in order of distance to the hole's boundary, gets a weighted
    average of the known pixels around it (weights by distance, level-set direction and
    proximity). Skipped when every test image already has a prediction (``force`` re-runs).
    """
    import cv2

    P = paths(cfg, root)
    test = D.load_test_set(cfg, root)
    out = P.predictions("telea")
    if not force and all((out / f"{n}.png").is_file() for n in test["name"]):
        return out
    radius = int(radius if radius is not None else cfg.eval.telea_radius)
    images, masks = to_uint8(test["image"]), test["mask"][:, 0].numpy()
    preds, start = [], time.perf_counter()
    for img, m in zip(progress(images, desc="Telea inpainting", leave=False), masks):
        # cv2.inpaint: 8-bit 3-channel image, 8-bit mask (non-zero = hole), radius in pixels
        filled = cv2.inpaint(np.ascontiguousarray(img), (m > 0.5).astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)
        preds.append(torch.from_numpy(filled).permute(2, 0, 1).float().div(127.5).sub(1.0))
    seconds = time.perf_counter() - start
    pred = D.composite(torch.stack(preds), test["image"], test["mask"])
    meta = {"weights": f"none: classical, non-learned OpenCV Telea (cv2.INPAINT_TELEA, OpenCV {cv2.__version__}, radius {radius})",
            "device": "cpu", "sample_seconds_per_image": seconds / len(preds), "images_per_s": len(preds) / seconds,
            "peak_memory_bytes": None, "trainable_params": 0, "total_params": 0, "train_seconds": 0,
            "note": "single CPU thread per image; no training"}
    return D.write_predictions(cfg, "telea", test["name"], pred, meta, root)


# ---------------------------------------------------------------- which predictions exist
def find_predictions(cfg: Config, method: str, names: Sequence[str], root: Path | None = None) -> dict:
    """{"names": test names with a prediction file, "reason": why the method is missing or partial}."""
    folder = paths(cfg, root).predictions(method)
    nb = NOTEBOOK_OF.get(method, "the notebook that produces it")
    if not folder.is_dir():
        return {"names": [], "reason": f"no prediction folder {folder}: run notebook {nb}"}
    have = [n for n in names if (folder / f"{n}.png").is_file()]
    if not have:
        n_files = len(list(folder.glob("*.png")))
        return {"names": [], "reason": f"{folder} holds {n_files} PNG files but none for this test set "
                                       f"({len(names)} images): re-run notebook {nb}"}
    reason = "" if len(have) == len(names) else f"scored on the {len(have)} of {len(names)} test images it has"
    return {"names": have, "reason": reason}


# ---------------------------------------------------------------- per-image scores
def score_images(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, device: torch.device,
                 batch_size: int = 50, lpips_fn=None, desc: str = "scoring") -> dict[str, np.ndarray]:
    """PSNR / SSIM (whole and hole), LPIPS (NaN when unavailable), batched on ``device``."""
    out = {k: [] for k in PER_IMAGE}
    for i in progress(range(0, len(pred), batch_size), desc=desc, leave=False):
        p, x, m = (t[i:i + batch_size].to(device) for t in (pred, image, mask))
        for k, v in M.pixel_scores(p, x, m).items():
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
    for method in [m for m in D.METHODS if m in set(per_image["method"])]:
        sub = per_image[per_image["method"] == method]
        for g in groups:
            part = sub[sub[by] == g]
            if part.empty:
                continue
            for metric in metrics:
                mean, lo, hi = M.bootstrap_ci(part[metric].to_numpy(), n_boot, seed)
                rows.append({"method": method, "label": D.METHODS[method], "group": g, "n": len(part),
                             "metric": metric, "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["method", "label", "group", "n", "metric", "mean", "lo", "hi"])


def _runtime_row(method: str, meta: dict) -> dict:
    def mib(v):
        return None if v in (None, "") else float(v) / 2**20
    return {"method": method, "label": D.METHODS[method], "weights": meta.get("weights", "not recorded"),
            "device": meta.get("device", "not recorded"),
            "seconds_per_image": meta.get("sample_seconds_per_image"), "images_per_s": meta.get("images_per_s"),
            "peak_memory_MiB": mib(meta.get("peak_memory_bytes")), "trainable_params": meta.get("trainable_params"),
            "total_params": meta.get("total_params"), "train_seconds": meta.get("train_seconds"),
            "train_images_per_s": meta.get("train_images_per_s"),
            "train_peak_memory_MiB": mib(meta.get("train_peak_memory_bytes")), "n_images": meta.get("n_images"),
            "note": meta.get("note", "")}


# ---------------------------------------------------------------- the whole protocol
def evaluate_all(cfg: Config, root: Path | None = None, methods: Sequence[str] | None = None,
                 device: torch.device | str | None = None) -> Evaluation:
    """Score every method on the frozen test set; save and return the tables (see module doc)."""
    P = paths(cfg, root)
    E = cfg.eval
    device = torch.device(device) if device is not None else get_device(cfg)
    methods = list(methods or D.METHODS)
    # 1. the frozen test set and the learned metrics' networks (found without downloading)
    test = D.load_test_set(cfg, root)
    names = list(test["name"])
    row_of = {n: i for i, n in enumerate(names)}
    lpips_fn, lpips_status = M.load_lpips(E.lpips_net, [P.cache], device)
    inception, fid_status = M.load_inception([P.cache], device, E.get("fid_backbone", "auto"))
    real_feats = (M.inception_features(inception, test["image"], E.batch_size, "Inception: real test images")
                  if inception is not None else None)
    # 2. each method: read, re-composite, score per image and as a set
    frames, summary, runtime, missing, method_info = [], [], [], [], {}
    for method in progress(methods, desc="methods"):
        found = find_predictions(cfg, method, names, root)
        if not found["names"]:
            missing.append({"method": method, "label": D.METHODS[method], "reason": found["reason"]})
            summary.append({"method": method, "label": D.METHODS[method], "status": "missing", "n": 0,
                            "note": found["reason"]})
            continue
        idx = [row_of[n] for n in found["names"]]
        image, mask = test["image"][idx], test["mask"][idx]
        raw, meta = D.read_predictions(cfg, method, found["names"], root)
        if raw.shape != image.shape:
            reason = (f"predictions are {tuple(raw.shape[1:])}, the test images {tuple(image.shape[1:])}: "
                      f"re-run notebook {NOTEBOOK_OF[method]} at data.image_size")
            missing.append({"method": method, "label": D.METHODS[method], "reason": reason})
            summary.append({"method": method, "label": D.METHODS[method], "status": "missing", "n": 0, "note": reason})
            continue
        pred = D.composite(raw, image, mask)
        known_change = int((M.to_levels(raw) - M.to_levels(image)).abs().mul(1 - mask).amax().item())
        scores = score_images(pred, image, mask, device, E.batch_size, lpips_fn, f"scoring {method}")
        frames.append(pd.DataFrame({"method": method, "label": D.METHODS[method], "name": found["names"],
                                    "kind": [test["kind"][i] for i in idx],
                                    "hole_fraction": [test["hole_fraction"][i] for i in idx], **scores}))
        row = {"method": method, "label": D.METHODS[method], "status": "ok" if not found["reason"] else "partial",
               "n": len(idx), "note": found["reason"], "weights": meta.get("weights", "not recorded")}
        for metric in PER_IMAGE:
            row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"] = M.bootstrap_ci(
                scores[metric], E.bootstrap_samples, cfg.seed)
        if inception is not None and len(idx) >= 2:
            fake = M.inception_features(inception, pred, E.batch_size, f"Inception: {method}")
            row["fid"] = M.fid_from_features(real_feats[idx], fake)
            row["kid"], row["kid_std"], row["kid_subset_size"] = M.kid_from_features(
                real_feats[idx], fake, E.kid_subset_size, E.kid_subsets, cfg.seed)
            row["fid_n"] = len(idx)
        summary.append(row)
        runtime.append(_runtime_row(method, meta))
        method_info[method] = {"n": len(idx), "known_pixels_max_change_before_composite": known_change,
                               "weights": meta.get("weights", "not recorded")}
    # 3. tables: per image, summary, by hole-area bucket and mask kind, runtime
    per_image = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["method", "label", "name", "kind", "hole_fraction", *PER_IMAGE])
    per_image["bucket"] = hole_bucket(per_image["hole_fraction"].to_numpy(dtype=float), E.hole_buckets)
    kinds = [k for k in cfg.data.masks.kinds if k in set(per_image["kind"])]
    by_bucket = _grouped(per_image, "bucket", PER_IMAGE, E.bootstrap_samples, cfg.seed, bucket_labels(E.hole_buckets))
    by_kind = _grouped(per_image, "kind", PER_IMAGE, E.bootstrap_samples, cfg.seed, kinds)
    info = {
        "preset": cfg.preset, "n_test": len(names), "image_size": cfg.data.image_size, "device": str(device),
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
        "hole_buckets": list(E.hole_buckets), "missing": missing, "methods": method_info,
    }
    ev = Evaluation(per_image, pd.DataFrame(summary), by_bucket, by_kind,
                    pd.DataFrame(runtime, columns=list(_runtime_row("telea", {}))), info)
    save_evaluation(ev, P.tables)
    return ev


def save_evaluation(ev: Evaluation, folder: Path) -> None:
    folder = Path(folder)
    for key in ("per_image", "summary", "by_bucket", "by_kind", "runtime"):
        getattr(ev, key).to_csv(folder / TABLES[key], index=False)
    save_json(ev.info, folder / TABLES["info"])


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
    return Evaluation(**frames, info=load_json(folder / TABLES["info"]))


# ---------------------------------------------------------------- tables for people
def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


SHORT = {"psnr": "PSNR", "ssim": "SSIM", "psnr_hole": "hole dB", "ssim_hole": "hole SSIM", "lpips": "LPIPS"}
DIGITS = {"psnr": 2, "psnr_hole": 2, "ssim": 3, "ssim_hole": 3, "lpips": 3, "fid": 2, "kid": 4}


def _get(row, key):
    v = row.get(key) if hasattr(row, "get") else None
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def format_summary(ev: Evaluation) -> pd.DataFrame:
    """The main table as text: mean [95 % CI] per metric, FID and KID with their n, missing rows kept."""
    lpips_ok = ev.info.get("lpips", {}).get("available", False)
    rows = []
    for _, r in ev.summary.iterrows():
        out = {"method": r["label"], "n": int(r["n"])}
        if r["status"] == "missing":
            out.update({LABELS[m]: "missing" for m in PER_IMAGE})
            out.update({"FID": "missing", "KID": "missing", "weights / note": r.get("note", "")})
            rows.append(out)
            continue
        for m in PER_IMAGE:
            if m == "lpips" and not lpips_ok:
                out[LABELS[m]] = "unavailable"
                continue
            d = DIGITS[m]
            out[LABELS[m]] = f"{_fmt(_get(r, m), d)} [{_fmt(_get(r, m + '_lo'), d)}, {_fmt(_get(r, m + '_hi'), d)}]"
        fid = _get(r, "fid")
        out["FID"] = f"{_fmt(fid, 2)} (n={int(r['fid_n'])})" if fid is not None else "unavailable"
        kid = _get(r, "kid")
        out["KID"] = (f"{_fmt(kid, 4)} ± {_fmt(_get(r, 'kid_std'), 4)} (subsets of {int(r['kid_subset_size'])})"
                      if kid is not None else "unavailable")
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        out["weights / note"] = "; ".join(x for x in (str(r.get("weights", "")), note) if x and x != "nan")
        rows.append(out)
    return pd.DataFrame(rows).set_index("method")


def table_caption(ev: Evaluation) -> str:
    """What every number in the tables is: implementation, resize mode, LPIPS backbone/version, n."""
    i = ev.info
    lp, fid = i["lpips"], i["fid"]
    lpips_txt = (f"LPIPS: {lp['implementation']}, backbone weights {lp['weights']}" if lp["available"]
                 else f"LPIPS: **unavailable** - {lp['reason'].rstrip('.')}")
    fid_txt = (f"FID / KID: {fid['implementation']}; weights {fid['weights']}; resize: {fid['resize']}"
               if fid["available"] else f"FID / KID: **unavailable** - {fid['reason'].rstrip('.')}")
    return "\n".join([
        f"* Test set: {i['n_test']} frozen images and masks at {i['image_size']} px; {i['protocol']}.",
        f"* PSNR / SSIM: {i['psnr_ssim']}.",
        f"* {lpips_txt}.",
        f"* {fid_txt}. FID and KID compare each method with the real test images of the same names; "
        f"FID on n images is biased upward for small n (compare only at equal n); KID "
        f"({i['kid']['estimator']}, kernel {i['kid']['kernel']}, {i['kid']['subsets']} subsets) is unbiased.",
        f"* Brackets: {i['bootstrap']['kind']}, 95 %, {i['bootstrap']['samples']} resamples, seed {i['bootstrap']['seed']}.",
    ])


def format_runtime(ev: Evaluation) -> pd.DataFrame:
    """Runtime table: seconds per image, images/s, peak memory, parameters, with the weights used."""
    if ev.runtime.empty:
        return pd.DataFrame(columns=["method"])
    df = ev.runtime.copy()

    def num(v, fmt):
        return "not recorded" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
    out = pd.DataFrame({
        "method": df["label"], "device": df["device"],
        "s / image": [num(v, ".3g") for v in df["seconds_per_image"]],
        "images / s": [num(v, ".3g") for v in df["images_per_s"]],
        "peak memory (MiB)": [num(v, ",.0f") if not (isinstance(v, float) and math.isnan(v)) else "not measured (CPU)"
                              for v in df["peak_memory_MiB"]],
        "trainable params": [num(v, ",.0f") for v in df["trainable_params"]],
        "total params": [num(v, ",.0f") for v in df["total_params"]],
        "weights": df["weights"]})
    return out.set_index("method")


def comparison_table(ev: Evaluation, preset: str) -> pd.DataFrame:
    """Our rows beside the study's reported numbers and published anchors, each with source,
    protocol and number of images. Only the "this run" rows are measured here."""
    rows = []
    ours_protocol = (f"this run ({preset}): {ev.info['n_test']} frozen test images, "
                     f"{ev.info['image_size']} px, masks {'/'.join(sorted(set(ev.per_image['kind'])))}")
    lpips_ok = ev.info.get("lpips", {}).get("available", False)
    for _, r in ev.summary.iterrows():
        if r["status"] == "missing":
            rows.append({"method": r["label"], "source": "this run", "protocol": "missing: " + str(r.get("note", "")),
                         "n images": 0})
            continue
        rows.append({"method": r["label"], "source": "this run (measured)", "protocol": ours_protocol,
                     "n images": int(r["n"]), "PSNR": _get(r, "psnr"), "SSIM": _get(r, "ssim"),
                     "LPIPS": _get(r, "lpips") if lpips_ok else None, "FID": _get(r, "fid")})
    for s in STUDY:
        rows.append({"method": s["method"], "source": STUDY_SOURCE, "protocol": STUDY_PROTOCOL,
                     "n images": "not stated", "PSNR": s["psnr"], "SSIM": s["ssim"], "LPIPS": s["lpips"], "FID": s["fid"]})
    for a in ANCHORS:
        rows.append({"method": a["method"], "source": a["source"] + " (published)", "protocol": a["protocol"],
                     "n images": a["n_images"] if a["n_images"] else "not stated", "PSNR": a.get("psnr"),
                     "SSIM": a.get("ssim"), "LPIPS": a.get("lpips"), "FID": a.get("fid")})
    df = pd.DataFrame(rows)
    for col, d in (("PSNR", 2), ("SSIM", 3), ("LPIPS", 3), ("FID", 2)):
        df[col] = [_fmt(v, d) if v is not None else "-" for v in df.get(col, [None] * len(df))]
    return df.set_index("method")


# ---------------------------------------------------------------- statements from the numbers
def paired_difference(per_image: pd.DataFrame, a: str, b: str, metric: str, n_boot: int = 1000,
                      seed: int = 0) -> tuple[float, float, float, int]:
    """Mean of metric(a) - metric(b) over the images both methods have, with its percentile
    bootstrap 95 % CI (paired: the same images are resampled for both). Returns (mean, lo, hi, n)."""
    pa = per_image[per_image["method"] == a].set_index("name")[metric]
    pb = per_image[per_image["method"] == b].set_index("name")[metric]
    common = pa.index.intersection(pb.index)
    diff = (pa[common] - pb[common]).to_numpy(dtype=float)
    mean, lo, hi = M.bootstrap_ci(diff, n_boot, seed)
    return mean, lo, hi, len(common)


def common_means(per_image: pd.DataFrame, metric: str) -> tuple[pd.Series, int]:
    """Each method's mean of a per-image ``metric`` over the images **every** method was scored on
    (RePaint may run on a subset: means over different images must not be ranked). Returns
    (method -> mean, number of common images); methods without values for the metric are left out."""
    df = per_image.dropna(subset=[metric])
    if df.empty:
        return pd.Series(dtype=float), 0
    wide = df.pivot(index="name", columns="method", values=metric).dropna()
    return wide.mean().astype(float), len(wide)


def best_methods(ev: Evaluation) -> dict[str, str]:
    """metric -> the method with the best mean (higher PSNR/SSIM, lower LPIPS/FID/KID). Per-image
    metrics compare means over the images all methods share (:func:`common_means`); FID and KID
    are set-level, so they compare each method's own value (the text states n)."""
    out = {}
    ok = ev.summary[ev.summary["status"] != "missing"]
    for metric, higher in HIGHER_IS_BETTER.items():
        if metric in PER_IMAGE:
            col, n = common_means(ev.per_image, metric) if not ev.per_image.empty else (pd.Series(dtype=float), 0)
            if n:
                out[metric] = col.idxmax() if higher else col.idxmin()
            continue
        if metric not in ok or ok[metric].isna().all():
            continue
        col = ok[metric].astype(float)
        out[metric] = ok.loc[col.idxmax() if higher else col.idxmin(), "method"]
    return out


def smoke_warning(cfg: Config) -> str:
    """The plain statement every smoke slide deck carries ("" for other presets)."""
    if cfg.preset != "smoke":
        return ""
    return ("**Smoke preset: the models are tiny, randomly initialised and trained for a few steps on "
            f"{cfg.data.image_size}-px crops of a handful of bundled photos, on a CPU. These numbers prove "
            "only that the pipeline runs end to end; they say nothing about DDPM or Stable Diffusion.**")


def conclusions(ev: Evaluation, cfg: Config) -> str:
    """Markdown bullet points that follow from the measured numbers (nothing copied from the study)."""
    lines = []
    warn = smoke_warning(cfg)
    if warn:
        lines.append(f"* {warn}")
    for m in ev.missing:
        lines.append(f"* **{m['label']}** was not scored: {m['reason']}.")
    if ev.per_image.empty:
        return "\n".join(lines + ["* No method has predictions yet: nothing to conclude."])
    best = best_methods(ev)
    summ = ev.summary.set_index("method")
    n_boot, seed = ev.info["bootstrap"]["samples"], ev.info["bootstrap"]["seed"]
    # 1. the best method per metric, and whether its lead over the runner-up is resolved
    # whole-image PSNR is left out: after compositing, PSNR_i = PSNR_hole_i - 10 log10(f_i) for
    # image i with hole fraction f_i, so on the same images it ranks methods exactly as hole PSNR
    for metric in ("psnr_hole", "ssim_hole", "ssim", "lpips"):
        if metric not in best:
            continue
        winner = best[metric]
        col, n_common = common_means(ev.per_image, metric)
        others = col.drop(winner)
        own_n = summ.loc[list(col.index), "n"].astype(int)
        where = "" if (own_n == n_common).all() else f" on the {n_common} images every method was scored on"
        text = f"* Best {LABELS[metric]}{where}: **{D.METHODS[winner]}** ({_fmt(col[winner], DIGITS[metric])}"
        if others.empty:
            lines.append(text + "; the only method scored).")
            continue
        runner = others.idxmax() if HIGHER_IS_BETTER[metric] else others.idxmin()
        d, lo, hi, n = paired_difference(ev.per_image, winner, runner, metric, n_boot, seed)
        resolved = (lo > 0 or hi < 0) if n >= 2 else False
        lines.append(text + f" vs {D.METHODS[runner]} {_fmt(col[runner], DIGITS[metric])}; paired difference "
                     f"{_fmt(d, DIGITS[metric])} [{_fmt(lo, DIGITS[metric])}, {_fmt(hi, DIGITS[metric])}] on {n} images: "
                     + ("the 95 % CI excludes 0)." if resolved else "the 95 % CI includes 0, not resolved at this n)."))
    caveat = {"fid": "FID is biased upward at small n, so compare it only between methods with the same n",
              "kid": "KID is unbiased but noisy at small n: compare its ± std across methods"}
    for metric in ("fid", "kid"):
        if metric in best:
            w = best[metric]
            lines.append(f"* Lowest {LABELS[metric]}: **{D.METHODS[w]}** ({_fmt(summ.loc[w, metric], DIGITS[metric])}, "
                         f"n={int(summ.loc[w, 'n'])}); {caveat[metric]}.")
    # 2. learned methods against the classical baseline on the hole
    if "telea" in summ.index and summ.loc["telea", "status"] != "missing":
        learned = [m for m in ev.methods if m != "telea"]
        beat = [D.METHODS[m] for m in learned if summ.loc[m, "psnr_hole"] > summ.loc["telea", "psnr_hole"]]
        if not learned:
            verdict = "no learned method was scored, so none can be compared with it."
        elif beat:
            verdict = f"{len(beat)} of {len(learned)} learned methods score higher ({', '.join(beat)})."
        else:
            verdict = f"none of the {len(learned)} learned methods scored here is higher."
        lines.append(f"* Against OpenCV Telea (hole PSNR {_fmt(summ.loc['telea', 'psnr_hole'], 2)} dB): {verdict}")
    # 3. the study's ranking (SD + LoRA ahead of fine-tuned DDPM on all four metrics) on our numbers
    if {"sd_lora", "ddpm_finetuned"} <= set(ev.methods):
        agree = [LABELS[m] for m in ("psnr", "ssim", "lpips", "fid")
                 if m in summ and not pd.isna(summ.loc["sd_lora", m]) and not pd.isna(summ.loc["ddpm_finetuned", m])
                 and ((summ.loc["sd_lora", m] > summ.loc["ddpm_finetuned", m]) == HIGHER_IS_BETTER[m])]
        comparable = [m for m in ("psnr", "ssim", "lpips", "fid")
                      if m in summ and not pd.isna(summ.loc["sd_lora", m]) and not pd.isna(summ.loc["ddpm_finetuned", m])]
        lines.append(f"* The study reports SD 1.5 + LoRA ahead of fine-tuned DDPM on PSNR, SSIM, LPIPS and FID. "
                     f"Here SD + LoRA is ahead on {len(agree)} of the {len(comparable)} we could measure"
                     + (f" ({', '.join(agree)})." if agree else "."))
    # 4. speed
    rt = ev.runtime.dropna(subset=["seconds_per_image"]) if not ev.runtime.empty else ev.runtime
    if len(rt) >= 2:
        fast, slow = rt.loc[rt["seconds_per_image"].idxmin()], rt.loc[rt["seconds_per_image"].idxmax()]
        def where(r):
            return f" on {r['device']}" if isinstance(r["device"], str) and r["device"] != "not recorded" else ""
        lines.append(f"* Sampling speed: fastest {fast['label']} ({fast['seconds_per_image']:.3g} s/image{where(fast)}), "
                     f"slowest {slow['label']} ({slow['seconds_per_image']:.3g} s/image{where(slow)}).")
    return "\n".join(lines)


def methods_overview(ev: Evaluation) -> pd.DataFrame:
    """One row per method: status, n images scored, the weights it used (or why it is missing)."""
    rows = []
    for _, r in ev.summary.iterrows():
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        weights = r.get("weights") if isinstance(r.get("weights"), str) else ""
        rows.append({"method": r["label"], "status": r["status"], "n images": int(r["n"]),
                     "weights used / reason": weights if r["status"] != "missing" else note,
                     "note": note if r["status"] == "partial" else ""})
    return pd.DataFrame(rows).set_index("method")


def limitations(ev: Evaluation, cfg: Config) -> str:
    """What the numbers cannot say, from this run's own settings."""
    i = ev.info
    lines = [f"* {i['n_test']} test images at {i['image_size']} px and one sampling seed: the CIs cover the "
             "choice of images, not the randomness of the samplers or of training.",
             "* FID compares each method with the real images of the same names; at this n it is biased "
             "upward, so rows with different n are not comparable (KID is the fairer set-level number).",
             "* The study's and the published numbers come from other test sets, masks, resolutions and "
             "numbers of images: they are anchors for scale, not rows of our table."]
    if not i["lpips"]["available"]:
        lines.append(f"* LPIPS was not computed: {i['lpips']['reason']}")
    if not i["fid"]["available"]:
        lines.append(f"* FID / KID were not computed: {i['fid']['reason']}")
    if cfg.preset == "smoke":
        lines.append("* Smoke preset: tiny random models, a few training steps, CPU: the pipeline is exercised, "
                     "the methods are not.")
    return "\n".join(lines)


def table(df: pd.DataFrame):
    """Display helper: a table as HTML with every cell's full text (pandas would cut long notes)."""
    from IPython.display import HTML
    with pd.option_context("display.max_colwidth", None):
        return HTML(df.to_html(escape=True, na_rep="-"))


def markdown(text: str):
    """Display helper: markdown text as a notebook output (the slides hide code, not outputs)."""
    from IPython.display import Markdown
    return Markdown(text)


# ---------------------------------------------------------------- figures
def _colors(methods: Sequence[str]) -> dict:
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i) for i, m in enumerate(D.METHODS) if m in methods}


def plot_bars(ev: Evaluation, metrics: Sequence[str] = ("psnr_hole", "ssim_hole", "psnr", "ssim", "lpips", "fid", "kid"),
              path: Path | None = None, title: str | None = None):
    """One panel per metric, one bar per method: mean with its bootstrap 95 % CI (KID: ± std over
    subsets; FID: no interval, n in the label). Metrics nobody could compute are left out."""
    import matplotlib.pyplot as plt
    from .plots import save

    ok = ev.summary[ev.summary["status"] != "missing"].copy()
    metrics = [m for m in metrics if m in ok and not ok[m].isna().all()]
    if not metrics:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off"), ax.text(0.5, 0.5, "no scores to plot", ha="center")
        return save(fig, path)
    colors = _colors(list(ok["method"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        vals = ok[metric].astype(float).to_numpy()
        if metric == "kid":
            err = np.vstack([ok["kid_std"], ok["kid_std"]]).astype(float)
        elif metric in PER_IMAGE:
            err = np.vstack([vals - ok[f"{metric}_lo"].astype(float), ok[f"{metric}_hi"].astype(float) - vals])
        else:
            err = None
        x = np.arange(len(ok))
        ax.bar(x, vals, yerr=err, capsize=3, color=[colors[m] for m in ok["method"]])
        ax.set_xticks(x, [f"{m}\n(n={int(n)})" for m, n in zip(ok["method"], ok["n"])], rotation=60, fontsize=7)
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        ax.set_title(f"{LABELS[metric]} {arrow}", fontsize=9)
    fig.suptitle(title or "mean and 95 % bootstrap CI over images (KID: ± std over subsets)", fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def plot_vs_hole(ev: Evaluation, metrics: Sequence[str] = ("psnr_hole", "ssim_hole", "lpips"),
                 path: Path | None = None, by: str = "bucket"):
    """Metric against hole-area bucket (``by="bucket"``) or mask kind (``by="kind"``): one line per
    method with its 95 % CI band; the number of images in each group is on the x axis."""
    import matplotlib.pyplot as plt
    from .plots import save

    table = ev.by_bucket if by == "bucket" else ev.by_kind
    metrics = [m for m in metrics if not table[table["metric"] == m]["mean"].isna().all()] if not table.empty else []
    if not metrics:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off"), ax.text(0.5, 0.5, "no scores to plot", ha="center")
        return save(fig, path)
    groups = (bucket_labels(ev.info["hole_buckets"]) if by == "bucket"
              else [g for g in dict.fromkeys(table["group"])])
    colors = _colors(list(table["method"].unique()))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for method in [m for m in D.METHODS if m in set(table["method"])]:
            t = table[(table["method"] == method) & (table["metric"] == metric)].set_index("group")
            t = t.reindex([g for g in groups if g in t.index])
            x = [groups.index(g) for g in t.index]
            ax.plot(x, t["mean"], "o-", color=colors[method], label=method, ms=3)
            ax.fill_between(x, t["lo"].astype(float), t["hi"].astype(float), color=colors[method], alpha=0.15)
        n_per_group = ev.per_image.drop_duplicates("name").groupby(by).size() if not ev.per_image.empty else {}
        ax.set_xticks(range(len(groups)), [f"{g}\n(n={int(n_per_group.get(g, 0))})" for g in groups], fontsize=7)
        ax.set_xlabel("hole area" if by == "bucket" else "mask kind", fontsize=8)
        ax.set_title(f"{LABELS[metric]} {'↑' if HIGHER_IS_BETTER[metric] else '↓'}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


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


def qualitative_grid(cfg: Config, names: Sequence[str], path: Path | None = None, title: str | None = None,
                     root: Path | None = None, ev: Evaluation | None = None, metric: str = "psnr_hole"):
    """Rows = test images; columns = masked input | mask | each method | ground truth. A method
    without a prediction for an image shows an empty cell (its column title says "missing")."""
    from .plots import image_grid

    test = D.load_test_set(cfg, root)
    row_of = {n: i for i, n in enumerate(test["name"])}
    names = [n for n in names if n in row_of]
    cols, rows, titles = list(D.METHODS), [], ["masked input", "mask (white = hole)"]
    have = {m: find_predictions(cfg, m, names, root)["names"] for m in cols}
    titles += [f"{m}{'' if have[m] else ' (missing)'}" for m in cols] + ["ground truth"]
    row_titles = []
    for n in names:
        i = row_of[n]
        x, m = test["image"][i], test["mask"][i]
        row = [D.masked_image(x, m), m]
        for method in cols:
            if n in have[method]:
                p, _ = D.read_predictions(cfg, method, [n], root)
                row.append(D.composite(p[0], x, m))
            else:
                row.append(None)
        rows.append(row + [x])
        label = f"{test['kind'][i]}, {test['hole_fraction'][i]:.0%} hole"
        if ev is not None and not ev.per_image.empty:
            s = ev.per_image[ev.per_image["name"] == n][metric]
            if len(s):
                label += f"\nmean {SHORT[metric]} {s.mean():.3g}"
        row_titles.append(label)
    return image_grid(rows, titles, row_titles, path=path, title=title)
