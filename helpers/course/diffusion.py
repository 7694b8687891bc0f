"""Denoising diffusion, as notebook 02 derives it: schedules, the forward process q, the reverse
step p_theta, and DDIM, the deterministic sampler every DDPM of the course samples with.

Read top to bottom; each line sits under the formula it implements. Papers: Ho et al. 2020
(DDPM), Nichol & Dhariwal 2021 (cosine schedule), Song et al. 2021 (DDIM), Lu et al. 2022
(DPM-Solver++). The functions appear, as exact copies, in notebook 02's code cells (tag
``taught``); notebook 03 reuses the DDIM loop for inpainting.

Timestep convention: like diffusers, timesteps are indexed ``t = 0 .. T-1`` and
``alphas_cumprod[t]`` is the paper's alpha_bar of step t + 1 (Ho et al. count 1 .. T). ``x_0``
is the clean image, values in [-1, 1]. Noise levels (``ab_t``) are passed as Python floats or
0-dim CPU tensors, so a loop on the GPU never copies a number back to the host.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


# ====================================================================== 1. noise schedules
def make_betas(schedule: str, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_1 .. beta_T (float64): ``linear`` (Ho et al.) or ``cosine`` (Nichol & Dhariwal, eq. 17)."""
    if schedule == "linear":
        # beta_t evenly spaced from beta_start to beta_end
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if schedule in ("cosine", "squaredcos_cap_v2"):
        # f(t) = cos^2(((t / T + s) / (1 + s)) pi / 2),  alpha_bar_t = f(t) / f(0)
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
        # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} = 1 - f(t) / f(t - 1), capped at max_beta
        return torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], dtype=torch.float64)
    raise ValueError(f"beta schedule must be 'linear' or 'cosine', got {schedule!r}")


def alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    """The cumulative product of alpha_t = 1 - beta_t."""
    # alpha_bar_t = prod_{s <= t} (1 - beta_s)
    return torch.cumprod(1.0 - betas, dim=0)


# ====================================================================== 2. forward process q
def q_step(x_prev: torch.Tensor, t: int, eps: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """One forward step x_{t-1} -> x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
    b = float(betas[t])
    # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
    return math.sqrt(1 - b) * x_prev + math.sqrt(b) * eps


def q_sample(x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Any t at once, in closed form: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
    ``t`` is an int or one timestep per image, shape (N,)."""
    # a 1-d index even for one t: a 0-d device index would be read back to the host (a GPU sync)
    ab = alphas_cumprod.to(x0.device)[torch.as_tensor(t, device=x0.device).long().reshape(-1)].to(x0.dtype)
    ab = ab.reshape(-1, *[1] * (x0.ndim - 1))            # (N, 1, 1, 1): one level per image (or one for all)
    # x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


# ====================================================================== 3. reverse process p_theta
def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, ab_t) -> torch.Tensor:
    """The closed form solved for x_0, with the predicted noise."""
    ab_t = torch.as_tensor(ab_t, dtype=torch.float32)
    # x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
    return (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, ab_t, ab_prev) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_prev | x_t, x_0) (Ho et al. eq. 6-7) between two noise levels
    ab_t < ab_prev (adjacent steps, or the strided levels of a shorter schedule)."""
    ab_t, ab_prev = torch.as_tensor(ab_t, dtype=torch.float32), torch.as_tensor(ab_prev, dtype=torch.float32)
    alpha = ab_t / ab_prev                     # the step's alpha_t (a product of alphas for a strided step)
    beta = 1 - alpha
    # mu~_t = sqrt(alpha_bar_prev) beta_t / (1 - alpha_bar_t) x_0
    #        + sqrt(alpha_t) (1 - alpha_bar_prev) / (1 - alpha_bar_t) x_t
    mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab_t) * x_t
    # beta~_t = (1 - alpha_bar_prev) / (1 - alpha_bar_t) beta_t
    var = (1 - ab_prev) / (1 - ab_t) * beta
    return mean, var


def p_sample(x_t: torch.Tensor, eps: torch.Tensor, ab_t, ab_prev, noise: torch.Tensor | None,
             clip: bool = True) -> torch.Tensor:
    """Ancestral step x_t -> x_prev ~ p_theta(x_prev | x_t) = q(x_prev | x_t, x0_hat), variance beta~_t.
    ``noise=None`` returns the mean (the last step)."""
    x0_hat = predict_x0(x_t, eps, ab_t)
    if clip:
        x0_hat = x0_hat.clamp(-1, 1)
    mean, var = q_posterior(x0_hat, x_t, ab_t, ab_prev)
    # x_prev = mu~_t(x_t, x0_hat) + sqrt(beta~_t) z,   z ~ N(0, I)
    return mean if noise is None else mean + var.sqrt() * noise


def vlb_weights(betas: torch.Tensor) -> torch.Tensor:
    """Weight of ||eps - eps_theta||^2 in the bound's term L_{t-1} (Ho et al. eq. 12, sigma_t^2 = beta~_t);
    L_simple sets it to 1. t = 0 (the decoder term L_0) is NaN."""
    ab = alpha_bar(betas)
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    sigma2 = (1 - ab_prev) / (1 - ab) * betas
    # lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t))
    w = betas ** 2 / (2 * sigma2 * (1 - betas) * (1 - ab))
    w[0] = float("nan")
    return w


# ====================================================================== 4. DDIM: the sampler of the course
def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, ab_t, ab_prev, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip: bool = True) -> torch.Tensor:
    """One DDIM step between two noise levels (Song et al. eq. 12): deterministic for eta = 0."""
    ab_t, ab_prev = torch.as_tensor(ab_t, dtype=torch.float32), torch.as_tensor(ab_prev, dtype=torch.float32)
    x0_hat = predict_x0(x_t, eps, ab_t)
    if clip:
        x0_hat = x0_hat.clamp(-1, 1)
    # sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
    #                (eq. 16)
    sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
    # x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps + sigma z
    x_prev = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma ** 2).sqrt() * eps
    return x_prev + sigma * noise if eta > 0 else x_prev


def dpm_solver_step(x_t: torch.Tensor, x0_hat: torch.Tensor, x0_before: torch.Tensor | None,
                    ab_t, ab_prev, ab_before) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, alg. 2): the same move from x_t to the next level with a
    second-order correction from the previous step's x0_hat (``x0_before``, at level ``ab_before``)."""
    if float(ab_prev) >= 1.0:                           # the last step lands on x_0 itself (sigma = 0)
        return x0_hat
    # lambda = log(alpha / sigma) with alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)
    lam = lambda ab: 0.5 * math.log(float(ab) / (1 - float(ab)))
    h = lam(ab_prev) - lam(ab_t)
    # D = x0_hat + h / (2 h_before) (x0_hat - x0_before): first order on the first step
    D = x0_hat if x0_before is None else x0_hat + h / (2 * (lam(ab_t) - lam(ab_before))) * (x0_hat - x0_before)
    # x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (e^{-h} - 1) D
    return math.sqrt((1 - float(ab_prev)) / (1 - float(ab_t))) * x_t - math.sqrt(float(ab_prev)) * math.expm1(-h) * D


def ddim_timesteps(T: int, num_steps: int) -> list[int]:
    """The levels tau_i of an n-step schedule ('leading' spacing, as diffusers' DDIMScheduler)."""
    # tau = T//n (n-1), ..., T//n, 0
    return [i * (T // num_steps) for i in reversed(range(num_steps))]


@torch.no_grad()
def ddim_sample_loop(eps_fn: Callable, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, num_steps: int,
                     eta: float = 0.0, noise_fn: Callable | None = None, clip: bool = True,
                     solver: str = "ddim") -> torch.Tensor:
    """x_T -> x_0 in ``num_steps`` steps of DDIM (or ``solver="dpm"``: DPM-Solver++(2M), same levels),
    the model given as ``eps_fn(x_t, t) -> eps``."""
    if solver not in ("ddim", "dpm"):
        raise ValueError(f"solver must be 'ddim' or 'dpm', got {solver!r}")
    ts = ddim_timesteps(len(alphas_cumprod), num_steps)
    t_device = torch.tensor(ts, device=x_T.device)           # the network's timesteps, copied once
    ab = alphas_cumprod.float().cpu()
    x, x0_before = x_T, None
    for i, t in enumerate(ts):
        # alpha_bar of the next level: 1 after the last step (x_0 has no noise)
        ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        eps = eps_fn(x, t_device[i])
        if solver == "ddim":
            x = ddim_step(x, eps, ab[t], ab_prev, eta, noise_fn() if eta > 0 else None, clip)
        else:
            x0_hat = predict_x0(x, eps, ab[t])
            x = dpm_solver_step(x, x0_hat, x0_before, ab[t], ab_prev, ab[ts[i - 1]] if i else None)
            x0_before = x0_hat
    return x


# ====================================================================== 5. training from scratch, with checkpoints
def train_with_checkpoints(run, next_batch: Callable, checkpoints: list, evaluate: Callable,
                           loss_fn: Callable, step_fn: Callable) -> list[dict]:
    """Train ``run.model`` with ``loss_fn`` and ``step_fn`` (notebook 03's ``inpainting_loss`` and ``training_step``)
    until ``run.done()``; ``evaluate(run)`` at each checkpoint (in the budget's unit, ``run.elapsed()``: steps or
    training seconds) and at the end. ``run``: helpers.study.models.digits.DigitsRun."""
    d, history, pending = run.cfg, [], sorted(checkpoints)
    batch_loss = lambda model, batch, g: loss_fn(model, batch, g, run.alphas_cumprod,  # noqa: E731
                                                 d.lambda_mask, d.lambda_context)
    while True:
        if run.done() or (pending and run.elapsed() >= pending[0]):
            evaluate(run)                                  # the training clock is stopped while it samples
            pending = [c for c in pending if c > run.elapsed()]
        if run.done():
            return history
        t0 = run.clock()
        # 1. train images with fresh holes; 2. the learning rate at this point of the budget
        batch = next_batch(run.generator)
        run.schedule_lr()
        # 3. t, eps, x_t, eps_theta(concat(x_masked, m, x_t), t), weighted loss, backward, clip, AdamW
        loss, _ = step_fn(run.model, batch, batch_loss, run.optimizer, run.generator, d.max_grad_norm)
        history.append({"step": run.step, "loss": loss.item()})
        run.step += 1
        run.seconds += run.clock() - t0
