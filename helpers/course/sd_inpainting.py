"""Stable Diffusion 1.5 inpainting + LoRA, as notebook 04 teaches it: the latent-space pieces, LoRA
attached to the frozen U-Net, one training step's loss with prompt dropout, and the guided
sampling loop with classifier-free guidance.

Latent diffusion (Rombach et al. 2022) with a 9-channel U-Net::

    eps_theta( concat(z_t, m_down, z_masked), t, tau(caption) )
      z_t       noisy latent of the image                  4 channels
      m_down    the mask resized to the latent grid         1 channel   (1 = hole)
      z_masked  latent of the image with the hole blanked   4 channels

Read top to bottom; the functions appear, as exact copies, in notebook 04's code cells (tag
``taught``). Conventions (``helpers/__init__.py``): images in [-1, 1], NCHW; masks 1 = hole.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from helpers.course.diffusion import q_sample


# ============================================================== 1. the latent-space pieces
def latent_factor(vae) -> int:
    """Pixels per latent cell: 2 ** (number of VAE blocks - 1) (8 for SD, 2 for the tiny VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_sd_resolution(images: torch.Tensor, masks: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize images (bicubic) and masks (nearest: they stay in {0, 1}) to SD's working size."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images, masks
    size = (resolution, resolution)
    up = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    return up, F.interpolate(masks.float(), size=size, mode="nearest")


def from_sd_resolution(images: torch.Tensor, size: int) -> torch.Tensor:
    """SD's output back to the data resolution (antialiased bicubic), clamped to [-1, 1]."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True).clamp(-1, 1)


def blank_hole(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The masked image SD conditions on: x * (m < 0.5), the hole set to 0 (mid-grey) before the VAE."""
    return images * (masks < 0.5)


def mask_to_latent(masks: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """m_down: the mask on the latent grid (nearest, as the pipeline does)."""
    return F.interpolate(masks.float(), size=latent_hw, mode="nearest")


def encode_latents(vae, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = s * (mu + sigma * eps): a sample of the VAE posterior q(z | x), times the scaling factor s.
    ``eps`` None gives the posterior mean."""
    dist = vae.encode(x.to(vae.dtype)).latent_dist
    z = dist.mean if eps is None else dist.mean + dist.std * eps.to(dist.mean)
    return z.float() * vae.config.scaling_factor


def decode_latents(vae, z: torch.Tensor, batched: bool = True) -> torch.Tensor:
    """x = D(z / s) in [-1, 1]; ``batched=False`` decodes one image at a time (less peak memory)."""
    chunks = [z] if batched else list(z.split(1))
    out = [vae.decode((c / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0].float() for c in chunks]
    return torch.cat(out).clamp(-1, 1)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], batch_size: int = 64,
                   device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """tau(c): the text encoder's last hidden states (77 x width) for each *distinct* prompt, once.

    Tokenized exactly as the pipeline does (padded to 77 tokens, truncated). Stored on ``device``
    (the CPU for a large caption set) in ``dtype``."""
    unique = list(dict.fromkeys(prompts))
    out = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        ids = tokenizer(chunk, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(text_encoder.device)
        hidden = text_encoder(ids)[0]
        for p, h in zip(chunk, hidden):
            out[p] = h.to(device=device, dtype=dtype or h.dtype)
    return out


# ============================================================== LoRA
# ============================================================== 2. LoRA on the frozen U-Net (Hu et al. 2021)
def add_lora(pipe, r: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> None:
    """Freeze VAE, text encoder and U-Net, then attach LoRA adapters (peft) to the U-Net's attention
    projections: the adapters are the only parameters that train."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    # 1. everything frozen
    for m in (pipe.vae, pipe.text_encoder, pipe.unet):
        m.requires_grad_(False)
    # 2. W' = W + (alpha / r) B A,  A: r x k Gaussian,  B: d x r zeros, so at step 0 W' = W exactly;
    #    an adapter attached before (this cell run again) is replaced by a fresh one
    if "default" in (getattr(pipe.unet, "peft_config", None) or {}):
        pipe.unet.delete_adapters("default")
    pipe.unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                                     target_modules=list(target_modules)))
    for name, p in pipe.unet.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            p.requires_grad_(True)
    # 3. the adapters in fp32 whatever the frozen weights' dtype (a grad scaler cannot unscale fp16 gradients)
    cast_training_params(pipe.unet, dtype=torch.float32)


# ============================================================== 3. one training step's loss
def prompt_dropout_mask(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training (Ho & Salimans 2022): True where the caption becomes "" (prob. p)."""
    return torch.rand(n, generator=generator, device=generator.device) < p


def lora_inpaint_loss(unet, batch: dict, generator: torch.Generator, vae, alphas_cumprod: torch.Tensor,
                      text_embeds: dict, captions: dict, prompt_dropout: float, resolution: int) -> torch.Tensor:
    """The loss of one batch (epsilon prediction); every random draw comes from ``generator``."""
    g, device = generator, next(unet.parameters()).device
    images, masks, n = batch["image"].to(device), batch["mask"].to(device), len(batch["name"])
    # 1. tau(c) per image; the caption replaced by "" with probability prompt_dropout (kept on the device)
    cond = torch.stack([text_embeds[captions.get(name, "")] for name in batch["name"]]).to(device)
    drop = prompt_dropout_mask(n, prompt_dropout, g).to(device)
    cond = torch.where(drop[:, None, None], text_embeds[""].to(device), cond)
    # 2. z_0 and z_masked: the image and the image with its hole blanked, through the frozen VAE
    with torch.no_grad():
        x, m = to_sd_resolution(images, masks, resolution)
        f, c = latent_factor(vae), vae.config.latent_channels
        eps_vae = torch.randn((2 * n, c, x.shape[-2] // f, x.shape[-1] // f), generator=g, device=g.device)
        z0, z_masked = encode_latents(vae, torch.cat([x, blank_hole(x, m)]), eps_vae.to(device)).chunk(2)
        m_down = mask_to_latent(m, tuple(z0.shape[-2:]))
    # 3. t ~ U{0..T-1}, eps ~ N(0, I),  z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps
    t = torch.randint(0, len(alphas_cumprod), (n,), generator=g, device=g.device).to(device)
    eps = torch.randn(z0.shape, generator=g, device=g.device).to(device)
    ab = alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
    z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
    # 4. eps_theta(concat(z_t, m_down, z_masked), t, tau(c)) in the frozen weights' dtype;  L = ||eps - eps_theta||^2
    dtype = next((p for p in unet.parameters() if not p.requires_grad), next(unet.parameters())).dtype
    eps_theta = unet(torch.cat([z_t, m_down, z_masked], 1).to(dtype), t, encoder_hidden_states=cond.to(dtype),
                     return_dict=False)[0]
    return F.mse_loss(eps_theta.float(), eps)


# ============================================================== 4. sampling with classifier-free guidance
@torch.no_grad()
def denoise(unet, scheduler, z_T: torch.Tensor, m_down: torch.Tensor, z_masked: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor, num_inference_steps: int, guidance_scale: float, known_noise=None) -> torch.Tensor:
    """The guided loop in latent space, z_T -> z_0: each step runs the empty prompt and the caption in
    one batch of concat(z_t, m_down, z_masked) and mixes the two noise predictions. ``known_noise``
    (zeta): outside the hole z_t is first set to z_masked noised to level t, as training saw it."""
    do_cfg, dtype = guidance_scale > 1.0, unet.dtype
    # 1. the sampler's levels: Python ints for its step, one copy on the device for the network
    scheduler.set_timesteps(num_inference_steps)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)                       # multistep solvers: no search on the device
    timesteps, t_device = [int(t) for t in scheduler.timesteps], scheduler.timesteps.to(z_T.device)
    emb = (torch.cat([uncond, cond]) if do_cfg else cond).to(dtype)
    context = torch.cat([m_down, z_masked], 1).repeat(2 if do_cfg else 1, 1, 1, 1)
    z = z_T.float() * scheduler.init_noise_sigma
    for i, t in enumerate(timesteps):
        if known_noise is not None:
            # z_t <- m * z_t + (1 - m) * (sqrt(alpha_bar_t) z_masked + sqrt(1 - alpha_bar_t) zeta), q_sample of 02
            z = m_down * z + (1 - m_down) * q_sample(z_masked, t, known_noise, scheduler.alphas_cumprod)
        # 2. eps_theta(concat(z_t, m_down, z_masked), t, tau) for "" and the caption at once
        z_in = scheduler.scale_model_input(torch.cat([z] * 2) if do_cfg else z, t)
        eps = unet(torch.cat([z_in, context], 1).to(dtype), t_device[i], encoder_hidden_states=emb,
                   return_dict=False)[0].float()
        if do_cfg:
            # 3. eps = eps("") + s (eps(c) - eps("")): s = guidance_scale, s = 1 is no guidance
            #    (Ho & Salimans 2022 write (1 + w) eps(c) - w eps(""): their w is s - 1)
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        # 4. one DDIM step (notebook 02) with SD's schedule, as diffusers implements it
        z = scheduler.step(eps, t, z, return_dict=False)[0]
    return z


@torch.no_grad()
def inpaint(unet, vae, scheduler, images: torch.Tensor, masks: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            noise, resolution: int, num_inference_steps: int, guidance_scale: float,
            batched_vae_decode: bool = True, composite: bool = True, known_from_q: bool = False) -> torch.Tensor:
    """Images (N,3,h,w) and masks at the data resolution -> completions at the data resolution.
    ``noise(shape_chw, device)`` draws per-image Gaussian noise: z_T first, then the VAE's sample
    (``known_from_q``: then zeta, the noise of the known latents, see ``denoise``)."""
    device, size = unet.device, images.shape[-1]
    images, masks = images.to(device), masks.to(device)
    # 1. SD's working size; the latent grid is the VAE's factor smaller
    x, m = to_sd_resolution(images, masks, resolution)
    f, c = latent_factor(vae), vae.config.latent_channels
    shape = (c, x.shape[-2] // f, x.shape[-1] // f)
    # 2. z_T ~ N(0, I), then z_masked: the hole blanked, through the VAE; the mask on the latent grid
    z_T = noise(shape, device)
    z_masked = encode_latents(vae, blank_hole(x, m), noise(shape, device))
    m_down = mask_to_latent(m, shape[-2:])
    # 3. guided denoising in latent space, then the decoder
    z0 = denoise(unet, scheduler, z_T, m_down, z_masked, cond.to(device), uncond.to(device).expand_as(cond),
                 num_inference_steps, guidance_scale, noise(shape, device) if known_from_q else None)
    pred = from_sd_resolution(decode_latents(vae, z0, batched_vae_decode), size)
    # 4. x_hat = m * pred + (1 - m) * x: the known pixels exact (also removes the VAE's colour shift)
    return masks * pred + (1 - masks) * images if composite else pred


def widen_to_inpainting(unet, extra_channels: int = 5):
    """A copy of a text-to-image U-Net (4 input channels, z_t) whose first convolution takes
    ``extra_channels`` more inputs AFTER z_t, in SD inpainting's order concat(z_t (4), m_down (1),
    z_masked (4)). The new weights start at zero (as Runway initialised SD inpainting), so before
    training the widened U-Net computes exactly what the text-to-image one did: notebook 03's trick."""
    old, c_old = unet.conv_in, unet.conv_in.in_channels
    new_unet = copy.deepcopy(unet)
    conv = torch.nn.Conv2d(c_old + extra_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                           bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        # W_new = [W_old (z_t), 0 (m_down, z_masked)]
        conv.weight.zero_()
        conv.weight[:, :c_old] = old.weight
        if old.bias is not None:
            conv.bias.copy_(old.bias)
    new_unet.conv_in = conv
    new_unet.register_to_config(in_channels=c_old + extra_channels)
    return new_unet
