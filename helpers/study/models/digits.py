"""See it learn: the course's inpainting DDPM, trained from scratch on scikit-learn's digits on a CPU.

The data set ships with scikit-learn (no download): 1,797 digits of 8x8 px, here upsampled to
16x16 and scaled to [-1, 1] (background -1, ink +1), one channel. A seeded cut gives 1,500 train
and 297 test digits; every test digit has a fixed box hole and a fixed x_T, so checkpoints and
runs are scored on the same inputs. Scores per test image: the digit that a logistic regression,
trained on the clean train digits, reads from the completion (accuracy, Wilson 95 % interval) and
the PSNR over the hole pixels (data range 2, bootstrap 95 % interval). Baselines: the hole left
grey (x_masked) and OpenCV Telea. The model is the course's: ``model_input``, ``inpainting_loss``,
``training_step`` and ``ddim_inpaint`` of :mod:`helpers.course.ddpm_inpainting`, at 1 channel.
Mask convention of the package: 1 = hole.
"""
from __future__ import annotations

import copy
import math
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from helpers.course.ddpm_inpainting import masked_image, model_input
from helpers.course.diffusion import alpha_bar, ddim_sample_loop, make_betas
from helpers.study.config import Config


# ---------------------------------------------------------------- 1. data, holes
def box_masks(n: int, size: int, lo: int, hi: int, generator: torch.Generator) -> torch.Tensor:
    """n axis-aligned boxes inside a size x size image, each side uniform in lo..hi; (n, 1, size, size), 1 = hole."""
    h = torch.randint(lo, hi + 1, (n,), generator=generator)
    w = torch.randint(lo, hi + 1, (n,), generator=generator)
    top = (torch.rand(n, generator=generator) * (size - h + 1)).long()
    left = (torch.rand(n, generator=generator) * (size - w + 1)).long()
    r = torch.arange(size)
    rows = (r[None] >= top[:, None]) & (r[None] < (top + h)[:, None])
    cols = (r[None] >= left[:, None]) & (r[None] < (left + w)[:, None])
    return (rows[:, :, None] & cols[:, None, :]).float()[:, None]


def load_data(d: Config) -> dict:
    """Train digits and labels; test digits, labels, fixed holes and x_T. Images (N, 1, S, S) in [-1, 1]."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32)[:, None] / 16.0       # 0..16 -> [0, 1]
    x = F.interpolate(x, size=(d.image_size, d.image_size), mode="bilinear", align_corners=False) * 2 - 1
    y = torch.from_numpy(raw.target)
    perm = torch.from_numpy(np.random.default_rng(d.split_seed).permutation(len(x)))
    tr, te = perm[:d.num_train], perm[d.num_train:]
    mask = box_masks(len(te), d.image_size, *d.hole, torch.Generator().manual_seed(d.test_mask_seed))
    x_T = torch.randn(x[te].shape, generator=torch.Generator().manual_seed(d.test_noise_seed))
    return {"train_image": x[tr], "train_label": y[tr], "image": x[te], "label": y[te], "mask": mask,
            "x_masked": masked_image(x[te], mask), "x_T": x_T}


def random_batch(data: dict, d: Config, generator: torch.Generator) -> dict:
    """batch_size train digits without replacement, each with a fresh random box hole."""
    idx = torch.randperm(len(data["train_image"]), generator=generator)[:d.batch_size]
    return {"image": data["train_image"][idx], "mask": box_masks(len(idx), d.image_size, *d.hole, generator)}


# ---------------------------------------------------------------- 2. scores and baselines
def train_classifier(data: dict):
    """Logistic regression on the pixels of the clean train digits: the reader of the completions."""
    from sklearn.linear_model import LogisticRegression

    x = data["train_image"].reshape(len(data["train_image"]), -1).numpy()
    return LogisticRegression(max_iter=5000).fit(x, data["train_label"].numpy())


def hole_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per image: 10 log10(2^2 / MSE over the hole pixels); data range 2 ([-1, 1])."""
    mse = ((pred - target) ** 2 * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))
    return (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).double().numpy()


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def score(pred: torch.Tensor, data: dict, classifier, n_boot: int, seed: int = 0) -> dict:
    """Digit accuracy (Wilson 95 %) and mean hole PSNR (bootstrap 95 %) of completions of the test digits."""
    from helpers.study.evaluation.metrics import bootstrap_ci

    correct = classifier.predict(pred.reshape(len(pred), -1).numpy()) == data["label"].numpy()
    acc_lo, acc_hi = wilson_ci(int(correct.sum()), len(correct))
    psnr, psnr_lo, psnr_hi = bootstrap_ci(hole_psnr(pred, data["image"], data["mask"]), n_boot, seed)
    return {"accuracy": float(correct.mean()), "accuracy_low": acc_lo, "accuracy_high": acc_hi,
            "hole_psnr": psnr, "hole_psnr_low": psnr_lo, "hole_psnr_high": psnr_hi}


def telea_1ch(x_masked: torch.Tensor, mask: torch.Tensor, radius: int) -> torch.Tensor:
    """OpenCV Telea on 1-channel images (the channel repeated 3 times); the known pixels kept exactly."""
    from helpers.study.evaluation.predict import telea_inpaint

    filled = telea_inpaint(x_masked.repeat(1, 3, 1, 1), mask, radius)[:, :1]
    return mask * filled + (1 - mask) * x_masked


def baseline_rows(data: dict, classifier, d: Config) -> list[dict]:
    """The clean test digits (the ceiling, PSNR not defined), the hole left grey, and Telea."""
    clean = score(data["image"], data, classifier, d.bootstrap_samples)
    clean.update(hole_psnr=None, hole_psnr_low=None, hole_psnr_high=None)
    telea = telea_1ch(data["x_masked"], data["mask"], d.telea_radius)
    return [{"method": "ground truth", **clean},
            {"method": "hole left grey", **score(data["x_masked"], data, classifier, d.bootstrap_samples)},
            {"method": f"Telea (r={d.telea_radius})", **score(telea, data, classifier, d.bootstrap_samples)}]


# ---------------------------------------------------------------- 3. the model and its training
CLOCKS = ("wall", "cpu", "steps")          # what a run's budget counts (configs/smoke.yaml, digits.clock)


def nearest_checkpoint(records: list[dict], d: Config, point: float) -> dict:
    """The checkpoint record nearest to ``point`` of the budget (steps or seconds, as ``d.clock`` counts)."""
    unit = "steps" if d.clock == "steps" else "seconds"
    return min(records, key=lambda r: abs(r[unit] - point))


def budget_text(d: Config, amount: float | None = None) -> str:
    """``amount`` (default: the budget) with its unit, e.g. "420 steps" or "120 s (cpu clock)"."""
    amount = d.budget if amount is None else amount
    return f"{amount:g} steps" if d.clock == "steps" else f"{amount:g} s ({d.clock} clock)"


@dataclass
class DigitsRun:
    """A model in training, with its optimizer, random stream and clock (training seconds, steps). The budget
    (``cfg.budget``), the checkpoints and ``cfg.compare_budget`` count in ``cfg.clock``'s unit: optimizer steps
    (``steps``: a re-run reproduces every number) or training seconds (``wall``, ``cpu``)."""
    cfg: Config
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    alphas_cumprod: torch.Tensor
    step: int = 0
    seconds: float = 0.0

    def elapsed(self) -> float:
        """The budget spent so far, in its unit: steps, or training seconds."""
        return self.step if self.cfg.clock == "steps" else self.seconds

    def progress(self) -> float:
        return self.elapsed() / self.cfg.budget

    def done(self) -> bool:
        return self.progress() >= 1.0

    def schedule_lr(self) -> None:
        """The learning rate at this point of the budget (:func:`set_lr`)."""
        set_lr(self.optimizer, self.cfg, self.step, self.progress())

    def clock(self) -> float:
        """Seconds of this process's CPU time (``cfg.clock: cpu``: robust to shared cores), else of the wall clock
        (``steps`` times the training, for the tables, with it)."""
        return time.process_time() if self.cfg.clock == "cpu" else time.perf_counter()


def new_run(d: Config, seed: int, **changes) -> DigitsRun:
    """A randomly initialised UNet2DModel (``d.model``), AdamW, a seeded generator; ``changes`` override ``d``."""
    from diffusers import UNet2DModel

    d = Config({**copy.deepcopy(d), **changes})
    if d.clock not in CLOCKS or not d.budget or d.budget <= 0:
        raise ValueError(f"digits: clock must be one of {CLOCKS} and budget > 0, got clock={d.clock!r}, "
                         f"budget={d.budget!r}")
    torch.set_num_threads(d.threads)                          # process-wide: the run owns the process
    torch.manual_seed(seed)                                   # the initial weights
    model = UNet2DModel(**d.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=d.lr)
    ab = alpha_bar(make_betas(d.beta_schedule, d.num_train_timesteps)).float()
    return DigitsRun(d, model, optimizer, torch.Generator().manual_seed(seed), ab)


def next_batch(data: dict, d: Config) -> Callable:
    """The ``next_batch(generator)`` of the course's ``train_with_checkpoints``: :func:`random_batch` of ``data``."""
    return lambda generator: random_batch(data, d, generator)


def set_lr(optimizer, d: Config, step: int, progress: float) -> None:
    """Linear warm-up over lr_warmup_steps, then cosine from lr to lr * lr_min_fraction at the end of the budget."""
    warm = min(1.0, (step + 1) / max(1, d.lr_warmup_steps))
    cosine = d.lr_min_fraction + (1 - d.lr_min_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    for group in optimizer.param_groups:
        group["lr"] = d.lr * warm * cosine


# ---------------------------------------------------------------- 4. sampling and checkpoints
def complete(run: DigitsRun, data: dict, paste_back: bool = True, sample_loop: Callable = ddim_sample_loop):
    """DDIM completions of the test digits from their fixed x_T by ``sample_loop`` (notebook 02 passes its
    own ``ddim_sample_loop``), the known pixels pasted back; without paste-back, the model's whole image."""
    run.model.eval()
    x_masked, mask = data["x_masked"], data["mask"]
    eps_fn = lambda x_t, t: run.model(model_input(x_masked, mask, x_t), t).sample  # noqa: E731
    with torch.no_grad():
        raw = sample_loop(eps_fn, data["x_T"], run.alphas_cumprod, run.cfg.num_inference_steps).clamp(-1, 1)
    run.model.train()
    # x = m * x0 + (1 - m) * x_masked, as ddim_inpaint returns it
    return (mask * raw + (1 - mask) * x_masked).clamp(-1, 1) if paste_back else raw


def with_names(fn: Callable, **names) -> Callable:
    """A copy of ``fn`` whose global ``names`` are the ones given: notebook 03's ``inpainting_loss`` run
    with notebook 02's own ``q_sample`` (an edit of that cell then reaches the digits' training)."""
    copied = types.FunctionType(fn.__code__, {**fn.__globals__, **names}, fn.__name__, fn.__defaults__,
                                fn.__closure__)
    copied.__kwdefaults__, copied.__qualname__, copied.__doc__ = fn.__kwdefaults__, fn.__qualname__, fn.__doc__
    return copied


def paste_back(raw: torch.Tensor, data: dict) -> torch.Tensor:
    """m * x0 + (1 - m) * x_masked: the composite ``ddim_inpaint`` returns."""
    return data["mask"] * raw + (1 - data["mask"]) * data["x_masked"]


def checkpoint_recorder(data: dict, classifier, records: list, completions: list,
                        sample_loop: Callable = ddim_sample_loop) -> Callable:
    """An ``evaluate(run)`` for the course's ``train_with_checkpoints``: scores the completions (by
    ``sample_loop``, :func:`complete`) and keeps the first grid_images of them."""
    def evaluate(run: DigitsRun) -> None:
        t0 = time.perf_counter()
        pred = complete(run, data, sample_loop=sample_loop)
        records.append({"method": "DDPM", "seconds": round(run.seconds, 1), "steps": run.step,
                        **score(pred, data, classifier, run.cfg.bootstrap_samples),
                        "sampling_s": round(time.perf_counter() - t0, 1)})
        completions.append(pred[:run.cfg.grid_images])
    return evaluate


def results_table(baselines: list[dict], records: list[dict]) -> pd.DataFrame:
    """One row per method / checkpoint; DDPM rows named by their training time and steps."""
    rows = [dict(r) for r in baselines]
    for r in records:
        rows.append({**r, "method": f"DDPM, {r['seconds']:.0f} s ({r['steps']} steps)"})
    return pd.DataFrame(rows)


def save_results(table: pd.DataFrame, extra: dict, folder: Path, name: str = "02_digits") -> None:
    """``<name>.csv`` (the table) and ``<name>.json`` (table rows + ``extra``) under ``folder``."""
    from helpers.study.files import save_json

    Path(folder).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(folder) / f"{name}.csv", index=False)
    save_json({"table": table.to_dict(orient="records"), **extra}, Path(folder) / f"{name}.json")


def grid_rows(data: dict, telea: torch.Tensor, records: list[dict], completions: list,
              n: int) -> tuple[list, list]:
    """Rows of 3-channel images for ``image_grid``: original, masked, Telea, then one per checkpoint."""
    rgb = lambda x: [im.repeat(3, 1, 1) for im in x[:n]]  # noqa: E731
    rows = [rgb(data["image"]), rgb(data["x_masked"]), rgb(telea)] + [rgb(c) for c in completions]
    titles = ["original", "hole (grey)", "Telea"] + [f"{r['seconds']:.0f} s\n{r['steps']} steps" for r in records]
    return rows, titles
