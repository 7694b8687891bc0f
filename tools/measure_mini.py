"""How good are the mini preset's pretrained stand-ins on the TARGET half (bold digits they never saw)?

A logistic-regression digit classifier is fitted on clean target digits (the first ``--n-fit``); on the next
``--n-test`` target digits, each with a fixed random mask (kinds cycled, hole fraction 0.15..0.5), it reads the
digit from: the hole left grey (masked pixels = 0), OpenCV Telea (radius 3), and the latent inpainting
pipeline zero-shot (the study's own sampling loop, helpers.course.sd_inpainting.inpaint: DDIM, known pixels
pasted back) at guidance 1 and 3. Accuracy is printed with its Wilson 95 % interval.

    python tools/measure_mini.py [--pretrained pretrained/mini] [--n-fit 600] [--n-test 150] [--steps 25]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import helpers as H
from helpers.course import sd_inpainting as sdi
from helpers.course.masks import generate_mask
from helpers.study.data.sources import digit_caption, digit_images, digit_label
from helpers.study.runtime import SeededNoise

KINDS = ("box", "thin", "medium", "thick")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def telea(x: torch.Tensor, m: torch.Tensor, radius: int = 3) -> torch.Tensor:
    import cv2

    out = []
    for xi, mi in zip(x, m):
        u8 = ((xi.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        out.append(cv2.inpaint(u8, (mi[0].numpy() * 255).astype(np.uint8), radius, cv2.INPAINT_TELEA))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pretrained", default="pretrained/mini")
    p.add_argument("--n-fit", type=int, default=600)
    p.add_argument("--n-test", type=int, default=150)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    from sklearn.linear_model import LogisticRegression

    # 1. the target half: clean digits to fit the classifier, the next ones masked (fixed masks)
    names, imgs = zip(*digit_images("target", 32))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = np.array([digit_label(n) for n in names])
    fit, test = slice(0, a.n_fit), slice(a.n_fit, a.n_fit + a.n_test)
    feats = lambda im: im[:, 0].reshape(len(im), -1).numpy()  # noqa: E731  one channel (grey as RGB)
    clf = LogisticRegression(max_iter=2000).fit(feats(x[fit]), y[fit])
    rng = np.random.default_rng(1234)
    xt, yt = x[test], y[test]
    m = torch.from_numpy(np.stack([generate_mask(32, KINDS[i % 4], rng, 0.15, 0.5) for i in range(len(xt))]))[:, None]
    results = {"clean": xt, "grey (hole = 0)": xt * (1 - m), "Telea r=3": telea(xt, m)}
    # 2. the latent pipeline zero-shot, through the study's own sampling loop
    cfg = H.load_config("mini", {"sd.pretrained_id": f"{a.pretrained}/sd-inpainting"})
    pipe = H.study.models.sd_pipeline.load_pipeline(cfg, device=torch.device("cpu"))
    emb = sdi.encode_prompts(pipe.tokenizer, pipe.text_encoder, [""] + [digit_caption(k) for k in range(10)])
    cond = torch.stack([emb[digit_caption(int(k))] for k in yt])
    for s in (1.0, 3.0):
        t0 = time.perf_counter()
        results[f"SD zero-shot s={s:g}"] = sdi.inpaint(
            pipe.unet, pipe.vae, pipe.scheduler, xt, m, cond, emb[""][None], SeededNoise(range(len(xt))),
            resolution=32, num_inference_steps=a.steps, guidance_scale=s)
        print(f"  (SD s={s:g}: {time.perf_counter() - t0:.0f} s for {len(xt)} images)")
    # 3. digit accuracy of each completion
    print(f"target digits: classifier fitted on {a.n_fit} clean, tested on {len(xt)} masked "
          f"(mean hole {m.mean():.2f}); {a.steps} DDIM steps; weights {a.pretrained}")
    for name, im in results.items():
        k = int((clf.predict(feats(im)) == yt).sum())
        lo, hi = wilson(k, len(yt))
        print(f"{name:22s} accuracy {k / len(yt):.3f}  [{lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main()
