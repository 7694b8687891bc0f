"""Writes notebooks/02_ddpm_theory.ipynb (run: python tools/make_nb_02.py)."""
from nbtools import code, header, md, write

cells = header("""# 02 · DDPM theory: noising, denoising, and DDIM
Image completion with diffusion models: **DDPM vs Stable Diffusion 1.5 + LoRA**

A denoising diffusion probabilistic model (Ho et al. 2020) learns to undo a fixed process that
turns an image into Gaussian noise in $T$ small steps. This notebook derives what notebook 03
uses: the forward process and its closed form, the loss, and DDIM, a deterministic sampler that
needs far fewer steps. Every formula is checked numerically.""")
cells += [
    md("""## Index convention
Ho et al. count steps $t = 1 \\dots T$; diffusers (and `helpers.ddpm`) index them $t = 0 \\dots T-1$,
so index $t$ is the paper's step $t + 1$ and `alpha_bar[t]` $= \\prod_{s \\le t} (1 - \\beta_s)$.
$x_0$ is always the clean image, with values in $[-1, 1]$.""", slide="skip"),
    code("""import torch
import pandas as pd
device = H.common.get_device(cfg)
T = cfg.ddpm.num_train_timesteps
print(f"preset {cfg.preset}: T = {T}, {cfg.ddpm.beta_schedule} schedule, device {device}")"""),

    # ------------------------------------------------------------------ forward process
    md("""## 1. The forward process $q$
A Markov chain adds a little Gaussian noise at each step, with a variance schedule $\\beta_1 < \\dots < \\beta_T$:

$$q(x_t \\mid x_{t-1}) = \\mathcal N\\big(x_t;\\ \\sqrt{1-\\beta_t}\\,x_{t-1},\\ \\beta_t I\\big),
\\qquad q(x_{1:T} \\mid x_0) = \\prod_{t=1}^T q(x_t \\mid x_{t-1}).$$

With $\\alpha_t = 1 - \\beta_t$ and $\\bar\\alpha_t = \\prod_{s=1}^t \\alpha_s$, two Gaussian steps
compose into one ($\\sqrt{\\alpha_t}(\\sqrt{\\alpha_{t-1}} x_{t-2} + \\sqrt{1-\\alpha_{t-1}}\\,\\epsilon') + \\sqrt{1-\\alpha_t}\\,\\epsilon$
has variance $\\alpha_t(1-\\alpha_{t-1}) + 1 - \\alpha_t = 1 - \\alpha_t\\alpha_{t-1}$), and by induction
any $x_t$ can be drawn directly from $x_0$:

$$q(x_t \\mid x_0) = \\mathcal N\\big(x_t;\\ \\sqrt{\\bar\\alpha_t}\\,x_0,\\ (1-\\bar\\alpha_t) I\\big)
\\quad\\Longleftrightarrow\\quad x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon,\\ \\ \\epsilon \\sim \\mathcal N(0, I).$$

This closed form (`H.ddpm.q_sample`) is what makes training cheap: one random $t$ per image, no chain.""", slide="slide"),
    md("""### Schedules
**Linear** (Ho et al.): $\\beta_t$ from $10^{-4}$ to $0.02$. **Cosine** (Nichol & Dhariwal 2021):
$\\bar\\alpha_t = \\cos^2\\!\\big(\\frac{t/T + s}{1+s}\\frac{\\pi}{2}\\big)$, which destroys information more
evenly; the linear schedule is already almost pure noise long before $T$. The pretrained model of
notebook 03 uses the linear one.""", slide="subslide"),
    code("""from diffusers import DDPMScheduler
for ours, theirs in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
    diff = (H.ddpm.make_betas(ours, T).float() - DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs).betas).abs().max()
    print(f"{ours:>6}: max |our beta_t - diffusers' beta_t| = {diff:.1e}")
H.ddpm.schedule_figure(T, path=P.figures / "02_schedules.png");"""),
    md("""### An image from the data set, noised at several $t$
The same $\\epsilon$ is used in every column, only $\\bar\\alpha_t$ changes.""", slide="subslide"),
    code("""x0 = H.data.load_test_set(cfg)["image"][0]
ts = [0, 50, 100, 250, 500, 750, T - 1]
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(cfg.seed))
rows = [[H.ddpm.q_sample(x0, t, eps, H.ddpm.alpha_bar(H.ddpm.make_betas(name, T))).clamp(-1, 1) for t in ts]
        for name in ("linear", "cosine")]
H.plots.image_grid(rows, [f"t = {t}" for t in ts], ["linear", "cosine"], path=P.figures / "02_noised.png");"""),
    md("""### Check 1: the closed form is what iterating the one-step process gives
Start 3000 copies of a 16-pixel strip of $x_0$, apply $q(x_t \\mid x_{t-1})$ step by step, and compare
the empirical distribution at several $t$ with $\\mathcal N(\\sqrt{\\bar\\alpha_t} x_0, (1-\\bar\\alpha_t) I)$:
the error of the mean should be sampling error only (standard error $\\sqrt{(1-\\bar\\alpha_t)/3000} \\le 0.018$,
so the largest of 16 stays below about $3 \\times 0.018$),
the standard deviations should agree, and the standardised values should be $\\mathcal N(0,1)$
(Kolmogorov-Smirnov distance near 0).""", slide="slide"),
    code("""betas = H.ddpm.make_betas(cfg.ddpm.beta_schedule, T)
strip = x0[:, x0.shape[1] // 2, :16].mean(0)     # 16 grey values from the middle row
rows = H.ddpm.forward_check(strip, betas, [0, 9, 99, 299, 599, T - 1], n_chains=3000,
                            generator=torch.Generator().manual_seed(cfg.seed))
forward_table = pd.DataFrame(rows)
forward_table.to_csv(P.tables / "02_forward_check.csv", index=False)
forward_table.round(4)"""),
    code("""sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
xb, e = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 3, 16, 16)
tb = torch.tensor([0, 10, 500, T - 1])
q_vs_diffusers = (H.ddpm.q_sample(xb, tb, e, sched.alphas_cumprod) - sched.add_noise(xb, e, tb)).abs().max().item()
print(f"max |q_sample - DDPMScheduler.add_noise| = {q_vs_diffusers:.1e}")"""),

    # ------------------------------------------------------------------ reverse process and loss
    md("""## 2. The reverse process and the loss
The model learns Gaussian reverse steps $p_\\theta(x_{t-1} \\mid x_t) = \\mathcal N(\\mu_\\theta(x_t, t), \\sigma_t^2 I)$,
starting from $p(x_T) = \\mathcal N(0, I)$. Training maximises a variational lower bound on $\\log p_\\theta(x_0)$:

$$L_\\text{VLB} = \\mathbb E_q\\Big[\\underbrace{D_\\text{KL}(q(x_T\\mid x_0)\\,\\|\\,p(x_T))}_{L_T}
+ \\sum_{t>1} \\underbrace{D_\\text{KL}(q(x_{t-1}\\mid x_t, x_0)\\,\\|\\,p_\\theta(x_{t-1}\\mid x_t))}_{L_{t-1}}
\\ \\underbrace{-\\log p_\\theta(x_0 \\mid x_1)}_{L_0}\\Big].$$

Given $x_0$, the true reverse step is Gaussian (Bayes on the closed form):

$$q(x_{t-1}\\mid x_t, x_0) = \\mathcal N(\\tilde\\mu_t, \\tilde\\beta_t I),\\quad
\\tilde\\mu_t = \\frac{\\sqrt{\\bar\\alpha_{t-1}}\\beta_t}{1-\\bar\\alpha_t} x_0 + \\frac{\\sqrt{\\alpha_t}(1-\\bar\\alpha_{t-1})}{1-\\bar\\alpha_t} x_t,\\quad
\\tilde\\beta_t = \\frac{1-\\bar\\alpha_{t-1}}{1-\\bar\\alpha_t}\\beta_t .$$""", slide="slide"),
    md("""Writing $x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon)/\\sqrt{\\bar\\alpha_t}$ and letting the network
predict the noise, $\\mu_\\theta = \\frac{1}{\\sqrt{\\alpha_t}}\\big(x_t - \\frac{\\beta_t}{\\sqrt{1-\\bar\\alpha_t}}\\epsilon_\\theta(x_t, t)\\big)$,
each KL term becomes a weighted noise regression:

$$L_{t-1} = \\mathbb E_{x_0,\\epsilon}\\Big[\\frac{\\beta_t^2}{2\\sigma_t^2\\,\\alpha_t\\,(1-\\bar\\alpha_t)}
\\big\\|\\epsilon - \\epsilon_\\theta(\\sqrt{\\bar\\alpha_t}x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon,\\ t)\\big\\|^2\\Big] + C.$$

Ho et al. drop the weight and sample $t$ uniformly — the **simplified loss**

$$L_\\text{simple} = \\mathbb E_{t,\\,x_0,\\,\\epsilon}\\big\\|\\epsilon - \\epsilon_\\theta(\\sqrt{\\bar\\alpha_t}x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon,\\ t)\\big\\|^2,$$

which gives better samples: compared with the bound it down-weights the small-$t$ terms (below),
so the network spends its capacity on the harder, noisier steps. Notebook 03 uses $L_\\text{simple}$
with a per-pixel weight that favours the hole.""", slide="subslide"),
    code("""import matplotlib.pyplot as plt
w = H.ddpm.vlb_weights(betas)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(w.numpy(), label=r"VLB weight $\\beta_t^2 / (2\\tilde\\beta_t\\alpha_t(1-\\bar\\alpha_t))$")
ax.axhline(1.0, color="k", ls="--", lw=1, label=r"$L_{simple}$: weight 1")
ax.set_yscale("log"), ax.set_xlabel("t"), ax.legend(fontsize=8)
H.plots.save(fig, P.figures / "02_vlb_weights.png");"""),
    md("""Sampling then runs the chain backwards with the *ancestral* step (`H.ddpm.p_sample`):
$x_{t-1} = \\tilde\\mu_t(x_t, \\hat x_0) + \\sqrt{\\tilde\\beta_t}\\, z$ with $\\hat x_0$ from $\\epsilon_\\theta$ — $T = 1000$ network
evaluations per image. Our step is diffusers' `DDPMScheduler.step`:""", slide="subslide"),
    code("""xt, e = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
diffs = []
for t in (T - 1, 500, 1):
    ref = sched.step(e, t, xt, generator=torch.Generator().manual_seed(0)).prev_sample
    z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(0))
    diffs.append((H.ddpm.p_sample(xt, e, sched.alphas_cumprod[t], sched.alphas_cumprod[t - 1], z) - ref).abs().max().item())
p_vs_diffusers = max(diffs)
print(f"max |p_sample - DDPMScheduler.step| = {p_vs_diffusers:.1e}")"""),

    # ------------------------------------------------------------------ DDIM
    md("""## 3. DDIM: the same model, a deterministic sampler, fewer steps
Song et al. (2021) note that $L_\\text{simple}$ only depends on the marginals $q(x_t\\mid x_0)$, so a
trained $\\epsilon_\\theta$ also fits a family of *non-Markovian* processes with the same marginals. Their
reverse step (eq. 12), for any earlier level $\\tau_{i-1} < \\tau_i$:

$$x_{\\tau_{i-1}} = \\sqrt{\\bar\\alpha_{\\tau_{i-1}}}\\ \\underbrace{\\frac{x_{\\tau_i} - \\sqrt{1-\\bar\\alpha_{\\tau_i}}\\,\\epsilon_\\theta}{\\sqrt{\\bar\\alpha_{\\tau_i}}}}_{\\hat x_0}
+ \\sqrt{1-\\bar\\alpha_{\\tau_{i-1}} - \\sigma^2}\\ \\epsilon_\\theta + \\sigma z,
\\qquad \\sigma = \\eta\\sqrt{\\tfrac{1-\\bar\\alpha_{\\tau_{i-1}}}{1-\\bar\\alpha_{\\tau_i}}}\\sqrt{1-\\tfrac{\\bar\\alpha_{\\tau_i}}{\\bar\\alpha_{\\tau_{i-1}}}}.$$

* $\\eta = 1$ recovers a DDPM-like stochastic sampler; $\\eta = 0$ makes sampling **deterministic**: a
  fixed $x_T$ always gives the same image (it discretises an ODE).
* The levels $\\tau$ can be a short subsequence of $0 \\dots T-1$ (here $T/n \\cdot (n-1), \\dots, T/n, 0$):
  50 steps instead of 1000.""", slide="slide"),
    md("""### Check 2: a toy where the perfect $\\epsilon_\\theta$ is known
For 1-D data from a Gaussian mixture, $q(x_t)$ is again a mixture and the ideal noise predictor is
$\\epsilon^*(x_t, t) = -\\sqrt{1-\\bar\\alpha_t}\\,\\nabla_x \\log q(x_t)$ in closed form — no network, so
only the sampler is being tested. With exact $\\epsilon$, DDIM with 1000 or 50 steps reproduces the
data; very few steps collapse the modes. Wasserstein-1 distance to the data (a second exact
sample gives the noise floor):""", slide="subslide"),
    code("""toy = dict(weights=(0.3, 0.7), means=(-0.6, 0.5), stds=(0.1, 0.2))
toy_samples, toy_rows = H.ddpm.ddim_toy_experiment(seed=cfg.seed, **toy)
toy_table = pd.DataFrame(toy_rows)
toy_table.to_csv(P.tables / "02_ddim_toy.csv", index=False)
H.ddpm.toy_figure(toy_samples, path=P.figures / "02_ddim_toy.png",
                  labels=["DDIM 1000 steps", "DDIM 50 steps", "DDIM 10 steps", "DDIM 2 steps", "eta=1 50 steps"], **toy)
toy_table.round(4)"""),
    md("""### Check 3: DDIM on the pretrained unconditional U-Net
The model notebook 03 starts from, sampling from one fixed $x_T$ (`H.ddpm.ddim_sample_loop`, our
own loop) with few and with the preset's number of steps, compared with diffusers'
`DDIMScheduler` on the same $x_T$, and run twice to show it is deterministic.""", slide="slide"),
    code("""unet = H.ddpm.load_unconditional_unet(cfg, P).to(device)
noise_sched = H.ddpm.load_noise_scheduler(cfg, P)
ab = noise_sched.alphas_cumprod
print(H.ddpm.weights_description(cfg, P))
if not cfg.ddpm.pretrained_id:
    print("SMOKE PRESET: the U-Net is tiny and untrained, so the samples below are noise-like. "
          "What is shown is the sampler, not image quality.")
size = unet.config.sample_size
x_T = H.ddpm.SeededNoise(H.common.image_seeds(cfg.seed, ["a", "b", "c", "d"]))((3, size, size), device)
steps = [10, cfg.ddpm.num_inference_steps]
ddim, ddim_vs_diffusers, deterministic = H.ddpm.unconditional_ddim_demo(unet, noise_sched.config, ab, x_T, steps)
print(f"max |our DDIM - diffusers DDIMScheduler| = {ddim_vs_diffusers:.1e}; "
      f"same x_T twice gives the same images: {deterministic}")"""),
    code("""rows = [[ddim[n][i] for i in range(len(x_T))] for n in steps]
H.plots.image_grid(rows, [f"x_T #{i}" for i in range(len(x_T))],
                   [f"DDIM {n} steps" for n in steps], path=P.figures / "02_ddim_samples.png");"""),

    # ------------------------------------------------------------------ results
    md("""## What notebook 03 takes from here
* training draws $t$ and $\\epsilon$, forms $x_t$ with the closed form and regresses $\\epsilon$ ($L_\\text{simple}$);
* sampling uses DDIM with $\\eta = 0$ and `ddpm.num_inference_steps` steps: deterministic for a fixed seed;
* RePaint (the training-free baseline) uses the ancestral step $p_\\theta$ and the forward step $q$.""", slide="slide"),
    code("""checks = {"q_sample_vs_diffusers_add_noise": q_vs_diffusers, "p_sample_vs_diffusers_ddpm_step": p_vs_diffusers,
          "ddim_vs_diffusers_ddim_scheduler": ddim_vs_diffusers,
          "forward_check_max_ks": float(forward_table.ks_distance_to_normal.max()),
          "weights": H.ddpm.weights_description(cfg, P)}
H.common.save_json(checks, P.tables / "02_checks.json")
checks"""),
]
write("notebooks/02_ddpm_theory.ipynb", cells)
