"""Numerical checks and toy demonstrations notebook 02 runs on the taught code: the forward
process against its closed form, DDIM with an exactly known noise predictor (a 1-D Gaussian
mixture), and DDIM on the unconditional U-Net against diffusers' scheduler. Each takes the
sampling loop as an argument, so the notebook checks the loop it has just defined."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from helpers.course.diffusion import alpha_bar, ddim_sample_loop, make_betas, q_step


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


@torch.no_grad()
def unconditional_ddim_demo(unet, scheduler_config: dict, alphas_cumprod: torch.Tensor, x_T: torch.Tensor,
                            steps: Sequence[int], loop=ddim_sample_loop) -> tuple[dict, float, bool]:
    """Notebook 02: DDIM from one fixed x_T with our loop for each number of ``steps``; the last
    one repeated (determinism) and run through diffusers' DDIMScheduler (agreement).
    Returns ({steps: images on the CPU}, max |ours - diffusers|, identical on the repeat)."""
    from diffusers import DDIMScheduler

    device = x_T.device
    eps_fn = lambda x, t: unet(x, t).sample.float()
    ours = {n: loop(eps_fn, x_T, alphas_cumprod, n).cpu() for n in steps}
    again = loop(eps_fn, x_T, alphas_cumprod, steps[-1]).cpu()
    ref = DDIMScheduler.from_config(scheduler_config)       # eta = 0: deterministic, like ours
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


def ddim_toy_experiment(steps: Sequence[int] = (1000, 50, 10, 5, 2), n: int = 10000, seed: int = 0,
                        weights=(0.3, 0.7), means=(-0.6, 0.5), stds=(0.1, 0.2), T: int = 1000,
                        loop=ddim_sample_loop) -> tuple[dict, list]:
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
            x0 = loop(eps_fn, x_T, ab, k, eta, lambda g=g: torch.randn(n, generator=g, dtype=torch.float64),
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
