"""What an :class:`helpers.evaluate.Evaluation` says, for people: formatted tables, statements that
follow from the numbers, figures. Notebook 05 shows them as it computes, notebook 06 presents them.

Nothing here computes a score: every number comes from the evaluation (or, for the study and the
published anchors, from their sources, labelled as such)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import data as D
from .config import Config
from .evaluate import (HIGHER_IS_BETTER, LABELS, PER_IMAGE, Evaluation, best_methods, bucket_labels, common_means,
                       find_predictions, paired_difference)

# The study this project reproduces: its reported numbers, never ours. Cite it by its title
# wherever one of its numbers appears.
STUDY_TITLE = "Image Completion: DDPM vs. Stable Diffusion"
STUDY_AUTHORS = "Nguyễn Thị Thanh Huyền, Nguyễn Thị Minh Ly, Đặng Minh Nguyệt"
STUDY_SUPERVISORS = "PGS.TS. Nguyễn Việt Hà and ThS. Nguyễn Thị Thùy Linh"
STUDY_CITATION = (f"“{STUDY_TITLE}” ({STUDY_AUTHORS}; supervised by {STUDY_SUPERVISORS}), "
                  "a student project")
STUDY_SOURCE = f"the study “{STUDY_TITLE}”"
STUDY_PROTOCOL = "the study's CelebA-HQ 256 test split and masks (its own protocol; not re-run here)"
STUDY = [  # "id": our method that the row stands beside
    {"id": "sd_lora", "method": "SD 1.5 inpainting + LoRA", "psnr": 23.45, "ssim": 0.845, "lpips": 0.112, "fid": 32.17},
    {"id": "ddpm_finetuned", "method": "DDPM fine-tuned", "psnr": 20.97, "ssim": 0.801, "lpips": 0.1625, "fid": 40.45},
]
# Published anchors on CelebA-HQ 256: each entry names the paper (and its table) where its numbers
# are printed, with that paper's protocol and number of test images, e.g.
#   {"method": "RePaint (wide masks)", "short_source": "RePaint paper",
#    "source": "Lugmayr et al., RePaint: ..., CVPR 2022 (arXiv:2201.09865), Table 1", "protocol": ...,
#    "n_images": 100, "lpips": ...}
# None is listed yet: the LaMa, RePaint and DeepFill v2 numbers quoted earlier could not be found in
# the papers' text from here, and a number is shown only once its source has been checked.
ANCHORS: list[dict] = []


# ---------------------------------------------------------------- text fit to publish
def public_text(text, roots: Sequence[Path] = ()) -> str:
    """``text`` without this machine's paths: a path inside the project (or one of ``roots``)
    becomes relative to it, a file inside an installed package is named by its package, the home
    folder becomes ``~``. Exported slides and reports carry no machine's paths or user names."""
    import os
    import re
    import sys
    import sysconfig

    from .config import ROOT

    if not isinstance(text, str):
        return "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    site = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    site |= {p for p in sys.path if p.rstrip("/").endswith("site-packages")}
    for d in sorted(site, key=len, reverse=True):
        text = text.replace(d.rstrip("/") + "/", "package ")
    bases = [Path(r) for r in roots] + [ROOT]
    if os.environ.get("INPAINT_ROOT"):
        bases.append(Path(os.environ["INPAINT_ROOT"]))
    for base in sorted({str(b.resolve()).rstrip("/") for b in bases}, key=len, reverse=True):
        text = re.sub(re.escape(base) + r"/?", "", text)
    # outputs written from another checkout (a moved or copied project): cut at its reports/ or data/
    text = re.sub(r"(?:/[^\s/;,()]+)+/(?=(?:reports|data)/)", "", text)
    home = str(Path.home()).rstrip("/")
    if len(home) > 1:
        text = text.replace(home + "/", "~/").replace(home, "~")
    return text


def first_sentence(text: str) -> str:
    """The statement of a reason without the instructions after it."""
    text = (text or "").strip()
    cut = text.find(". ")
    return (text[:cut] if cut > 0 else text).rstrip(".")


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


def _short(method: str) -> str:
    return D.SHORT_LABELS.get(method, method)


def _ci(r, m) -> str:
    d = DIGITS[m]
    return f"{_fmt(_get(r, m), d)} [{_fmt(_get(r, m + '_lo'), d)}, {_fmt(_get(r, m + '_hi'), d)}]"


def format_summary(ev: Evaluation) -> pd.DataFrame:
    """The main table, per-image metrics: mean [95 % CI] per method (short labels), missing rows
    kept. FID and KID, which score a set of images, are in :func:`format_set_metrics`."""
    lpips_ok = ev.info.get("lpips", {}).get("available", False)
    rows = []
    for _, r in ev.summary.iterrows():
        out = {"method": _short(r["method"]), "n": int(r["n"])}
        for m in ("psnr_hole", "ssim_hole", "psnr", "ssim", "lpips"):
            if r["status"] == "missing":
                out[LABELS[m]] = "missing"
            elif m == "lpips" and not lpips_ok:
                out[LABELS[m]] = "not computed"
            else:
                out[LABELS[m]] = _ci(r, m)
        rows.append(out)
    return pd.DataFrame(rows).set_index("method")


def format_set_metrics(ev: Evaluation) -> pd.DataFrame:
    """FID and KID per method (short labels), each with the number of images it compares."""
    rows = []
    for _, r in ev.summary.iterrows():
        out = {"method": _short(r["method"]), "n": int(r["n"])}
        fid, kid = _get(r, "fid"), _get(r, "kid")
        if r["status"] == "missing":
            out.update({"FID ↓": "missing", "KID ↓ (± std over subsets)": "missing"})
        else:
            out["FID ↓"] = f"{_fmt(fid, 2)} (n={int(r['fid_n'])})" if fid is not None else "not computed"
            out["KID ↓ (± std over subsets)"] = (f"{_fmt(kid, 4)} ± {_fmt(_get(r, 'kid_std'), 4)}"
                                                 if kid is not None else "not computed")
        rows.append(out)
    return pd.DataFrame(rows).set_index("method")


def set_metrics_note(ev: Evaluation) -> str:
    """What to read into the FID/KID table at this n, including a KID below zero."""
    i = ev.info
    lines = [f"FID on n images is biased upward for small n: compare it only between rows with the same n. "
             f"KID ({i['kid']['estimator']}, subsets of {i['kid']['subset_size']}, {i['kid']['subsets']} subsets) "
             "is unbiased."]
    kid = ev.summary["kid"] if "kid" in ev.summary else pd.Series(dtype=float)
    neg = [_short(m) for m, v in zip(ev.summary["method"], kid) if isinstance(v, float) and v < 0]
    if neg:
        lines.append(f"KID estimates a squared distance, so its true value is ≥ 0; being unbiased, the estimate "
                     f"scatters around it and can fall below 0 at small n ({', '.join(neg)}): read a negative "
                     "KID as no measurable difference from the real images at this n, not as better than zero.")
    return "\n\n".join(lines)


def table_caption(ev: Evaluation) -> str:
    """How every number in the tables was measured, in the few lines a slide holds."""
    i = ev.info
    lp, fid = i["lpips"], i["fid"]
    lpips_txt = (f"LPIPS: {lp['name']}" if lp["available"]
                 else f"LPIPS: **not computed** ({public_text(first_sentence(lp['reason']))})")
    fid_txt = (f"FID / KID: {fid['name']}, {fid['implementation']}" if fid["available"]
               else f"FID / KID: **not computed** ({public_text(first_sentence(fid['reason']))})")
    return "\n".join([
        f"* Test set: {i['n_test']} frozen images and masks at {i['image_size']} px; known pixels pasted back "
        "before scoring, so only the hole differs.",
        "* PSNR / SSIM on the whole image and on the hole alone (own code, equal to scikit-image's).",
        f"* {lpips_txt}.",
        f"* {fid_txt}; each method against the real test images of the same names.",
        f"* Brackets: 95 % {i['bootstrap']['kind']} ({i['bootstrap']['samples']} resamples).",
    ])


def protocol_details(ev: Evaluation) -> str:
    """Every detail of the measurement protocol, for the HTML report (too long for a slide)."""
    i = ev.info
    lp, fid = i["lpips"], i["fid"]
    lpips_txt = (f"LPIPS: {lp['implementation']}, backbone weights {public_text(lp['weights'])}" if lp["available"]
                 else f"LPIPS: not computed: {public_text(first_sentence(lp['reason']))}")
    fid_txt = (f"FID / KID: {fid['implementation']}; weights {public_text(fid['weights'])}; resize: {fid['resize']}"
               if fid["available"] else f"FID / KID: not computed: {public_text(first_sentence(fid['reason']))}")
    return "\n".join([
        f"* Test set: {i['n_test']} frozen images and masks at {i['image_size']} px; {i['protocol']}.",
        f"* PSNR / SSIM: {i['psnr_ssim']}.",
        f"* {lpips_txt}.",
        f"* {fid_txt}. FID and KID compare each method with the real test images of the same names; "
        f"FID on n images is biased upward for small n (compare only at equal n); KID "
        f"({i['kid']['estimator']}, kernel {i['kid']['kernel']}, {i['kid']['subsets']} subsets of "
        f"{i['kid']['subset_size']}) is unbiased.",
        f"* Brackets: {i['bootstrap']['kind']}, 95 %, {i['bootstrap']['samples']} resamples, seed {i['bootstrap']['seed']}.",
    ])


def format_runtime(ev: Evaluation) -> pd.DataFrame:
    """Runtime table: seconds per image, images/s, peak memory, parameters (short labels; the
    weights each method used are in :func:`weights_table`)."""
    if ev.runtime.empty:
        return pd.DataFrame(columns=["method"])
    df = ev.runtime.copy()

    def num(v, fmt, missing="not recorded"):
        return missing if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
    out = pd.DataFrame({
        "method": [_short(m) for m in df["method"]], "device": df["device"],
        "s / image": [num(v, ".3g") for v in df["seconds_per_image"]],
        "images / s": [num(v, ".3g") for v in df["images_per_s"]],
        "peak memory (MiB)": [num(v, ",.0f", "n/a (CPU)") for v in df["peak_memory_MiB"]],
        "trained params": [num(v, ",.0f") for v in df["trainable_params"]],
        "total params": [num(v, ",.0f") for v in df["total_params"]]})
    return out.set_index("method")


def weights_table(ev: Evaluation) -> pd.DataFrame:
    """The weights each method used (or why it is missing), without this machine's paths: the
    detail behind the short labels, for the HTML report."""
    rows = []
    for _, r in ev.summary.iterrows():
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        weights = r.get("weights") if isinstance(r.get("weights"), str) else ""
        rows.append({"method": r["label"], "weights used / reason missing":
                     public_text(weights if r["status"] != "missing" else note),
                     "note": public_text(note) if r["status"] == "partial" else ""})
    return pd.DataFrame(rows).set_index("method")


def _scores(d: dict) -> dict:
    return {"PSNR ↑": d.get("psnr"), "SSIM ↑": d.get("ssim"), "LPIPS ↓": d.get("lpips"), "FID ↓": d.get("fid")}


def _format_scores(df: pd.DataFrame) -> pd.DataFrame:
    for col, d in (("PSNR ↑", 2), ("SSIM ↑", 3), ("LPIPS ↓", 3), ("FID ↓", 2)):
        df[col] = [_fmt(v, d) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-"
                   for v in df[col]]
    return df


def study_table(ev: Evaluation, preset: str) -> pd.DataFrame:
    """The study's reported rows, each followed by our row of the same method, then our other
    methods: the side by side a presenter needs. Whole-image scores (the study reports those)."""
    lpips_ok = ev.info.get("lpips", {}).get("available", False)
    summ = ev.summary.set_index("method")

    def ours(m):
        r = summ.loc[m]
        if r["status"] == "missing":
            return {"method": _short(m), "source": f"this run ({preset}): missing", "n images": 0,
                    **_scores({})}
        return {"method": _short(m), "source": f"this run ({preset})", "n images": int(r["n"]),
                **_scores({"psnr": _get(r, "psnr"), "ssim": _get(r, "ssim"),
                           "lpips": _get(r, "lpips") if lpips_ok else None, "fid": _get(r, "fid")})}
    rows, shown = [], []
    for s in STUDY:
        rows.append({"method": _short(s["id"]), "source": STUDY_SOURCE, "n images": "not stated", **_scores(s)})
        if s["id"] in summ.index:
            rows.append(ours(s["id"]))
            shown.append(s["id"])
    rows += [ours(m) for m in summ.index if m not in shown]
    return _format_scores(pd.DataFrame(rows)).set_index("method")


def anchor_table() -> pd.DataFrame:
    """Published numbers on CelebA-HQ 256 (other papers, their masks and test sets): scale only."""
    if not ANCHORS:
        return pd.DataFrame(columns=["method", "source", "protocol", "n images", *_scores({})]).set_index("method")
    rows = [{"method": a["method"], "source": a["short_source"], "protocol": a["protocol"],
             "n images": a["n_images"] or "not stated", **_scores(a)} for a in ANCHORS]
    return _format_scores(pd.DataFrame(rows)).set_index("method")


def anchor_sources() -> str:
    """The full reference of every anchor, as markdown bullets."""
    return "\n".join(f"* {a['method']}: {a['source']}." for a in ANCHORS)


def study_note(ev: Evaluation, preset: str) -> str:
    """Under the study table: which rows were measured here and what the study's rows are."""
    i = ev.info
    return (f"*this run*: measured here on {i['n_test']} test images at {i['image_size']} px. "
            f"The other rows are as reported by {STUDY_SOURCE} on {STUDY_PROTOCOL}: "
            "a different test set, masks and resolution, so they set the scale, not a ranking.")


def sources() -> str:
    """The footnote slide: the study and the papers every quoted number comes from."""
    return "\n".join([f"* The study: {STUDY_CITATION}; its numbers are those of its own report.",
                       anchor_sources()])


def comparison_table(ev: Evaluation, preset: str) -> pd.DataFrame:
    """Every row in one table with its source, protocol and number of images (saved as CSV; the
    slides show it as :func:`study_table` and :func:`anchor_table`). Only the "this run" rows are
    measured here."""
    rows = []
    ours_protocol = (f"this run ({preset}): {ev.info['n_test']} frozen test images, "
                     f"{ev.info['image_size']} px, masks {'/'.join(sorted(set(ev.per_image['kind'])))}")
    lpips_ok = ev.info.get("lpips", {}).get("available", False)
    for _, r in ev.summary.iterrows():
        if r["status"] == "missing":
            rows.append({"method": r["label"], "source": "this run",
                         "protocol": "missing: " + public_text(r.get("note", "")), "n images": 0, **_scores({})})
            continue
        rows.append({"method": r["label"], "source": "this run (measured)", "protocol": ours_protocol,
                     "n images": int(r["n"]),
                     **_scores({"psnr": _get(r, "psnr"), "ssim": _get(r, "ssim"),
                                "lpips": _get(r, "lpips") if lpips_ok else None, "fid": _get(r, "fid")})})
    for s in STUDY:
        rows.append({"method": s["method"], "source": STUDY_SOURCE, "protocol": STUDY_PROTOCOL,
                     "n images": "not stated", **_scores(s)})
    for a in ANCHORS:
        rows.append({"method": a["method"], "source": a["source"], "protocol": a["protocol"],
                     "n images": a["n_images"] or "not stated", **_scores(a)})
    return _format_scores(pd.DataFrame(rows)).set_index("method")


def title_note(ev: Evaluation, cfg: Config) -> str:
    """Under the title: the study this reproduces, and what this preset's numbers are."""
    head = f"Reproducing and extending the study {STUDY_CITATION}."
    return head + "\n\n" + (smoke_warning(cfg) or f"Preset **{cfg.preset}**: {ev.info['n_test']} test images.")


# ---------------------------------------------------------------- statements from the numbers
def method_equations(cfg: Config) -> str:
    """The two trained methods in their equations, with this preset's values (markdown + TeX)."""
    d, s = cfg.ddpm, cfg.sd
    lo = s.lora
    return "\n".join([
        f"**DDPM, fine-tuned for inpainting** ({cfg.data.image_size} px, pixel space): the U-Net sees "
        "the masked image, the mask and the noisy image, 7 channels, and learns mostly inside the hole:",
        "$$\\mathcal{L} = \\operatorname{mean}\\big[W \\odot (\\epsilon - \\epsilon_\\theta(\\mathrm{concat}"
        "(x \\odot (1 - m),\\, m,\\, x_t),\\, t))^2\\big],\\qquad "
        f"W = {d.lambda_mask:g}\\, m + {d.lambda_context:g}\\, (1 - m)$$",
        f"sampled with DDIM, {d.num_inference_steps} steps; $m = 1$ marks the hole.",
        "",
        f"**Stable Diffusion 1.5 inpainting + LoRA** ({s.resolution} px, latents {s.resolution // 8} px): "
        "frozen VAE $\\mathcal{E}$, text encoder $\\tau$ and U-Net; only a low-rank update of the "
        f"attention projections ({', '.join(f'`{t}`' for t in lo.target_modules)}) is trained:",
        f"$$W_0 \\to W_0 + \\tfrac{{\\alpha}}{{r}} B A,\\quad r = {lo.r},\\ \\alpha = {lo.alpha};\\qquad "
        "\\mathcal{L} = \\big\\| \\epsilon - \\epsilon_{\\theta}(\\mathrm{concat}(z_t,\\, m_{\\downarrow},\\, "
        "\\mathcal{E}(x \\odot (1 - m))),\\, t,\\, \\tau(c)) \\big\\|^2$$",
        f"with the caption $c$ dropped {100 * s.prompt_dropout:.0f} % of the time, so that sampling can use "
        f"classifier-free guidance ({s.num_inference_steps} steps, $w = {s.guidance_scale:g}$):",
        "$$\\hat\\epsilon = \\epsilon_\\theta(z_t, \\varnothing) + w\\,\\big(\\epsilon_\\theta(z_t, c) - "
        "\\epsilon_\\theta(z_t, \\varnothing)\\big)$$",
    ])


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
    """One row per method: its short label, what it is, status and images scored (the weights
    behind each are in :func:`weights_table`)."""
    rows = []
    for _, r in ev.summary.iterrows():
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        rows.append({"method": _short(r["method"]), "what it is": r["label"], "status": r["status"],
                     "n images": int(r["n"]),
                     "note": public_text(first_sentence(note)) if r["status"] != "ok" else ""})
    return pd.DataFrame(rows).set_index("method")


def limitations(ev: Evaluation, cfg: Config) -> str:
    """What the numbers cannot say, from this run's own settings."""
    i = ev.info
    lines = [f"* {i['n_test']} test images at {i['image_size']} px and one sampling seed: the CIs cover the "
             "choice of images, not the randomness of the samplers or of training.",
             "* FID compares each method with the real images of the same names; at this n it is biased "
             "upward, so rows with different n are not comparable (KID is the fairer set-level number).",
             f"* The numbers of {STUDY_SOURCE} come from its own test set, masks, resolution and number of "
             "images: they set the scale, they are not rows of our table."]
    if not i["lpips"]["available"]:
        lines.append(f"* LPIPS was not computed: {public_text(first_sentence(i['lpips']['reason']))}.")
    if not i["fid"]["available"]:
        lines.append(f"* FID / KID were not computed: {public_text(first_sentence(i['fid']['reason']))}.")
    if cfg.preset == "smoke":
        lines.append("* Smoke preset: tiny random models, a few training steps, CPU: the pipeline is exercised, "
                     "the methods are not.")
    return "\n".join(lines)


def table(df: pd.DataFrame):
    """Display helper: a table as HTML with every cell's full text (pandas would cut long notes)."""
    from IPython.display import HTML
    if df.index.name:                      # the index as an ordinary first column: one header row
        df = df.reset_index()
    with pd.option_context("display.max_colwidth", None):
        return HTML(df.to_html(escape=True, na_rep="-", index=False))


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
