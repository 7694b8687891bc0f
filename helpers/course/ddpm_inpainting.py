"""Inpainting with a DDPM, as notebook 03 teaches it: a U-Net widened to 7 input channels, a
noise loss weighted towards the hole, one training step, DDIM sampling conditioned on the known
pixels, and RePaint, the training-free baseline.

Read top to bottom; each line sits under the formula it implements. The functions appear, as
exact copies, in notebook 03's code cells (tag ``taught``). Conventions (``helpers/__init__.py``):
images in [-1, 1], NCHW; masks float {0, 1} with 1 = the hole to fill.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext

import torch

from helpers.course.diffusion import ddim_sample_loop, p_sample, q_sample


# ====================================================================== 1. the model sees the known pixels
def widen_conv_in(unet, in_channels: int = 7):
    """A copy of ``unet`` whose first convolution takes ``in_channels`` inputs, the last 3 being x_t.
    New channels start at zero: before training the widened model computes exactly what the old one did."""
    old, c_old = unet.conv_in, unet.conv_in.in_channels
    if in_channels <= c_old:
        raise ValueError(f"in_channels must exceed the current {c_old}, got {in_channels}")
    new_unet = copy.deepcopy(unet)
    conv = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                           bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        # W_new = [0 (x_masked, mask), W_old (x_t)]
        conv.weight.zero_()
        conv.weight[:, in_channels - c_old:] = old.weight
        if old.bias is not None:
            conv.bias.copy_(old.bias)
    new_unet.conv_in = conv
    new_unet.register_to_config(in_channels=in_channels)     # save_pretrained / from_pretrained round-trip
    return new_unet


def masked_image(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The known pixels only: the hole set to 0 (mid-grey)."""
    # x_masked = x * (1 - m)
    return x * (1 - mask)


def model_input(x_masked: torch.Tensor, mask: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """The 7-channel input of eps_theta: concat(x_masked (3), m (1), x_t (3)) along channels."""
    return torch.cat([x_masked, mask.to(x_masked.dtype), x_t], dim=1)


# ====================================================================== 2. the loss, weighted towards the hole
def loss_weights(mask: torch.Tensor, lambda_mask: float, lambda_context: float) -> torch.Tensor:
    """Per-pixel weights, shape (N, 1, H, W)."""
    # W = m lambda_mask + (1 - m) lambda_context
    return mask * lambda_mask + (1 - mask) * lambda_context


def weighted_eps_loss(eps: torch.Tensor, eps_theta: torch.Tensor, mask: torch.Tensor,
                      lambda_mask: float, lambda_context: float) -> torch.Tensor:
    """The mean over all N*C*H*W elements, computed in fp32."""
    W = loss_weights(mask.float(), lambda_mask, lambda_context)
    # L = mean(W * (eps - eps_theta)^2)
    return (W * (eps.float() - eps_theta.float()) ** 2).mean()


def inpainting_loss(model, batch: dict, generator: torch.Generator, alphas_cumprod: torch.Tensor,
                    lambda_mask: float, lambda_context: float) -> torch.Tensor:
    """The loss of one batch; every random draw comes from ``generator`` (a resumed run repeats it)."""
    # 1. x_0, the mask, the known pixels
    x0, g = batch["image"], generator
    mask = batch["mask"].to(x0.device, x0.dtype)
    x_masked = masked_image(x0, mask)
    # 2. t ~ U{0, ..., T-1},  eps ~ N(0, I),  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=g, device=g.device).to(x0.device)
    eps = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype).to(x0.device)
    x_t = q_sample(x0, t, eps, alphas_cumprod)
    # 3. eps_theta(concat(x_masked, m, x_t), t) and the weighted loss
    eps_theta = model(model_input(x_masked, mask, x_t), t).sample
    return weighted_eps_loss(eps, eps_theta, mask, lambda_mask, lambda_context)


# ====================================================================== 3. one training step
def training_step(model, batch: dict, loss_fn: Callable, optimizer, generator: torch.Generator,
                  max_grad_norm: float, autocast_dtype: torch.dtype = torch.float32, scaler=None):
    """Forward, backward, clip, step. Returns (loss, gradient norm), both still on the device."""
    device = next(model.parameters()).device
    # 1. forward under autocast: fp16 / bf16 matmuls on a GPU, fp32 elsewhere
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype != torch.float32 else nullcontext()
    with amp:
        loss = loss_fn(model, batch, generator)
    # 2. backward; with fp16 the loss is scaled first so small gradients survive, then unscaled
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    # 3. clip: g <- g min(1, max_norm / ||g||)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    # 4. AdamW step (the scaler skips it when a gradient is inf/nan)
    scaler.step(optimizer) if scaler is not None else optimizer.step()
    if scaler is not None:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach()


# ====================================================================== 4. sampling: DDIM, given the known pixels
@torch.no_grad()
def ddim_inpaint(unet, alphas_cumprod: torch.Tensor, x_masked: torch.Tensor, mask: torch.Tensor, x_T: torch.Tensor,
                 num_steps: int, eta: float = 0.0, noise_fn: Callable | None = None, solver: str = "ddim",
                 autocast_dtype: torch.dtype = torch.float32, known_from_q: bool = False) -> torch.Tensor:
    """Notebook 02's DDIM loop on eps_theta(concat(x_masked, m, x_t), t); the known pixels pasted back.
    ``known_from_q``: the network sees the known part of x_t drawn from q(x_t | x_0), as in training,
    instead of the part the sampler itself carried along (one z per image, from ``noise_fn``)."""
    device = x_T.device
    x_masked, mask = x_masked.to(device, torch.float32), mask.to(device, torch.float32)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype != torch.float32 else nullcontext()
    z = (noise_fn() if noise_fn is not None else torch.randn_like(x_T)) if known_from_q else None
    alpha_bar = alphas_cumprod.to(device)               # q_sample's levels: copied to the device once, not per step

    def eps_fn(x_t, t):
        if known_from_q:
            # x_t <- m * x_t + (1 - m) * (sqrt(alpha_bar_t) x_masked + sqrt(1 - alpha_bar_t) z): notebook 02's q_sample
            x_t = mask * x_t + (1 - mask) * q_sample(x_masked, t, z, alpha_bar)
        with amp:
            return unet(model_input(x_masked, mask, x_t), t).sample.float()

    x0 = ddim_sample_loop(eps_fn, x_T, alphas_cumprod, num_steps, eta, noise_fn, solver=solver)
    # x = m * x0 + (1 - m) * x_masked: the known pixels exactly as given, the hole from the model
    return (mask * x0.clamp(-1, 1) + (1 - mask) * x_masked).clamp(-1, 1)


# ====================================================================== 5. RePaint: no training (Lugmayr et al. 2022)
def repaint_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The order of the level indices n-1 .. 0, -1 (= x_0): down one is denoising, up one re-noising.
    At every jump_length-th index the sampler goes back up jump_length levels, jump_n_sample - 1 times."""
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError("jump_length and jump_n_sample must be >= 1")
    jumps_left = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t, order = num_steps - 1, [num_steps - 1]
    while t >= 0:
        t -= 1                                    # 1. one level down
        order.append(t)
        if jumps_left.get(t, 0) > 0:              # 2. a jump point with passes left: back up
            jumps_left[t] -= 1
            for _ in range(jump_length):
                t += 1
                order.append(t)
    return order


@torch.no_grad()
def repaint_inpaint(unet, alphas_cumprod: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, noise_fn: Callable,
                    num_steps: int, jump_length: int, jump_n_sample: int,
                    autocast_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inpaint with the unconditional 3-channel ``unet``: only ``image``'s known pixels are used;
    ``noise_fn()`` draws one N(0, I) sample of the batch's shape (seeded per image)."""
    mask = mask.to(image.device, torch.float32)
    x0_known = masked_image(image.float(), mask)
    tau = [i * (len(alphas_cumprod) // num_steps) for i in range(num_steps)]     # the levels, as DDIM's
    ab = [float(alphas_cumprod[t]) for t in tau] + [1.0]                        # index -1: x_0 itself
    t_device = torch.tensor(tau, device=image.device)
    amp = torch.autocast(image.device.type, dtype=autocast_dtype) if autocast_dtype != torch.float32 else nullcontext()
    x = noise_fn()                                                              # 1. x_T ~ N(0, I)
    order = repaint_schedule(num_steps, jump_length, jump_n_sample)
    for cur, nxt in zip(order[:-1], order[1:]):
        if nxt < cur:
            # 2. down: the hole from the model, x^unknown ~ p_theta(x_nxt | x_cur)
            with amp:
                eps = unet(x, t_device[cur]).sample.float()
            x_unknown = p_sample(x, eps, ab[cur], ab[nxt], noise_fn() if nxt >= 0 else None)
            # 3. the context from the data, x^known ~ q(x_nxt | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I);
            #    exact at x_0
            x_known = ab[nxt] ** 0.5 * x0_known + (1 - ab[nxt]) ** 0.5 * noise_fn() if nxt >= 0 else x0_known
            # x_nxt = m * x^unknown + (1 - m) * x^known
            x = mask * x_unknown + (1 - mask) * x_known
        else:
            # 4. up (resampling): x_nxt ~ q(x_nxt | x_cur) = N(sqrt(a) x_cur, (1 - a) I),
            #    a = alpha_bar_nxt / alpha_bar_cur
            a = ab[nxt] / ab[cur]
            x = a ** 0.5 * x + (1 - a) ** 0.5 * noise_fn()
    return (mask * x.clamp(-1, 1) + (1 - mask) * x0_known).clamp(-1, 1)   # 5. known pixels exact, in [-1, 1]


def count_model_calls(num_steps: int, jump_length: int, jump_n_sample: int) -> int:
    """U-Net evaluations of one RePaint run: one per step down."""
    order = repaint_schedule(num_steps, jump_length, jump_n_sample)
    return sum(1 for a, b in zip(order[:-1], order[1:]) if b < a)
