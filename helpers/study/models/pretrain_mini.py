"""Training the ``mini`` preset's two pretrained stand-ins, from the SOURCE half of scikit-learn's digits only.

The full study starts from weights someone else trained on data the study never touches
(google/ddpm-celebahq-256, SD 1.5 inpainting). The mini preset's stand-ins are made here the same way,
at toy scale, on the half of the digits the study does not use (``digit_images("source", 32)``: as written;
the study's target half is drawn bold and is never read here):

* ``ddpm/``: an unconditional pixel DDPM (Ho et al. 2020): ``UNet2DModel`` 3 -> 3 channels at 16 px, epsilon
  prediction, a ``DDPMScheduler`` of 1000 steps; the EMA copy of the weights is what is saved.
* ``sd-inpainting/``: a latent inpainting pipeline of SD 1.5's classes (Rombach et al. 2022): an
  ``AutoencoderKL`` (factor 2, 4 latent channels) trained first, then, with it frozen, a small
  ``CLIPTextModel`` (CLIP's real tokenizer) and a 9-channel ``UNet2DConditionModel`` trained jointly the way
  SD inpainting was: random masks (a quarter of them the whole image), unet input concat(z_t, m, z_masked),
  captions dropped to "" 15 % of the time (classifier-free guidance).

Budgets are optimizer steps (with ``--seed`` and 1 thread a re-run gives the same weights). Each part is
written to a temporary folder and renamed into place, with ``recipe.json`` and ``README.md`` beside it.

    python -m helpers.study.models.pretrain_mini --out pretrained/mini [--ddpm-steps N] [--vae-steps N]
        [--sd-steps N] [--seed 0] [--only ddpm|sd]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from helpers.course.masks import generate_mask
from helpers.course.sd_inpainting import blank_hole, encode_latents, mask_to_latent

SIZE = 16                                    # pixels (the mini preset's data.image_size); latents 8 x 8 x 4
MASK_KINDS = ("box", "thin", "medium", "thick")


@dataclass
class Recipe:
    """Every number that decides the weights (written to recipe.json)."""
    seed: int = 0
    # the pixel DDPM
    ddpm_steps: int = 2000
    ddpm_batch_size: int = 64
    ddpm_lr: float = 1e-3
    ddpm_beta_schedule: str = "squaredcos_cap_v2"   # cosine (Nichol & Dhariwal 2021): for small images
    # the latent pipeline: VAE first, then text encoder + U-Net
    vae_steps: int = 400
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-4
    sd_steps: int = 4800                             # 1600 left the zero-shot at 0.84 digit accuracy, 4800: 0.96
    sd_batch_size: int = 64
    sd_lr: float = 5e-4
    prompt_dropout: float = 0.15
    full_mask_fraction: float = 0.25                 # SD inpainting: "in 25 % mask everything"
    min_hole: float = 0.15
    max_hole: float = 0.5
    mask_pool: int = 4096                            # masks drawn once (seeded), then sampled per image
    # shared
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    lr_min_fraction: float = 0.1
    ema_decay: float = 0.999
    max_grad_norm: float = 1.0


# ====================================================================== 1. data: the source half only
def source_digits(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, size, size) in [-1, 1], labels (N,)): the SOURCE half of the digits, as written."""
    from helpers.study.data.sources import digit_images, digit_label

    names, imgs = zip(*digit_images("source", size))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.tensor([digit_label(n) for n in names])


def mask_pool(n: int, rng: np.random.Generator, min_hole: float, max_hole: float) -> torch.Tensor:
    """n masks (n, 1, SIZE, SIZE) in {0, 1} (1 = hole), the LaMa-style kinds cycled."""
    return torch.from_numpy(np.stack([generate_mask(SIZE, MASK_KINDS[i % len(MASK_KINDS)], rng, min_hole, max_hole)
                                      for i in range(n)]))[:, None]


# ====================================================================== 2. shared pieces of the loops
def lr_lambda(steps: int, warmup_fraction: float, lr_min_fraction: float):
    """lr(step) / lr: linear warm-up, then cosine decay to lr_min_fraction at the end of the budget."""
    warm = max(1, int(steps * warmup_fraction))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, steps - warm))
        return lr_min_fraction + (1 - lr_min_fraction) * 0.5 * (1 + math.cos(math.pi * p))
    return f


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """theta_ema <- beta theta_ema + (1 - beta) theta,  beta = min(decay, (1 + step) / (10 + step))."""
    beta = min(decay, (1 + step) / (10 + step))
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1 - beta)


def make_optimizer(params, lr: float, r: Recipe, steps: int):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=r.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, r.warmup_fraction, r.lr_min_fraction))


def progress(steps: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(range(steps), desc=desc, mininterval=2.0, file=sys.stderr)


def n_params(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def swap_folder(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp`` (same file system): the old one is kept until the new one is in place."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


# ====================================================================== 3. the unconditional pixel DDPM
def ddpm_unet():
    """UNet2DModel 3 -> 3 at 16 px: 16 -> 8 -> 4, self-attention at 4 x 4 (as celebahq-256 at 16 x 16)."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=32)


def ddpm_scheduler(r: Recipe):
    from diffusers import DDPMScheduler

    from helpers.study.models.ddpm import published_scheduler_config

    return DDPMScheduler(**{**published_scheduler_config(), "beta_schedule": r.ddpm_beta_schedule})


def ddpm_loss(unet, x0: torch.Tensor, alphas_cumprod: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Ho et al. 2020, eq. 14: L = || eps - eps_theta(sqrt(a_bar_t) x_0 + sqrt(1 - a_bar_t) eps, t) ||^2."""
    t = torch.randint(0, len(alphas_cumprod), (len(x0),), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return F.mse_loss(unet(x_t, t).sample, eps)


def train_ddpm(x: torch.Tensor, r: Recipe, steps: int | None = None):
    """(EMA U-Net, scheduler, stats): ``steps`` AdamW steps of the epsilon loss on ``x``."""
    steps = r.ddpm_steps if steps is None else steps
    torch.manual_seed(r.seed)
    g = torch.Generator().manual_seed(r.seed)
    unet, sched = ddpm_unet(), ddpm_scheduler(r)
    ema = copy.deepcopy(unet).requires_grad_(False)
    ab = sched.alphas_cumprod.float()
    opt, lr_sched = make_optimizer(unet.parameters(), r.ddpm_lr, r, steps)
    unet.train()
    t0, losses = time.perf_counter(), []
    bar = progress(steps, "pixel DDPM")
    for step in bar:
        # 1. a random batch of source digits (no flips: a mirrored digit is another symbol)
        x0 = x[torch.randint(0, len(x), (r.ddpm_batch_size,), generator=g)]
        # 2. eps-loss, clipped AdamW step, then the EMA
        loss = ddpm_loss(unet, x0, ab, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), r.max_grad_norm)
        opt.step()
        lr_sched.step()
        ema_update(ema, unet, step, r.ema_decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    seconds = time.perf_counter() - t0
    return ema.eval(), sched, {"steps": steps, "batch_size": r.ddpm_batch_size, "lr": r.ddpm_lr,
                               "seconds": round(seconds, 1), "steps_per_s": round(steps / max(seconds, 1e-9), 3),
                               "final_loss": float(np.mean(losses[-100:])) if losses else None,
                               "parameters": n_params(ema)}


def save_ddpm(unet, sched, folder: Path) -> None:
    """DDPMPipeline(unet, scheduler).save_pretrained: unet/ and scheduler/, as load_unconditional_unet reads."""
    from diffusers import DDPMPipeline

    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    os.chmod(tmp, 0o755)                                 # mkdtemp makes it private; the weights are for everyone
    try:
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(tmp))
        swap_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ====================================================================== 4. the latent inpainting pipeline
def sd_configs(vocab_size: int, bos: int, eos: int, pad: int) -> dict:
    """SD 1.5's classes at digit scale; the scheduler is SD's own config."""
    from helpers.study.models.sd_pipeline import published_configs

    return {
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
                "block_out_channels": [32, 64], "norm_num_groups": 32, "sample_size": SIZE,
                "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
                "scaling_factor": 1.0},                      # set from the latents' std after the VAE is trained
        "text_encoder": {"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
                         "hidden_act": "quick_gelu", "projection_dim": 32, "bos_token_id": bos,
                         "eos_token_id": eos, "pad_token_id": pad},
        "unet": {"sample_size": SIZE // 2, "in_channels": 9, "out_channels": 4, "layers_per_block": 1,
                 "block_out_channels": [32, 64], "attention_head_dim": 8, "cross_attention_dim": 32,
                 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 32},
        "scheduler": published_configs()["scheduler"],
    }


def train_vae(vae, x: torch.Tensor, r: Recipe, steps: int | None = None) -> dict:
    """L = |x - D(z)|_1 + ||x - D(z)||^2 + w_KL KL(q(z|x) || N(0, I)), z ~ q(z|x); then the scaling factor
    s = 1 / std(z) over the source set (SD: 0.18215), written into the VAE's config."""
    steps = r.vae_steps if steps is None else steps
    g = torch.Generator().manual_seed(r.seed + 1)
    opt, lr_sched = make_optimizer(vae.parameters(), r.vae_lr, r, steps)
    vae.train()
    t0, losses = time.perf_counter(), []
    bar = progress(steps, "VAE")
    for step in bar:
        x0 = x[torch.randint(0, len(x), (r.vae_batch_size,), generator=g)]
        dist = vae.encode(x0).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        x_hat = vae.decode(z).sample
        # KL per latent element (diffusers' kl() sums over C, H, W)
        kl = dist.kl().mean() / dist.mean[0].numel()
        loss = (x_hat - x0).abs().mean() + F.mse_loss(x_hat, x0) + r.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), r.max_grad_norm)
        opt.step()
        lr_sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    seconds = time.perf_counter() - t0
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.cat([vae.encode(c).latent_dist.sample(generator=g) for c in x.split(256)])
        rec = torch.cat([vae.decode(vae.encode(c).latent_dist.mean).sample for c in x.split(256)])
    s = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=s)
    return {"steps": steps, "batch_size": r.vae_batch_size, "lr": r.vae_lr, "kl_weight": r.vae_kl_weight,
            "seconds": round(seconds, 1), "steps_per_s": round(steps / max(seconds, 1e-9), 3),
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
            "reconstruction_l1": float((rec - x).abs().mean()), "scaling_factor": s, "parameters": n_params(vae)}


def sd_inpaint_loss(unet, text_encoder, tokenizer, vae, alphas_cumprod: torch.Tensor, x0: torch.Tensor,
                    m: torch.Tensor, captions: list[str], g: torch.Generator) -> torch.Tensor:
    """The SD inpainting loss of one batch (images [-1, 1], masks 1 = hole), text encoder trained jointly."""
    n = len(x0)
    # 1. z_0 ~ q(z | x) * s and z_masked ~ q(z | x * (1 - m)) * s through the frozen VAE; m on the latent grid
    with torch.no_grad():
        c, h = vae.config.latent_channels, SIZE // 2
        eps_vae = torch.randn((2 * n, c, h, h), generator=g)
        z0, z_masked = encode_latents(vae, torch.cat([x0, blank_hole(x0, m)]), eps_vae).chunk(2)
        m_down = mask_to_latent(m, (h, h))
    # 2. tau(c) with gradients: each distinct caption once, then indexed
    unique = sorted(set(captions))
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    hidden = text_encoder(ids)[0]
    cond = hidden[torch.tensor([unique.index(p) for p in captions])]
    # 3. t ~ U{0..T-1}, eps ~ N(0, I),  z_t = sqrt(a_bar_t) z_0 + sqrt(1 - a_bar_t) eps
    t = torch.randint(0, len(alphas_cumprod), (n,), generator=g)
    eps = torch.randn(z0.shape, generator=g)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
    # 4. L = || eps - eps_theta(concat(z_t, m_down, z_masked), t, tau(c)) ||^2
    eps_theta = unet(torch.cat([z_t, m_down, z_masked], 1), t, encoder_hidden_states=cond).sample
    return F.mse_loss(eps_theta, eps)


def sample_batch(x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, r: Recipe, g: torch.Generator,
                 batch_size: int):
    """Images, masks (a fraction of them the whole image) and captions ("" with prob. prompt_dropout)."""
    from helpers.study.data.sources import digit_caption

    idx = torch.randint(0, len(x), (batch_size,), generator=g)
    m = masks[torch.randint(0, len(masks), (batch_size,), generator=g)].clone()
    m[torch.rand(batch_size, generator=g) < r.full_mask_fraction] = 1.0
    drop = torch.rand(batch_size, generator=g) < r.prompt_dropout
    captions = ["" if d else digit_caption(int(y)) for d, y in zip(drop, labels[idx])]
    return x[idx], m, captions


def train_sd(x: torch.Tensor, labels: torch.Tensor, r: Recipe, tokenizer, vae_steps: int | None = None,
             sd_steps: int | None = None):
    """(components, stats): the VAE, then (VAE frozen) text encoder + 9-channel U-Net jointly."""
    from helpers.study.models.sd_pipeline import build_components

    steps = r.sd_steps if sd_steps is None else sd_steps
    parts = build_components(sd_configs(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                         tokenizer.pad_token_id), seed=r.seed)
    vae, text_encoder, unet, sched = parts["vae"], parts["text_encoder"], parts["unet"], parts["scheduler"]
    # 1. the autoencoder alone
    vae_stats = train_vae(vae, x, r, vae_steps)
    # 2. masks drawn once from a seeded generator; the diffusion's own schedule (SD's scaled_linear betas)
    masks = mask_pool(r.mask_pool, np.random.default_rng(r.seed), r.min_hole, r.max_hole)
    ab = sched.alphas_cumprod.float()
    g = torch.Generator().manual_seed(r.seed + 2)
    torch.manual_seed(r.seed + 2)
    nets = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder}).train().requires_grad_(True)
    ema = copy.deepcopy(nets).requires_grad_(False)
    opt, lr_sched = make_optimizer(nets.parameters(), r.sd_lr, r, steps)
    t0, losses = time.perf_counter(), []
    bar = progress(steps, "SD inpainting (text encoder + U-Net)")
    for step in bar:
        x0, m, captions = sample_batch(x, labels, masks, r, g, r.sd_batch_size)
        loss = sd_inpaint_loss(nets["unet"], nets["text_encoder"], tokenizer, vae, ab, x0, m, captions, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nets.parameters(), r.max_grad_norm)
        opt.step()
        lr_sched.step()
        ema_update(ema, nets, step, r.ema_decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    seconds = time.perf_counter() - t0
    stats = {"vae": vae_stats,
             "unet_text_encoder": {"steps": steps, "batch_size": r.sd_batch_size, "lr": r.sd_lr,
                                   "prompt_dropout": r.prompt_dropout, "full_mask_fraction": r.full_mask_fraction,
                                   "seconds": round(seconds, 1), "steps_per_s": round(steps / max(seconds, 1e-9), 3),
                                   "final_loss": float(np.mean(losses[-100:])) if losses else None},
             "parameters": {"vae": n_params(vae), "text_encoder": n_params(text_encoder), "unet": n_params(unet)}}
    return {"vae": vae, "text_encoder": ema["text_encoder"].eval(), "unet": ema["unet"].eval(),
            "scheduler": sched}, stats


def save_sd(parts: dict, tokenizer, folder: Path, dtype: torch.dtype = torch.float16) -> None:
    """StableDiffusionInpaintPipeline(...).save_pretrained in ``dtype`` (fp16 halves the file; load_pipeline
    reads it back in fp32 on the CPU)."""
    from diffusers import StableDiffusionInpaintPipeline

    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    os.chmod(tmp, 0o755)                                 # mkdtemp makes it private; the weights are for everyone
    try:
        nets = {k: copy.deepcopy(parts[k]).to(dtype) for k in ("vae", "text_encoder", "unet")}
        pipe = StableDiffusionInpaintPipeline(**nets, tokenizer=tokenizer, scheduler=parts["scheduler"],
                                              safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
        pipe.save_pretrained(str(tmp))
        swap_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ====================================================================== 5. recipe, README, CLI
README = """# Pretrained stand-ins of the `mini` preset

Made by `helpers/study/models/pretrain_mini.py`, the way the hub's models were made, at toy scale:
trained from scratch on the **source** half of scikit-learn's digits (as written, {size} px). They never
saw the **target** half (drawn bold), which is the study's data.

* `ddpm/` - stand-in of google/ddpm-celebahq-256: an unconditional pixel DDPM (`UNet2DModel` 3 -> 3,
  {size} px, epsilon prediction, `DDPMScheduler` of 1000 steps, cosine schedule); the EMA weights.
* `sd-inpainting/` - stand-in of SD 1.5 inpainting: `StableDiffusionInpaintPipeline` with an
  `AutoencoderKL` (factor 2, 4 latent channels), a small `CLIPTextModel` with CLIP's real tokenizer,
  a 9-channel `UNet2DConditionModel` and SD's `DDIMScheduler` config. VAE trained first; then, VAE
  frozen, text encoder + U-Net trained jointly as SD inpainting was (random masks, a quarter of them
  the whole image; captions "a handwritten seven" dropped to "" 15 % of the time). EMA weights,
  stored in fp16 (loaded back in fp32 on the CPU).

Exact steps, batch sizes, learning rates, times, final losses, parameter counts and file sizes:
`recipe.json`. Reproduce (1 thread per process, deterministic for a given seed and step budget; the
two parts may run at once, one per core, writing into the same folder):

    {command}
"""


def update_recipe(out: Path, part: str, record: dict, command: str) -> None:
    """Merge one part's record into out/recipe.json (written atomically) and rewrite out/README.md."""
    path = out / "recipe.json"
    recipe = json.loads(path.read_text()) if path.is_file() else {}
    recipe[part] = {**record, "command": command}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".recipe.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(recipe, f, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    commands = "\n    ".join(r["command"] for r in recipe.values())
    (out / "README.md").write_text(README.format(size=SIZE, command=commands))


def run(out: Path, r: Recipe, only: str | None = None, command: str = "") -> dict:
    """Train and save the parts asked for; returns the records written to recipe.json."""
    from helpers.study.models.sd_pipeline import quiet_library_output, write_clip_tokenizer

    quiet_library_output()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, labels = source_digits()
    records = {}
    if only in (None, "ddpm"):
        unet, sched, stats = train_ddpm(x, r)
        save_ddpm(unet, sched, out / "ddpm")
        records["ddpm"] = {"recipe": {k: v for k, v in asdict(r).items() if k.startswith("ddpm") or k in SHARED},
                           "data": f"digit_images('source', {SIZE}): {len(x)} digits", **stats,
                           "scheduler": dict(sched.config), "bytes": folder_bytes(out / "ddpm")}
        update_recipe(out, "ddpm", records["ddpm"], command)
    if only in (None, "sd"):
        with tempfile.TemporaryDirectory() as d:
            tokenizer = write_clip_tokenizer(Path(d))
        parts, stats = train_sd(x, labels, r, tokenizer)
        save_sd(parts, tokenizer, out / "sd-inpainting")
        records["sd"] = {"recipe": {k: v for k, v in asdict(r).items() if not k.startswith("ddpm")},
                         "data": f"digit_images('source', {SIZE}): {len(x)} digits", **stats,
                         "weights_dtype": "float16", "bytes": folder_bytes(out / "sd-inpainting")}
        update_recipe(out, "sd", records["sd"], command)
    return records


SHARED = ("seed", "weight_decay", "warmup_fraction", "lr_min_fraction", "ema_decay", "max_grad_norm")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("pretrained/mini"))
    p.add_argument("--ddpm-steps", type=int, default=Recipe.ddpm_steps)
    p.add_argument("--vae-steps", type=int, default=Recipe.vae_steps)
    p.add_argument("--sd-steps", type=int, default=Recipe.sd_steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("ddpm", "sd"), default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: deterministic, fastest on 2 shared cores)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    command = "python -m helpers.study.models.pretrain_mini " + " ".join(shlex.quote(s) for s in
                                                                         (argv if argv is not None else sys.argv[1:]))
    r = Recipe(seed=a.seed, ddpm_steps=a.ddpm_steps, vae_steps=a.vae_steps, sd_steps=a.sd_steps)
    records = run(a.out, r, a.only, command)
    print(json.dumps(records, indent=1, default=str))


if __name__ == "__main__":
    main()
