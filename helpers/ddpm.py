"""DDPM: the forward/reverse processes, DDIM, and inpainting by fine-tuning a 7-channel U-Net.

Notebook 02 teaches the theory part (schedules, ``q_sample``, ``p_sample``, ``ddim_step``) and
notebook 03 the inpainting part (``widen_conv_in``, ``weighted_eps_loss``, ``finetune``,
``ddim_inpaint``). The training-free RePaint baseline lives in :mod:`helpers.repaint`.

Timestep convention: like diffusers, timesteps are indexed ``t = 0 .. T-1`` and
``alpha_bar[t] = prod_{s <= t} (1 - beta_s)``; index ``t`` is the paper's step ``t + 1``
(Ho et al. 2020 count 1 .. T). ``x_0`` is always the clean image.

Run the fine-tuning alone, on one or several GPUs::

    accelerate launch -m helpers.ddpm --preset full        # or: python -m helpers.ddpm --preset smoke

Notebook 03 then finds the saved weights (or resumes the checkpoint) instead of training again.
"""
from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import logging
import math
import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Sequence

import torch

from .common import (Paths, count_parameters, get_device, image_seeds, load_json, paths, peak_memory_bytes, progress,
                     reset_peak_memory, resolve_dtype, save_json, timed, to_device_nowait)
from .config import ROOT, Config, add_set_argument, load_config, parse_overrides

log = logging.getLogger(__name__)

BASE_DIR = "ddpm_base"          # P.models/ddpm_base: the tiny unconditional model (smoke)
FINETUNED_DIR = "ddpm_inpaint"  # P.models/ddpm_inpaint: checkpoints and the fine-tuned U-Net
HOW_TO_GET = (
    "The full preset uses google/ddpm-celebahq-256 (Ho et al. 2020, 256x256 faces). Either run "
    "once with internet access (the weights are then cached under {cache}), or download them on "
    "a machine that has it:\n"
    "    huggingface-cli download google/ddpm-celebahq-256 --local-dir <folder>   (or: hf download ...)\n"
    "copy <folder> here and set ddpm.pretrained_id: <folder> in configs/{preset}.yaml "
    "(or overrides={{'ddpm.pretrained_id': '<folder>'}})."
)


# ====================================================================== 1. noise schedules
def make_betas(schedule: str, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_1 .. beta_T (float64). ``linear`` (Ho et al. 2020) or ``cosine`` (Nichol & Dhariwal
    2021, eq. 17; diffusers calls it ``squaredcos_cap_v2``)."""
    if schedule == "linear":
        # beta_t evenly spaced from beta_start to beta_end
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule in ("cosine", "squaredcos_cap_v2"):
        # alpha_bar(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2),  beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1)
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
        return torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=torch.float64)
    raise ValueError(f"beta schedule must be 'linear' or 'cosine', got {schedule!r}")


def alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s)."""
    return torch.cumprod(1.0 - betas, dim=0)


def _at(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (N, 1, 1, 1) (or a scalar tensor) on ``like``'s device and dtype."""
    v = values.to(like.device)[torch.as_tensor(t, device=like.device).long()]
    return v.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v.to(like.dtype)


# ====================================================================== 2. forward process q
def q_step(x_prev: torch.Tensor, t: int, eps: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """One forward step: x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
    b = _at(betas, t, x_prev)
    # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
    return (1 - b).sqrt() * x_prev + b.sqrt() * eps


def q_sample(x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Closed form, any t at once: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
    ``t`` is an int or a (N,) tensor of timesteps (one per image)."""
    ab = _at(alphas_cumprod, t, x0)
    # x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def forward_check(x0: torch.Tensor, betas: torch.Tensor, ts: Sequence[int], n_chains: int,
                  generator: torch.Generator) -> list[dict]:
    """Run ``n_chains`` copies of the one-step process q(x_t | x_{t-1}) from ``x0`` and compare,
    at each t in ``ts``, the empirical distribution with the closed form q(x_t | x_0).

    Returns rows: t, max |empirical mean - sqrt(alpha_bar) x0|, mean empirical std vs
    sqrt(1 - alpha_bar), and the Kolmogorov-Smirnov distance of the standardised values to N(0, 1)."""
    from scipy import stats

    ab = alpha_bar(betas).float()
    x0 = x0.float().flatten()
    x = x0.expand(n_chains, -1).clone()
    rows, wanted = [], set(int(t) for t in ts)
    for t in range(max(wanted) + 1):
        x = q_step(x, t, torch.randn(x.shape, generator=generator), betas)
        if t in wanted:
            mean_cf, std_cf = ab[t].sqrt() * x0, (1 - ab[t]).sqrt()
            z = ((x - mean_cf) / std_cf).flatten().numpy()
            rows.append({"t": t, "alpha_bar": float(ab[t]),
                         "max_abs_mean_error": float((x.mean(0) - mean_cf).abs().max()),
                         "std_empirical": float(x.std(0).mean()), "std_closed_form": float(std_cf),
                         "ks_distance_to_normal": float(stats.kstest(z[:200_000], "norm").statistic)})
    return rows


# ====================================================================== 3. reverse process p and DDIM
def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, ab_t: torch.Tensor | float) -> torch.Tensor:
    """Invert the closed form with the predicted noise: x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)."""
    ab_t = torch.as_tensor(ab_t, dtype=x_t.dtype, device=x_t.device)
    return (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, ab_t, ab_prev) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_prev | x_t, x_0) (Ho et al. 2020, eq. 6-7), between any two
    noise levels ab_t < ab_prev (adjacent steps, or the strided steps of a shorter schedule)."""
    ab_t = torch.as_tensor(ab_t, dtype=x_t.dtype, device=x_t.device)
    ab_prev = torch.as_tensor(ab_prev, dtype=x_t.dtype, device=x_t.device)
    alpha = ab_t / ab_prev        # the step's alpha_t (a product of alphas for a strided step)
    beta = 1 - alpha
    # mu~_t = sqrt(ab_prev) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) x_t
    mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab_t) * x_t
    # beta~_t = (1 - ab_prev) / (1 - ab_t) beta_t
    var = (1 - ab_prev) / (1 - ab_t) * beta
    return mean, var


def p_sample(x_t: torch.Tensor, eps: torch.Tensor, ab_t, ab_prev, noise: torch.Tensor | None,
             clip: bool = True) -> torch.Tensor:
    """Ancestral DDPM step x_t -> x_prev ~ p_theta(x_prev | x_t) = q(x_prev | x_t, x0_hat(x_t, eps_theta)),
    with the 'fixed small' variance beta~_t. ``noise=None`` gives the mean (the last step)."""
    x0_hat = predict_x0(x_t, eps, ab_t)
    if clip:
        x0_hat = x0_hat.clamp(-1, 1)
    mean, var = q_posterior(x0_hat, x_t, ab_t, ab_prev)
    # x_prev = mu~(x_t, x0_hat) + sqrt(beta~_t) z
    return mean if noise is None else mean + var.sqrt() * noise


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, ab_t, ab_prev, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip: bool = True) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, eq. 12): deterministic for eta = 0, DDPM-like for eta = 1."""
    ab_t = torch.as_tensor(ab_t, dtype=x_t.dtype, device=x_t.device)
    ab_prev = torch.as_tensor(ab_prev, dtype=x_t.dtype, device=x_t.device)
    # "predicted x_0": (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
    x0_hat = predict_x0(x_t, eps, ab_t)
    if clip:
        x0_hat = x0_hat.clamp(-1, 1)
    # sigma_t(eta) = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)   (eq. 16)
    sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
    # x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps + sigma z
    x_prev = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma ** 2).sqrt() * eps
    if eta > 0:
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_timesteps(T: int, num_steps: int) -> list[int]:
    """The 'leading' spacing diffusers' DDIMScheduler uses: T//n * (n-1), ..., T//n, 0."""
    ratio = T // num_steps
    return [i * ratio for i in reversed(range(num_steps))]


@torch.no_grad()
def ddim_sample_loop(eps_fn: Callable[[torch.Tensor, int], torch.Tensor], x_T: torch.Tensor,
                     alphas_cumprod: torch.Tensor, num_steps: int, eta: float = 0.0,
                     noise_fn: Callable[[], torch.Tensor] | None = None, clip: bool = True) -> torch.Tensor:
    """Sample with DDIM from x_T, the model given as ``eps_fn(x_t, t) -> eps``.
    Taught in notebook 02 (and checked there against diffusers' DDIMScheduler)."""
    T = len(alphas_cumprod)
    ts = ddim_timesteps(T, num_steps)
    x = x_T
    for i, t in enumerate(ts):
        t_prev = t - T // num_steps
        # alpha_bar of the previous level; 1 after the last step (x_0 is noise-free)
        ab_prev = alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=alphas_cumprod.dtype)
        x = ddim_step(x, eps_fn(x, t), alphas_cumprod[t], ab_prev, eta,
                      noise_fn() if eta > 0 and noise_fn else None, clip)
    return x


@torch.no_grad()
def unconditional_ddim_demo(unet, scheduler_config: dict, alphas_cumprod: torch.Tensor, x_T: torch.Tensor,
                            steps: Sequence[int]) -> tuple[dict, float, bool]:
    """Notebook 02: DDIM from one fixed x_T with our loop for each number of ``steps``; the last
    one repeated (determinism) and run through diffusers' DDIMScheduler (agreement).
    Returns ({steps: images on the CPU}, max |ours - diffusers|, identical on the repeat)."""
    from .perf import make_sampler

    device = x_T.device
    eps_fn = lambda x, t: unet(x, torch.full((len(x),), t, device=device)).sample.float()
    ours = {n: ddim_sample_loop(eps_fn, x_T, alphas_cumprod, n).cpu() for n in steps}
    again = ddim_sample_loop(eps_fn, x_T, alphas_cumprod, steps[-1]).cpu()
    ref = make_sampler("ddim", scheduler_config)
    ref.set_timesteps(steps[-1])
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(unet(x, t.to(device)).sample.float(), t, x).prev_sample
    return ours, (ours[steps[-1]] - x.cpu()).abs().max().item(), torch.equal(ours[steps[-1]], again)


def mixture_eps(x: torch.Tensor, ab_t, weights: Sequence[float], means: Sequence[float],
                stds: Sequence[float]) -> torch.Tensor:
    """The exact noise predictor for 1-D data from a Gaussian mixture (a toy with no network):
    p_t(x) = sum_k w_k N(x; sqrt(ab) mu_k, ab s_k^2 + 1 - ab) and eps*(x, t) = -sqrt(1 - ab) d/dx log p_t(x)."""
    ab = torch.as_tensor(ab_t, dtype=x.dtype)
    w, mu, s = (torch.as_tensor(v, dtype=x.dtype) for v in (weights, means, stds))
    var = ab * s ** 2 + 1 - ab                           # (K,)
    d = x[..., None] - ab.sqrt() * mu                    # (..., K)
    logp = w.log() - 0.5 * (d ** 2 / var + var.log())    # log w_k N(x; ...) up to a constant
    r = torch.softmax(logp, dim=-1)                      # responsibilities
    score = (r * (-d / var)).sum(-1)
    return -(1 - ab).sqrt() * score


def mixture_sample(n: int, weights, means, stds, generator: torch.Generator) -> torch.Tensor:
    """n exact draws from the 1-D Gaussian mixture used by :func:`mixture_eps`."""
    k = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), n, replacement=True, generator=generator)
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.as_tensor(means, dtype=torch.float64)[k] + torch.as_tensor(stds, dtype=torch.float64)[k] * z


def vlb_weights(betas: torch.Tensor) -> torch.Tensor:
    """The weight of ||eps - eps_theta||^2 in the variational bound's term L_{t-1} (Ho et al. 2020,
    eq. 12), with sigma_t^2 = beta~_t: beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)).
    L_simple sets it to 1. (t = 0 is the decoder term L_0 and is left out: NaN.)"""
    ab = alpha_bar(betas)
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    sigma2 = (1 - ab_prev) / (1 - ab) * betas
    w = betas ** 2 / (2 * sigma2 * (1 - betas) * (1 - ab))
    w[0] = float("nan")
    return w


def ddim_toy_experiment(steps: Sequence[int] = (1000, 50, 10, 5, 2), n: int = 10000, seed: int = 0,
                        weights=(0.3, 0.7), means=(-0.6, 0.5), stds=(0.1, 0.2), T: int = 1000) -> tuple[dict, list]:
    """DDIM (eta = 0) and ancestral DDPM-like sampling (eta = 1) on a 1-D Gaussian mixture with the
    exact noise predictor: how far the samples are from the data (Wasserstein-1) for each number of
    steps. Returns ({label: samples}, table rows). Taught in notebook 02."""
    from scipy.stats import wasserstein_distance

    ab = alpha_bar(make_betas("linear", T))
    exact = mixture_sample(n, weights, means, stds, torch.Generator().manual_seed(seed + 1))
    eps_fn = lambda x, t: mixture_eps(x, ab[t], weights, means, stds)
    samples, rows = {"data": exact}, []
    for eta in (0.0, 1.0):
        for k in steps:
            g = torch.Generator().manual_seed(seed)
            x_T = torch.randn(n, generator=g, dtype=torch.float64)
            x0 = ddim_sample_loop(eps_fn, x_T, ab, k, eta, lambda: torch.randn(n, generator=g, dtype=torch.float64),
                                  clip=False)
            label = f"{'DDIM' if eta == 0 else 'eta=1'} {k} steps"
            samples[label] = x0
            rows.append({"sampler": "DDIM (eta=0)" if eta == 0 else "stochastic (eta=1)", "steps": k,
                         "wasserstein1_to_data": float(wasserstein_distance(x0.numpy(), exact.numpy())),
                         "mean": float(x0.mean()), "std": float(x0.std())})
    rows.append({"sampler": "reference: a second exact data sample", "steps": 0,
                 "wasserstein1_to_data": float(wasserstein_distance(
                     mixture_sample(n, weights, means, stds, torch.Generator().manual_seed(seed + 2)).numpy(),
                     exact.numpy())), "mean": float(exact.mean()), "std": float(exact.std())})
    return samples, rows


# ====================================================================== 4. models: load, build, widen
def published_unet_config() -> dict:
    """The UNet2DModel config of google/ddpm-celebahq-256 (its config.json on the hub): 6
    resolution levels 256 -> 8, self-attention at 16x16, about 114M parameters. Used to build the
    full-size architecture with random weights (benchmark, offline)."""
    return {
        "sample_size": 256, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
        "time_embedding_type": "positional", "freq_shift": 1, "flip_sin_to_cos": False,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                             "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "block_out_channels": [128, 128, 256, 256, 512, 512], "layers_per_block": 2,
        "mid_block_scale_factor": 1, "downsample_padding": 0, "act_fn": "silu",
        "attention_head_dim": None, "norm_num_groups": 32, "norm_eps": 1e-6,
    }


def published_scheduler_config() -> dict:
    """The DDPMScheduler config shipped with google/ddpm-celebahq-256."""
    return {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
            "variance_type": "fixed_small", "clip_sample": True}


def build_inpainting_unet(config: dict | None = None, in_channels: int = 7):
    """A randomly initialised UNet2DModel with ``in_channels`` inputs (default: the full-size
    architecture of :func:`published_unet_config`). For timing and memory, not for results."""
    from diffusers import UNet2DModel

    return UNet2DModel(**{**(config or published_unet_config()), "in_channels": in_channels})


def _local_path(pretrained_id: str) -> Path | None:
    """A local folder for ``pretrained_id`` (absolute, relative to cwd or to the repo), or None if
    it looks like a hub id. A path-like id that does not exist is an error (no hub lookup)."""
    p = Path(os.path.expanduser(pretrained_id))
    for cand in (p, ROOT / p):
        if cand.exists():
            return cand
    if p.is_absolute() or pretrained_id.startswith((".", "~")) or len(p.parts) > 2:
        raise FileNotFoundError(f"ddpm.pretrained_id = {pretrained_id!r}: no such folder")
    return None


def _from_pretrained(cls, source: str, cache_dir: Path, subfolder: str, filename: str):
    """``cls.from_pretrained`` on a hub id or a folder. google/ddpm-celebahq-256 keeps its files
    at the root; a local folder may also hold them in ``subfolder`` (a saved pipeline's layout)."""
    p = Path(source)
    sub = subfolder if p.is_dir() and not (p / filename).is_file() and (p / subfolder / filename).is_file() else None
    return cls.from_pretrained(source, subfolder=sub, cache_dir=str(cache_dir))


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _tiny_base(cfg: Config, P: Paths) -> Path:
    """Smoke: build UNet2DModel(**ddpm.tiny_config) with seeded random weights and a DDPMScheduler
    from the preset, and save both to P.models/ddpm_base (to be loaded back like a hub repo)."""
    from accelerate import PartialState
    from diffusers import UNet2DModel

    if not cfg.ddpm.get("tiny_config"):
        raise ValueError("ddpm.pretrained_id is null and ddpm.tiny_config is empty: set one of them")
    folder = P.models / BASE_DIR
    state = PartialState()
    with state.main_process_first():            # several processes: the main one writes, the others read
        if state.is_main_process:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                unet = UNet2DModel(**{"in_channels": 3, "out_channels": 3, **cfg.ddpm.tiny_config.to_dict()})
            _save_pretrained_atomic(unet, folder)
            _scheduler_from_cfg(cfg).save_pretrained(str(folder))
    return folder


def _source(cfg: Config, P: Paths) -> str:
    pid = cfg.ddpm.pretrained_id
    if not pid:
        return str(_tiny_base(cfg, P))
    try:
        local = _local_path(pid)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}.\n" + HOW_TO_GET.format(cache=P.cache / "hub", preset=cfg.preset)) from None
    return str(local) if local is not None else pid


def load_unconditional_unet(cfg: Config, P: Paths):
    """The pretrained unconditional 3-channel U-Net: ``UNet2DModel.from_pretrained(ddpm.pretrained_id)``
    (hub id, cached in data/cache/hub, or a local folder). With ``pretrained_id: null`` (smoke), a
    tiny random model is saved to P.models/ddpm_base and loaded back through the same call."""
    from diffusers import UNet2DModel

    source = _source(cfg, P)
    try:
        unet = _from_pretrained(UNet2DModel, source, P.cache / "hub", "unet", "config.json")
    except Exception as e:  # diffusers/huggingface_hub raise OSError, ValueError, HTTP errors...
        raise FileNotFoundError(
            f"could not load the DDPM U-Net from {source!r} ({type(e).__name__}: {_first_line(e)}).\n"
            + HOW_TO_GET.format(cache=P.cache / "hub", preset=cfg.preset)) from e
    unet.eval()
    return unet


def _scheduler_from_cfg(cfg: Config):
    from diffusers import DDPMScheduler

    schedule = {"cosine": "squaredcos_cap_v2"}.get(cfg.ddpm.beta_schedule, cfg.ddpm.beta_schedule)
    kw = {**published_scheduler_config(), "num_train_timesteps": cfg.ddpm.num_train_timesteps, "beta_schedule": schedule}
    return DDPMScheduler(**kw)


def load_noise_scheduler(cfg: Config, P: Paths):
    """The training (DDPM) scheduler: the pretrained repo's scheduler config when it has one,
    else a DDPMScheduler built from ddpm.num_train_timesteps and ddpm.beta_schedule."""
    from diffusers import DDPMScheduler

    source = _source(cfg, P) if cfg.ddpm.pretrained_id else str(P.models / BASE_DIR)
    try:
        sched = _from_pretrained(DDPMScheduler, source, P.cache / "hub", "scheduler", "scheduler_config.json")
    except Exception as e:
        log.warning("no scheduler config in %s (%s): building DDPMScheduler from the preset", source, _first_line(e))
        return _scheduler_from_cfg(cfg)
    if sched.config.num_train_timesteps != cfg.ddpm.num_train_timesteps:
        log.warning("the pretrained scheduler has %d timesteps, the preset says %d: using the pretrained one",
                    sched.config.num_train_timesteps, cfg.ddpm.num_train_timesteps)
    return sched


def weights_description(cfg: Config, P: Paths) -> str:
    """Which base weights a preset uses, in words (for meta.json and the notebooks)."""
    if cfg.ddpm.pretrained_id:
        return f"pretrained unconditional DDPM {cfg.ddpm.pretrained_id}"
    return (f"TINY RANDOMLY INITIALISED UNet2DModel (ddpm.tiny_config, seed {cfg.seed}), saved to "
            f"{P.models / BASE_DIR} and loaded back with from_pretrained: no pretrained weights (smoke)")


def widen_conv_in(unet, in_channels: int = 7):
    """A copy of ``unet`` whose first convolution takes ``in_channels`` inputs, the last 3 being
    x_t: input = concat(x_masked (3), mask (1), x_t (3)). The pretrained kernel is kept for the
    x_t channels and the new channels start at zero, so at initialisation the widened model
    computes exactly what the original computed on x_t. ``config.in_channels`` is updated, so
    save_pretrained / from_pretrained round-trip. Taught in notebook 03."""
    old = unet.conv_in
    c_old = old.in_channels
    if in_channels <= c_old:
        raise ValueError(f"in_channels must exceed the current {c_old}, got {in_channels}")
    new_unet = copy.deepcopy(unet)
    conv = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                           bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        # W_new[:, :in-3] = 0 (x_masked, mask);  W_new[:, in-3:] = W_old (x_t)
        conv.weight.zero_()
        conv.weight[:, in_channels - c_old:] = old.weight
        if old.bias is not None:
            conv.bias.copy_(old.bias)
    new_unet.conv_in = conv
    new_unet.register_to_config(in_channels=in_channels)
    return new_unet


def build_inpainting_model(cfg: Config, P: Paths):
    """(7-channel U-Net widened from the pretrained unconditional one, DDPM scheduler)."""
    base = load_unconditional_unet(cfg, P)
    return widen_conv_in(base, cfg.ddpm.in_channels), load_noise_scheduler(cfg, P)


def model_input(x_masked: torch.Tensor, mask: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """The 7-channel input: concat(x_masked, mask, x_t) along channels."""
    return torch.cat([x_masked, mask.to(x_masked.dtype), x_t], dim=1)


# ====================================================================== 5. the weighted loss and one step
def loss_weights(mask: torch.Tensor, lambda_mask: float, lambda_context: float) -> torch.Tensor:
    """W = mask * lambda_mask + (1 - mask) * lambda_context, shape (N, 1, H, W)."""
    return mask * lambda_mask + (1 - mask) * lambda_context


def weighted_eps_loss(eps: torch.Tensor, eps_theta: torch.Tensor, mask: torch.Tensor,
                      lambda_mask: float, lambda_context: float) -> torch.Tensor:
    """L = mean(W * (eps - eps_theta)^2), the mean over all N*C*H*W elements (computed in fp32)."""
    W = loss_weights(mask.float(), lambda_mask, lambda_context)
    # L = mean(W * (eps - eps_theta)^2)
    return (W * (eps.float() - eps_theta.float()) ** 2).mean()


def make_loss_fn(alphas_cumprod: torch.Tensor, lambda_mask: float, lambda_context: float):
    """loss_fn(model, batch, generator) for helpers.train.train: draws t and eps from ``generator``
    (all of the step's randomness, so a resumed run is exact) and returns the weighted loss."""
    T = len(alphas_cumprod)

    def loss_fn(model, batch: dict, generator: torch.Generator) -> torch.Tensor:
        # 1. the batch: x_0, the mask, the masked image
        x0 = batch["image"]
        g_dev = generator.device
        mask = batch["mask"].to(x0.device, x0.dtype)
        x_masked = x0 * (1 - mask)
        # 2. t ~ U{0, T-1}, eps ~ N(0, I), x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps
        t = torch.randint(0, T, (x0.shape[0],), generator=generator, device=g_dev).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=g_dev, dtype=x0.dtype).to(x0.device)
        x_t = q_sample(x0, t, eps, alphas_cumprod)
        # 3. eps_theta(concat(x_masked, mask, x_t), t) and the weighted loss
        eps_theta = model(model_input(x_masked, mask, x_t), t).sample
        return weighted_eps_loss(eps, eps_theta, mask, lambda_mask, lambda_context)

    return loss_fn


def training_step(model, optimizer, batch: dict, loss_fn, generator: torch.Generator, max_grad_norm: float,
                  autocast_dtype: torch.dtype = torch.float32, scaler=None) -> torch.Tensor:
    """One optimizer step without Accelerate (for tests and the benchmark): forward under autocast,
    backward (through ``scaler`` for fp16), clip, step. Returns the loss, detached and still on the
    device (reading it would make the CPU wait for the GPU at every step)."""
    device = next(model.parameters()).device
    ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype != torch.float32 else nullcontext())
    with ctx:
        loss = loss_fn(model, batch, generator)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# ====================================================================== 6. sampling
class SeededNoise:
    """Gaussian noise from one CPU generator per image: a fixed seed gives the same image whatever
    the batch size or device."""

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, shape_chw: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
        z = torch.stack([torch.randn(tuple(shape_chw), generator=g) for g in self.generators])
        # a plain copy would make the host wait for the GPU at every draw (RePaint draws 2-3 times a step)
        return to_device_nowait(z, device, dtype)


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


@torch.no_grad()
def ddim_inpaint(unet, scheduler_config: dict, x_masked: torch.Tensor, mask: torch.Tensor, seeds: Sequence[int],
                 num_inference_steps: int, eta: float = 0.0, sampler: str = "ddim",
                 autocast_dtype: torch.dtype = torch.float32, show_progress: bool = False) -> torch.Tensor:
    """Inpaint with the 7-channel model: x_T ~ N(0, I) (seeded per image), then ``num_inference_steps``
    DDIM (or DPM-Solver++, ``sampler='dpm'``) steps on eps_theta(concat(x_masked, mask, x_t), t);
    finally the known pixels are pasted back and the result clamped to [-1, 1]. Taught in notebook 03."""
    from .perf import make_sampler, sampling_timesteps

    device = next(unet.parameters()).device
    x_masked, mask = x_masked.to(device, torch.float32), mask.to(device, torch.float32)
    # 1. the sampler's timesteps (a fresh scheduler: multistep solvers keep state); no host sync inside the loop
    sch = make_sampler(sampler, scheduler_config)
    steps = sampling_timesteps(sch, num_inference_steps, device)
    noise = SeededNoise(seeds)
    # 2. x_T ~ N(0, I)
    x = noise(x_masked.shape[1:], device) * sch.init_noise_sigma
    # 3. reverse steps, conditioned on (x_masked, mask)
    for t_dev, t in progress(steps, desc="DDIM", leave=False, disable=not show_progress):
        with _autocast(device, autocast_dtype):
            eps = unet(model_input(x_masked, mask, sch.scale_model_input(x, t)), t_dev).sample
        kw = {"eta": eta, "variance_noise": noise(x.shape[1:], device) if eta > 0 else None} if sampler == "ddim" else {}
        x = sch.step(eps.float(), t, x, **kw).prev_sample
    # 4. keep the known pixels exactly: x = mask * x + (1 - mask) * x_known, in [-1, 1]
    return (mask * x.clamp(-1, 1) + (1 - mask) * x_masked).clamp(-1, 1)


def predict_images(fn: Callable, images: torch.Tensor, masks: torch.Tensor, seeds: Sequence[int], batch_size: int,
                   device: torch.device, desc: str) -> tuple[torch.Tensor, dict]:
    """Run ``fn(images, masks, seeds) -> predictions`` in batches with a progress bar;
    return (predictions on the CPU, {images_per_s, sample_seconds_per_image, peak_memory_bytes})."""
    out = []
    reset_peak_memory(device)
    with timed(device) as tm:
        for i in progress(range(0, len(images), batch_size), desc=desc):
            sl = slice(i, i + batch_size)
            out.append(fn(images[sl], masks[sl], list(seeds[sl])).cpu())
    n = len(images)
    return torch.cat(out), {"images_per_s": n / tm["seconds"], "sample_seconds_per_image": tm["seconds"] / n,
                            "sample_seconds": tm["seconds"], "peak_memory_bytes": peak_memory_bytes(device)}


def sample_test_set(cfg: Config, unet, scheduler_config: dict, device: torch.device,
                    max_images: int | None = None) -> tuple[torch.Tensor, dict, dict]:
    """DDIM-inpaint the frozen test set with the preset's steps, eta, sampler and batch size.
    Returns (predictions (N, 3, H, W), the test set dict, timing/memory stats)."""
    from .data import load_test_set

    test = load_test_set(cfg)
    n = len(test["name"]) if max_images is None else min(max_images, len(test["name"]))
    d = cfg.ddpm
    dtype = resolve_dtype(d.mixed_precision, device)
    fn = lambda x, m, s: ddim_inpaint(unet, scheduler_config, x * (1 - m), m, s, d.num_inference_steps, d.eta,
                                      cfg.perf.get("sampler", "ddim"), dtype)
    preds, stats = predict_images(fn, test["image"][:n], test["mask"][:n], image_seeds(cfg.seed, test["name"][:n]),
                                  d.sample_batch_size, device, f"{cfg.perf.get('sampler', 'ddim').upper()} inpainting")
    return preds, test, stats


# ====================================================================== 7. fine-tuning
def _save_pretrained_atomic(model, folder: Path) -> None:
    """save_pretrained into a temporary folder, then swap it in (a crash never leaves half a model)."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def run_fingerprint(cfg: Config) -> str:
    """Hash of what determines the training run (not its length, so a longer run resumes)."""
    keys = ("pretrained_id", "tiny_config", "in_channels", "num_train_timesteps", "beta_schedule", "batch_size",
            "lr", "weight_decay", "max_grad_norm", "lambda_mask", "lambda_context", "mixed_precision")
    blob = {"seed": cfg.seed, "data": cfg.data, "ddpm": {k: cfg.ddpm.get(k) for k in keys}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def checkpoint_dir(cfg: Config, P: Paths) -> Path:
    """P.models/ddpm_inpaint/ckpt_<fingerprint>: a changed setting starts a new run, never
    resumes a checkpoint of a different one."""
    return P.models / FINETUNED_DIR / f"ckpt_{run_fingerprint(cfg)}"


def finetuned_dir(cfg: Config, P: Paths) -> Path:
    return P.models / FINETUNED_DIR / "unet"


def make_validator(cfg: Config, P: Paths, unet, scheduler_config: dict, device: torch.device):
    """on_validate(step) for train(): DDIM-inpaint a fixed validation batch and save the grid
    P.figures/03_val_step<step>.png (main process only)."""
    import matplotlib.pyplot as plt
    from accelerate import PartialState

    from .data import InpaintDataset, collate
    from .plots import image_grid

    ds = InpaintDataset(cfg, "val")
    batch = collate([ds[i] for i in range(min(len(ds), 4))])
    x, m = batch["image"], batch["mask"]
    seeds = image_seeds(cfg.seed, batch["name"])

    def on_validate(step: int) -> None:
        if not PartialState().is_main_process:
            return
        pred = ddim_inpaint(unet, scheduler_config, x * (1 - m), m, seeds, cfg.ddpm.num_inference_steps,
                            cfg.ddpm.eta, cfg.perf.get("sampler", "ddim"),
                            resolve_dtype(cfg.ddpm.mixed_precision, device)).cpu()
        fig = image_grid(grid_rows(x * (1 - m), m, pred, x), col_titles=GRID_TITLES,
                         path=P.figures / f"03_val_step{step:06d}.png", title=f"validation, step {step}")
        plt.close(fig)

    return on_validate


def finetune(cfg: Config, P: Paths, unet, noise_scheduler, device: torch.device,
             on_validate: Callable[[int], None] | None = None, max_steps: int | None = None) -> dict:
    """Fine-tune the 7-channel U-Net with the weighted loss (helpers.train.train: AdamW, clipping,
    mixed precision, checkpoints, exact resume), save it to P.models/ddpm_inpaint/unet and return
    the training stats (also in <checkpoint dir>/train_stats.json). A run that finds its finished
    checkpoint does not train again and returns the stats of the run that did. Taught in notebook 03."""
    from accelerate import PartialState

    from .data import InpaintDataset, collate
    from .perf import set_attention
    from .train import train

    # 1. data, loss, speed switches (no torch.compile for training: checkpoints need plain names)
    dataset = InpaintDataset(cfg, "train")
    loss_fn = make_loss_fn(noise_scheduler.alphas_cumprod, cfg.ddpm.lambda_mask, cfg.ddpm.lambda_context)
    set_attention(unet, cfg.perf.get("sdpa", True))
    if cfg.perf.get("channels_last") and device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    # 2. the shared loop
    ckpt = checkpoint_dir(cfg, P)
    result = train(unet, loss_fn, dataset, cfg.ddpm, ckpt, cfg.seed, device, collate_fn=collate,
                   fused_adamw=cfg.perf.get("fused_adamw", True), on_validate=on_validate,
                   desc="DDPM fine-tuning", max_steps=max_steps)
    # Accelerate's optimizer wrapper sits in a reference cycle: collect it now so its AdamW state
    # (2 x the model's size) does not stay on the GPU and inflate the sampling peak memory
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # 3. stats: of this call, or of the earlier call that did the steps
    stats_path = ckpt / "train_stats.json"
    if result.steps > result.resumed_from or not stats_path.is_file():
        stats = {**result.summary(), "history": result.history, "checkpoint": str(ckpt / "last.pt"),
                 "note": ((f"resumed at step {result.resumed_from}; speed measured on the remaining steps"
                           if result.resumed_from else "one uninterrupted call")
                          + (f"; stopped at step {result.steps} by max_steps={max_steps}: run again to continue"
                             if max_steps is not None and result.steps >= max_steps else ""))}
        if PartialState().is_main_process:
            save_json(stats, stats_path)
    else:
        stats = load_json(stats_path)
        stats["note"] = f"loaded: training had already finished ({stats['steps']} steps) in an earlier run"
        stats["history"] = result.history
    # 4. the fine-tuned weights, in the diffusers format
    if PartialState().is_main_process:
        _save_pretrained_atomic(unet, finetuned_dir(cfg, P))
    stats["weights_path"] = str(finetuned_dir(cfg, P))
    return stats


def load_finetuned(cfg: Config, P: Paths):
    """The fine-tuned 7-channel U-Net saved by :func:`finetune`."""
    from diffusers import UNet2DModel

    folder = finetuned_dir(cfg, P)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no fine-tuned DDPM in {folder}: run notebook 03 (or "
                                f"`python -m helpers.ddpm --preset {cfg.preset}`) first")
    return UNet2DModel.from_pretrained(str(folder)).eval()


def save_finetuned_predictions(cfg: Config, P: Paths, unet, scheduler_config: dict, device: torch.device,
                               train_stats: dict) -> tuple[torch.Tensor, dict, dict]:
    """Inpaint the whole test set with the fine-tuned model and write it as method
    ``ddpm_finetuned`` (PNG + meta.json) for the evaluation notebook. Returns (preds, test, meta)."""
    from .data import write_predictions

    preds, test, stats = sample_test_set(cfg, unet, scheduler_config, device)
    trainable, total = count_parameters(unet)
    d = cfg.ddpm
    meta = {
        "weights": (f"{weights_description(cfg, P)}; first conv widened to {d.in_channels} channels and "
                    f"fine-tuned here for {train_stats.get('steps')} steps; saved in {finetuned_dir(cfg, P)}"),
        "device": str(device), **stats,
        "trainable_params": trainable, "total_params": total,
        "train_images_per_s": train_stats.get("images_per_s"),
        "train_peak_memory_bytes": train_stats.get("peak_memory_bytes"),
        "train_seconds": train_stats.get("seconds"), "train_steps": train_stats.get("steps"),
        "sampler": cfg.perf.get("sampler", "ddim"), "num_inference_steps": d.num_inference_steps, "eta": d.eta,
        "mixed_precision": str(resolve_dtype(d.mixed_precision, device)),
        "seeds": "one per image: seed * 1000003 + crc32(name)",
        "note": (f"known pixels pasted back; training: {train_stats.get('note', '')}"
                 + ("" if cfg.ddpm.pretrained_id else "; SMOKE: tiny random model, barely trained, outputs are noise-like")),
    }
    meta["n_images"] = len(preds)
    write_predictions(cfg, "ddpm_finetuned", test["name"], preds, meta)
    return preds, test, meta


def perf_rows(train_stats: dict, finetuned_meta: dict, repaint_meta: dict | None = None) -> list[dict]:
    """Trainable parameters, images/s and peak memory of training and sampling (notebook 03)."""
    gib = lambda b: None if b is None else round(b / 2**30, 3)
    rows = [{"stage": "fine-tuning (train)", "trainable_params": train_stats.get("trainable_params"),
             "total_params": train_stats.get("total_params"), "images_per_s": train_stats.get("images_per_s"),
             "peak_memory_GiB": gib(train_stats.get("peak_memory_bytes")), "seconds": train_stats.get("seconds"),
             "detail": f"{train_stats.get('steps')} steps"},
            {"stage": f"{finetuned_meta['sampler'].upper()} inpainting (fine-tuned)",
             "trainable_params": finetuned_meta["trainable_params"],
             "total_params": finetuned_meta["total_params"], "images_per_s": finetuned_meta["images_per_s"],
             "peak_memory_GiB": gib(finetuned_meta["peak_memory_bytes"]), "seconds": finetuned_meta["sample_seconds"],
             "detail": f"{finetuned_meta['num_inference_steps']} steps, {finetuned_meta['n_images']} images"}]
    if repaint_meta is not None:
        rows.append({"stage": "RePaint (training-free)", "trainable_params": 0,
                     "total_params": repaint_meta["total_params"], "images_per_s": repaint_meta["images_per_s"],
                     "peak_memory_GiB": gib(repaint_meta["peak_memory_bytes"]), "seconds": repaint_meta["sample_seconds"],
                     "detail": f"{repaint_meta['model_calls_per_image']} U-Net calls, {repaint_meta['n_images']} images"})
    return rows


# ====================================================================== 8. figures
GRID_TITLES = ["masked input", "mask (white = hole)", "prediction", "ground truth"]


def grid_rows(x_masked, mask, pred, target, n: int | None = None) -> list[list]:
    """Rows (masked input | mask | prediction | ground truth) for helpers.plots.image_grid."""
    n = len(pred) if n is None else min(n, len(pred))
    return [[x_masked[i], mask[i], pred[i], target[i]] for i in range(n)]


def schedule_figure(T: int = 1000, path: Path | None = None):
    """beta_t and alpha_bar_t of the linear and cosine schedules (notebook 02)."""
    import matplotlib.pyplot as plt

    from .plots import save

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for name in ("linear", "cosine"):
        b = make_betas(name, T)
        ab = alpha_bar(b)
        axes[0].plot(b, label=name)
        axes[1].plot(ab, label=name)
        axes[2].plot((ab / (1 - ab)).log10(), label=name)
    for ax, title in zip(axes, (r"$\beta_t$", r"$\bar\alpha_t$", r"$\log_{10}$ SNR $= \bar\alpha_t / (1 - \bar\alpha_t)$")):
        ax.set_title(title), ax.set_xlabel("timestep t"), ax.set_ylabel(title), ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    return save(fig, path)


def toy_figure(samples: dict, weights, means, stds, path: Path | None = None, labels: Sequence[str] | None = None):
    """Histograms of toy samples against the data density (notebook 02)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .plots import save

    labels = [k for k in samples if k != "data"] if labels is None else list(labels)
    grid = np.linspace(-1.5, 1.5, 400)
    dens = sum(w * np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * np.sqrt(2 * np.pi)) for w, m, s in zip(weights, means, stds))
    fig, axes = plt.subplots(1, len(labels), figsize=(2.6 * len(labels), 2.6), sharey=True, squeeze=False)
    for ax, lab in zip(axes[0], labels):
        ax.hist(samples[lab].numpy(), bins=120, range=(-1.5, 1.5), density=True, alpha=0.6)
        ax.plot(grid, dens, "k", lw=1)
        ax.set_title(lab), ax.set_xlabel("x")
    axes[0][0].set_ylabel("density")
    return save(fig, path)


# ====================================================================== 9. command line
def main(argv: Sequence[str] | None = None) -> dict:
    """Fine-tune from the command line (``accelerate launch -m helpers.ddpm --preset full``)."""
    from accelerate import PartialState

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smoke", help="smoke | full | path to a YAML preset")
    add_set_argument(ap)
    ap.add_argument("--max-steps", type=int, default=None, help="stop this call after this many steps (resumable)")
    args = ap.parse_args(argv)
    cfg = load_config(args.preset, parse_overrides(args.overrides))
    P = paths(cfg)
    device = get_device(cfg)
    # first use of Accelerate's state: without a GPU, processes started by `accelerate launch --multi_gpu`
    # (torchrun) join one gloo group on the CPU instead of each training alone
    state = PartialState(cpu=device.type != "cuda")
    unet, sched = build_inpainting_model(cfg, P)
    trainable, total = count_parameters(unet)
    log.info("%s; %d trainable of %d parameters", weights_description(cfg, P), trainable, total)
    on_validate = make_validator(cfg, P, unet, dict(sched.config), device)
    stats = finetune(cfg, P, unet, sched, device, on_validate=on_validate, max_steps=args.max_steps)
    if state.is_main_process:
        print(json.dumps({k: v for k, v in stats.items() if k != "history"}, indent=2, default=str))
    return stats


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
