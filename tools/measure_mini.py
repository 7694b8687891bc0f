"""Measure choices of the ``mini`` preset on its own frozen test set, with the study's code and notebook 05's score.

The digit accuracy (helpers.study.evaluation.digit_accuracy: the classifier fitted on the clean training digits),
the hole PSNR and the hole's ink (its mean brightness, 0 black to 1 white: the stroke weight) of the two rows
every method must beat (the hole left grey, OpenCV Telea) and of the learned methods under the preset and
``--set`` overrides, accuracy and hole PSNR each with its paired bootstrap 95 % interval against the others:

* ``sd``: the latent stand-in zero-shot and after the study's LoRA training (``helpers.study.models.sd``),
  each at every ``--guidance`` scale (the pipeline: ``sd.pretrained_id``, or ``--sd-weights``);
* ``ddpm``: the fine-tuned DDPM (``helpers.study.models.ddpm.finetune`` then the preset's sampler) and, with
  ``--repaint``, RePaint on the unconditional stand-in.

It reads a run root prepared by notebook 01 and trains there (runs are reused by fingerprint, like the
notebooks'); nothing is written to the project's reports. Every number in the comments of
configs/mini.yaml and the README's mini paragraph was measured this way, e.g.

    INPAINT_ROOT=/tmp/m python -m helpers.report --only 01 --no-export --no-site
    INPAINT_ROOT=/tmp/m python tools/measure_mini.py sd --guidance 1 3 7.5 --set sd.lr=5e-3
    INPAINT_ROOT=/tmp/m python tools/measure_mini.py ddpm --repaint --set ddpm.eta=1.0
    INPAINT_ROOT=/tmp/m python tools/measure_mini.py sd --noise-levels 50 200 400 600 800 950
    INPAINT_ROOT=/tmp/m python tools/measure_mini.py ddpm --repaint --sampling-seeds 7
    INPAINT_ROOT=/tmp/s python -m helpers.report --only 01 --no-export --no-site --set data.digits_domain=source
    INPAINT_ROOT=/tmp/s python tools/measure_mini.py sd --zero-shot-only --guidance 1 2 3 5 7.5 12 \
        --set data.digits_domain=source          # the stand-in on its own digits: how sd.guidance_scale was chosen

``--sampling-seeds K`` samples each learned row with K seeds (the first is the notebooks'): the spread of its
accuracy over seeds, which the intervals (over images) leave out, and the K samples read as one answer.
"""
from __future__ import annotations

import argparse
import os
import time
from functools import partial
from itertools import combinations
from pathlib import Path

import pandas as pd
import torch

import helpers as H
from helpers.course.metrics import pixel_scores
from helpers.study.config import parse_overrides
from helpers.study.data.dataset import composite, load_test_set
from helpers.study.evaluation import digit_accuracy as D
from helpers.study.evaluation.metrics import paired_difference
from helpers.study.evaluation.predict import telea_inpaint
from helpers.study.runtime import image_seeds


def eps_error_by_noise(cfg, pipe, captions: dict[str, str], root: Path, levels, n: int = 256, seed: int = 0) -> str:
    """Where the latent model's noise prediction errs: the mean squared error of eps_theta in the hole's latents
    and in the known ones, at each noise level t, on fixed draws (images, masks, VAE samples, noise) of the first
    ``n`` training images with their captions: the same draws for the zero-shot model and after LoRA."""
    from helpers.course import sd_inpainting as C
    from helpers.course.diffusion import q_sample
    from helpers.study.data.dataset import InpaintDataset, collate

    ds = InpaintDataset(cfg, "train", root)
    batch = collate([ds[i] for i in range(min(len(ds), n))])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x, m = C.to_sd_resolution(batch["image"], batch["mask"], cfg.sd.resolution)
        f, c = C.latent_factor(pipe.vae), pipe.vae.config.latent_channels
        eps_vae = torch.randn((2 * len(x), c, x.shape[-2] // f, x.shape[-1] // f), generator=g)
        z0, z_masked = C.encode_latents(pipe.vae, torch.cat([x, C.blank_hole(x, m)]), eps_vae).chunk(2)
        m_down = C.mask_to_latent(m, tuple(z0.shape[-2:]))
        embeds = C.encode_prompts(pipe.tokenizer, pipe.text_encoder, sorted(set(captions.values())))
        cond = torch.stack([embeds[captions[name]] for name in batch["name"]])
        out = []
        for t in levels:
            eps = torch.randn(z0.shape, generator=g)
            z_t = q_sample(z0, t, eps, pipe.scheduler.alphas_cumprod.float())
            tt = torch.full((len(x),), t)
            err = (pipe.unet(torch.cat([z_t, m_down, z_masked], 1), tt, encoder_hidden_states=cond,
                             return_dict=False)[0] - eps) ** 2
            hole = (err * m_down).sum() / (m_down.sum() * c)
            known = (err * (1 - m_down)).sum() / ((1 - m_down).sum() * c)
            out.append(f"t={t}: hole {hole:.4f}, known {known:.4f}")
    return " | ".join(out)


def sd_rows(cfg, overrides: dict, root: Path, test: dict, scales, weights: str | None, levels=(), lora: bool = True):
    """(row, sampler of seeds -> completions): zero-shot, then (``lora``) + LoRA, at each guidance scale (and the
    noise prediction's error at ``levels``, printed for both). Each sampler is called before the next row is asked
    for (the LoRA is attached in between)."""
    from helpers.study.data.captions import make_captions
    from helpers.study.models import sd

    names = list(test["name"])
    caps = make_captions(cfg, root=root)["captions"]
    prompts = [caps.get(n, cfg.captions.fallback_prompt) for n in names]
    pipe = H.study.models.sd_pipeline.load_pipeline(cfg, source=weights, root=root, device=torch.device("cpu"))
    if levels:
        print(f"  eps_theta error, zero-shot: {eps_error_by_noise(cfg, pipe, caps, root, levels)}", flush=True)

    def at_scales(tag):
        for s in scales:
            c = H.load_config(cfg.preset, {**overrides, "sd.guidance_scale": s})
            yield f"{tag} s={s:g}", partial(sd.predict, c, pipe, test["image"], test["mask"], prompts, leave=False)

    yield from at_scales("SD zero-shot")
    if not lora:
        return
    stats = sd.train_lora(cfg, pipe, root=root)
    print(f"  LoRA: {stats['steps']} steps, {stats['seconds']:.0f} s ({stats['note']})", flush=True)
    if levels:
        print(f"  eps_theta error, + LoRA: {eps_error_by_noise(cfg, pipe, caps, root, levels)}", flush=True)
    yield from at_scales("SD + LoRA")


def ddpm_rows(cfg, root: Path, test: dict, repaint: bool):
    """(row, sampler of seeds -> completions): RePaint on the unconditional stand-in (optional), the fine-tuned
    DDPM."""
    from helpers.study.models import ddpm

    P, dev = H.study.files.paths(cfg, root), torch.device("cpu")
    names = list(test["name"])
    unet, sched = ddpm.build_inpainting_model(cfg, P)
    ab = sched.alphas_cumprod

    def run(sampler, seeds):
        with torch.no_grad():
            return sampler(test["image"], test["mask"], seeds, names)

    if repaint:
        base = ddpm.load_unconditional_unet(cfg, P).eval()
        yield "RePaint", partial(run, ddpm.repaint_sampler(cfg, base, ab, dev))
    stats = ddpm.finetune(cfg, P, unet, sched, dev)
    print(f"  DDPM fine-tuning: {stats['steps']} steps ({stats['note']})", flush=True)
    yield "DDPM fine-tuned", partial(run, ddpm.ddim_sampler(cfg, unet.eval(), ab, dev))


def seed_spread(name: str, draws: list, test: dict, reader, y, telea: pd.Series, cfg) -> str:
    """One line: a row's digit accuracy under each sampling seed (min, mean, max), and its K samples read as one
    answer (the classifier's class probabilities averaged over the samples, then the most probable digit) with its
    paired interval against Telea. A sampler draws one digit from what the context allows: one sample is right with
    the probability it gives the true digit, the average of K approaches the most probable one."""
    import numpy as np

    done = [composite(p.cpu(), test["image"], test["mask"]) for p in draws]
    acc = [D.correct(reader, c, y).mean() for c in done]
    prob = np.mean([reader.predict_proba(D.grey_features(c)) for c in done], axis=0)
    as_one = pd.DataFrame({"method": "as one", "name": list(test["name"]),
                           "correct": (reader.classes_[prob.argmax(1)] == np.asarray(y)).astype(float)})
    both = pd.concat([as_one, pd.DataFrame({"method": "Telea", "name": telea.index, "correct": telea.to_numpy()})])
    d, lo, hi, _ = paired_difference(both, "as one", "Telea", "correct", cfg.eval.bootstrap_samples, cfg.seed)
    return (f"{name} over {len(draws)} sampling seeds: accuracy {min(acc):.3f} .. {np.mean(acc):.3f} .. "
            f"{max(acc):.3f} (min, mean, max); the {len(draws)} samples read as one: "
            f"{as_one['correct'].mean():.3f}, - Telea {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            f"{'  *' if lo > 0 or hi < 0 else ''}")


def hole_ink(images: torch.Tensor, mask: torch.Tensor) -> float:
    """The mean brightness of the hole's pixels over a set, 0 (black) to 1 (white): the stroke weight there."""
    return ((images[:, :1] + 1) / 2 * mask).sum().item() / mask.sum().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("sd", "ddpm"))
    p.add_argument("--preset", default="mini")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="dotted preset overrides")
    p.add_argument("--guidance", nargs="+", type=float, default=None, help="sd: scales (default: the preset's)")
    p.add_argument("--sd-weights", default=None, help="sd: a pipeline folder other than sd.pretrained_id")
    p.add_argument("--noise-levels", nargs="+", type=int, default=[], metavar="T",
                   help="sd: also print eps_theta's error in the hole and outside it at these t (zero-shot, + LoRA)")
    p.add_argument("--zero-shot-only", action="store_true",
                   help="sd: the pretrained pipeline alone, no LoRA trained (e.g. on the stand-in's own source digits)")
    p.add_argument("--repaint", action="store_true", help="ddpm: RePaint on the unconditional stand-in too")
    p.add_argument("--sampling-seeds", type=int, default=1, metavar="K",
                   help="sample each learned row with K seeds (seed, seed + 1, ...; the first is the notebooks'): "
                        "the spread of its accuracy, and the K samples read as one answer")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.sampling_seeds < 1:
        p.error(f"--sampling-seeds must be at least 1, got {a.sampling_seeds}")
    torch.set_num_threads(a.threads)
    root = Path(os.environ.get("INPAINT_ROOT") or H.study.files.ROOT)
    overrides = parse_overrides(a.set)
    cfg = H.load_config(a.preset, overrides)
    labels = D.labels_of(cfg, root)
    if labels is None:
        raise SystemExit(f"{root}: no digit labels in the prepared data (run notebook 01 of preset mini there first)")
    # 1. the test set, the classifier, the two rows to beat
    test = load_test_set(cfg, root)
    y = [labels[n] for n in test["name"]]
    reader = D.train_classifier(cfg, labels, root)
    rows = {"hole left grey": test["image"] * (1 - test["mask"]),
            "Telea": telea_inpaint(test["image"], test["mask"], cfg.eval.telea_radius)}
    # 2. the learned methods, known pixels composited back as notebook 05 scores them
    made = (sd_rows(cfg, overrides, root, test, a.guidance or [cfg.sd.guidance_scale], a.sd_weights, a.noise_levels,
                    not a.zero_shot_only)
            if a.part == "sd"
            else ddpm_rows(cfg, root, test, a.repaint))
    draws = {}                                 # row -> its completions under each sampling seed
    for name, sample in made:
        t0 = time.perf_counter()
        draws[name] = [sample(image_seeds(cfg.seed + k, list(test["name"]))) for k in range(a.sampling_seeds)]
        rows[name] = draws[name][0]            # seed cfg.seed: the notebooks' own draw
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    done = {k: composite(v.cpu(), test["image"], test["mask"]) for k, v in rows.items()}
    # 3. digit accuracy and hole PSNR (notebook 05's scores), every paired difference
    per_image = pd.concat([pd.DataFrame({"method": k, "name": list(test["name"]), "correct": D.correct(reader, v, y),
                                         "psnr_hole": pixel_scores(v, test["image"], test["mask"])["psnr_hole"]})
                           for k, v in done.items()])
    ink = partial(hole_ink, mask=test["mask"])
    print(f"\n{len(y)} test digits of {root}; overrides {overrides or 'none'}; the clean digits' hole ink "
          f"{ink(test['image']):.3f}")
    means = per_image.groupby("method", sort=False)[["correct", "psnr_hole"]].mean()
    for k, r in means.iterrows():
        print(f"{k:24s} {r.correct:.3f}  {r.psnr_hole:6.2f} dB  {ink(done[k]):.3f} ink")
    for b, a_ in combinations(done, 2):
        for metric, f in (("correct", "{:+.3f}"), ("psnr_hole", "{:+.2f} dB")):
            d, lo, hi, _ = paired_difference(per_image, a_, b, metric, cfg.eval.bootstrap_samples, cfg.seed)
            print(f"{a_} - {b} ({metric}): {f.format(d)} [{f.format(lo)}, {f.format(hi)}]"
                  f"{'  *' if lo > 0 or hi < 0 else ''}")
    if a.sampling_seeds > 1:
        telea = per_image[per_image["method"] == "Telea"].set_index("name")["correct"]
        for name, preds in draws.items():
            print(seed_spread(name, preds, test, reader, y, telea, cfg))


if __name__ == "__main__":
    main()
