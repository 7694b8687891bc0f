"""The benchmark's five workloads (see :mod:`helpers.tools.bench`): the 7-channel DDPM (training step,
sampling), SD 1.5 inpainting (LoRA training step, inference) and the evaluation's metrics, each measured
with :mod:`helpers.tools.bench_harness`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from helpers.study.config import Config
from helpers.study.files import paths
from helpers.tools.bench_harness import (
    DTYPES,
    Context,
    batch_sweep,
    count_flops,
    free_memory,
    measure,
    random_images,
    random_masks,
    seeded_generator,
    untimed,
    variant_list,
)


# ---------------------------------------------------------------- workloads 1-2: the 7-channel DDPM
def _folder_config(pretrained_id, *names: str) -> dict | None:
    """The first of ``names`` (config files) found in a local model folder, without private keys."""
    if not pretrained_id or not Path(os.path.expanduser(str(pretrained_id))).is_dir():
        return None
    for name in names:
        f = Path(os.path.expanduser(str(pretrained_id))) / name
        if f.is_file():
            return {k: v for k, v in json.loads(f.read_text()).items() if not k.startswith("_")}
    return None


def _accepted(cls, config: dict) -> dict:
    """The keys of ``config`` that ``cls.__init__`` takes (hub files carry a few informational ones)."""
    import inspect
    names = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in config.items() if k in names}


def architecture_sources(cfg: Config) -> dict:
    """Where the full-size architectures come from: a local folder's configs, or the published ones in code."""
    ddpm_dir = _folder_config(cfg.ddpm.pretrained_id, "config.json", "unet/config.json")
    sd_dir = _folder_config(cfg.sd.pretrained_id, "unet/config.json")
    return {"ddpm": str(cfg.ddpm.pretrained_id) if ddpm_dir else "published config (helpers.study.models.ddpm)",
            "sd": str(cfg.sd.pretrained_id) if sd_dir else "published configs (helpers.study.models.sd)"}


def _ddpm_config(ctx: Context) -> tuple[dict, int]:
    from diffusers import UNet2DModel

    from helpers.study.models.ddpm import published_unet_config
    if ctx.tiny:
        size = ctx.cfg.data.image_size
        return {**published_unet_config(), **ctx.cfg.ddpm.tiny_config, "sample_size": size}, size
    local = _folder_config(ctx.cfg.ddpm.pretrained_id, "config.json", "unet/config.json")
    config = _accepted(UNet2DModel, local) if local else published_unet_config()
    return config, int(config.get("sample_size") or 256)


def _ddpm_model(ctx: Context, perf: Config, train: bool, device: torch.device):
    from helpers.study.evaluation.perf import optimize_model
    from helpers.study.models.ddpm import build_inpainting_unet
    config, _ = _ddpm_config(ctx)
    torch.manual_seed(0)
    with torch.device(device):                     # weights initialised where they live (meta: none at all)
        model = build_inpainting_unet(config, 7).train(train)
    return optimize_model(model, perf, device)


def bench_ddpm_train(ctx: Context) -> None:
    """1. one AdamW step of the 7-channel U-Net with the weighted loss, at the study's batch size."""
    from functools import partial

    from diffusers import DDPMScheduler

    from helpers.course.ddpm_inpainting import inpainting_loss, training_step
    from helpers.study.models.ddpm import published_scheduler_config
    d, (_, size) = ctx.cfg.ddpm, _ddpm_config(ctx)
    alphas = DDPMScheduler(**published_scheduler_config()).alphas_cumprod

    def make_step(perf: Config, dtype: str, bs: int, dev: torch.device | None = None):
        dev = dev or ctx.device
        model = _ddpm_model(ctx, perf, True, dev)
        cuda = dev.type == "cuda"
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=d.lr,
                                **({"fused": True} if cuda and perf.get("fused_adamw") else {}))
        scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" and cuda else None
        batch = {"image": random_images(bs, size).to(dev), "mask": random_masks(bs, size).to(dev)}
        g = seeded_generator(dev)
        loss_fn = partial(inpainting_loss, alphas_cumprod=alphas.to(dev), lambda_mask=d.lambda_mask,
                          lambda_context=d.lambda_context)
        return lambda: training_step(model, batch, loss_fn, opt, g, d.max_grad_norm, DTYPES[dtype], scaler)

    flops = {}
    def flops_of(bs: int) -> float:
        if bs not in flops:
            flops[bs] = count_flops(make_step(Config({**ctx.cfg.perf, "sdpa": False, "torch_compile": False}),
                                              "fp32", bs, dev=ctx.count_device)) / bs
        return flops[bs]

    for name, perf, dtype in variant_list(ctx, "train", d.mixed_precision):
        measure(ctx, "ddpm_train", name, d.batch_size, make_step(perf, dtype, d.batch_size), flops_of(d.batch_size),
                note=f"{size}px, {dtype}")
        free_memory(ctx.device)


def bench_ddpm_sample(ctx: Context) -> None:
    """2. DDIM inpainting with the 7-channel U-Net (cfg.ddpm.num_inference_steps steps); DPM-Solver++ with
    cfg.bench.dpm_steps steps as the fewer-steps option; a batch sweep of the preset variant."""
    from diffusers import DDPMScheduler

    from helpers.course.ddpm_inpainting import ddim_inpaint, masked_image
    from helpers.study.models.ddpm import published_scheduler_config
    from helpers.study.runtime import SeededNoise
    d, (_, size) = ctx.cfg.ddpm, _ddpm_config(ctx)
    alphas = DDPMScheduler(**published_scheduler_config()).alphas_cumprod
    bs0 = ctx.cfg.bench.batch_sizes[-1] if ctx.tiny else min(8, max(ctx.cfg.bench.batch_sizes))

    def make_step(perf: Config, dtype: str, bs: int, sampler: str = "ddim", steps: int | None = None,
                  dev: torch.device | None = None):
        dev = dev or ctx.device
        model = _ddpm_model(ctx, perf, False, dev)
        x, m = random_images(bs, size), random_masks(bs, size)
        noise = SeededNoise(range(bs))
        return lambda: ddim_inpaint(model, alphas, masked_image(x, m).to(dev), m.to(dev), noise(x.shape[1:], dev),
                                    steps or d.num_inference_steps, 0.0, None, sampler, DTYPES[dtype])

    flops = {}
    def flops_of(bs: int, steps: int | None = None) -> float:
        key = (bs, steps)
        if key not in flops:
            flops[key] = count_flops(make_step(Config({**ctx.cfg.perf, "sdpa": False, "torch_compile": False}),
                                               "fp32", bs, steps=steps, dev=ctx.count_device),
                                     once_per_shape=ctx.count_once) / bs
        return flops[key]

    for name, perf, dtype in variant_list(ctx, "sample", d.mixed_precision):
        measure(ctx, "ddpm_sample", name, bs0, make_step(perf, dtype, bs0), flops_of(bs0),
                note=f"{size}px, DDIM {d.num_inference_steps} steps, {dtype}")
        free_memory(ctx.device)
    pdt = d.mixed_precision if ctx.device.type == "cuda" else "fp32"
    k = ctx.cfg.bench.dpm_steps
    if ctx.wants("DPM-Solver++"):
        measure(ctx, "ddpm_sample", f"preset + DPM-Solver++ {k} steps", bs0,
                make_step(Config(ctx.cfg.perf), pdt, bs0, "dpm", k), flops_of(bs0, k), note=f"{size}px, {pdt}")
        free_memory(ctx.device)
    batch_sweep(ctx, "ddpm_sample", "preset", ctx.cfg.bench.batch_sizes,
           lambda bs: make_step(Config(ctx.cfg.perf), pdt, bs), flops_of)


# ---------------------------------------------------------------- workloads 3-4: SD 1.5 inpainting
def _sd_configs(cfg: Config) -> dict:
    """SD 1.5 inpainting's component configs: those of a local pipeline folder, else the published ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from helpers.study.models.sd_pipeline import published_configs
    configs = published_configs()
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", None)):
        local = _folder_config(cfg.sd.pretrained_id, f"{name}/config.json")
        if local:
            configs[name] = _accepted(cls, local) if cls else local
    return configs


def _sd_parts(ctx: Context, perf: Config, dtype: str, device: torch.device):
    """U-Net, VAE (and scheduler) at full size (random weights) or tiny; the text embeddings are
    cached in the real pipeline, so the benchmark feeds random embeddings of the right shape."""
    from types import SimpleNamespace

    from helpers.study.evaluation.perf import set_attention
    from helpers.study.models.sd_pipeline import build_components, tiny_configs
    configs = tiny_configs(1000, 0, 1, 1) if ctx.tiny else _sd_configs(ctx.cfg)
    parts = build_components(configs, device, DTYPES[dtype])
    set_attention(parts["vae"], perf.get("sdpa", True))
    res = ctx.cfg.sd.resolution if ctx.tiny else 512
    dim = configs["unet"]["cross_attention_dim"]
    return SimpleNamespace(**parts), res, dim


def bench_sd_lora_train(ctx: Context) -> None:
    """3. one LoRA training step at SD resolution: VAE encode (image + masked image), 9-channel U-Net
    with LoRA on to_q/to_k/to_v/to_out.0 (fp32 LoRA weights over frozen fp16/bf16 ones), backward, AdamW."""
    from functools import partial

    from diffusers import DDPMScheduler

    from helpers.course.ddpm_inpainting import training_step
    from helpers.course.sd_inpainting import add_lora, lora_inpaint_loss
    from helpers.study.evaluation.perf import optimize_model
    s = ctx.cfg.sd

    def make_step(perf: Config, dtype: str, bs: int, dev: torch.device | None = None):
        dev = dev or ctx.device
        pipe, res, dim = _sd_parts(ctx, perf, dtype, dev)
        add_lora(pipe, s.lora.r, s.lora.alpha, s.lora.dropout, s.lora.target_modules)
        unet = optimize_model(pipe.unet.train(), Config({**perf, "torch_compile": False}), dev)
        g = torch.Generator().manual_seed(0)
        embeds = {"": torch.randn(77, dim, generator=g), "a photo": torch.randn(77, dim, generator=g)}
        loss = partial(lora_inpaint_loss, vae=pipe.vae,
                       alphas_cumprod=DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.float(),
                       text_embeds={k: v.to(dev) for k, v in embeds.items()}, captions={},
                       prompt_dropout=s.prompt_dropout, resolution=res)
        params = [p for p in unet.parameters() if p.requires_grad]
        cuda = dev.type == "cuda"
        opt = torch.optim.AdamW(params, lr=s.lr, **({"fused": True} if cuda and perf.get("fused_adamw") else {}))
        scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" and cuda else None
        batch = {"image": random_images(bs, res).to(dev), "mask": random_masks(bs, res).to(dev),
                 "name": [f"x{i}" for i in range(bs)]}
        gd = seeded_generator(dev)
        return lambda: training_step(unet, batch, loss, opt, gd, s.max_grad_norm, torch.float32, scaler)

    flops = {}
    def flops_of(bs: int) -> float:
        if bs not in flops:
            flops[bs] = count_flops(make_step(Config({**ctx.cfg.perf, "sdpa": False}), "fp32", bs,
                                              dev=ctx.count_device)) / bs
        return flops[bs]

    for name, perf, dtype in variant_list(ctx, "train", s.mixed_precision):
        if "compile" in name:
            continue  # peft's LoRA layers + checkpoint names: not compiled for training here
        measure(ctx, "sd_lora_train", name, s.batch_size, make_step(perf, dtype, s.batch_size), flops_of(s.batch_size),
                note=f"{'tiny' if ctx.tiny else '512px'}, frozen weights {dtype}, LoRA fp32")
        free_memory(ctx.device)
    pdt = s.mixed_precision if ctx.device.type == "cuda" else "fp32"
    batch_sweep(ctx, "sd_lora_train", "preset", ctx.cfg.bench.batch_sizes,
           lambda bs: make_step(Config(ctx.cfg.perf), pdt, bs), flops_of)


def bench_sd_infer(ctx: Context) -> None:
    """4. inpainting inference: VAE encode of the masked image, ``num_inference_steps`` guided steps
    (conditional and unconditional passes in one U-Net call: 2 evaluations per step), VAE decode."""
    from helpers.course.sd_inpainting import inpaint
    from helpers.study.evaluation.perf import make_sampler, optimize_model
    from helpers.study.runtime import SeededNoise
    s = ctx.cfg.sd

    def make_step(perf: Config, dtype: str, bs: int, sampler: str = "ddim", steps: int | None = None,
                  dev: torch.device | None = None):
        dev = dev or ctx.device
        pipe, res, dim = _sd_parts(ctx, perf, dtype, dev)
        unet = optimize_model(pipe.unet, perf, dev)
        sched = make_sampler(sampler, pipe.scheduler.config)
        g = torch.Generator().manual_seed(0)
        cond, uncond = torch.randn(bs, 77, dim, generator=g), torch.randn(1, 77, dim, generator=g)
        x, m = random_images(bs, res), random_masks(bs, res)
        return lambda: inpaint(unet, pipe.vae, sched, x, m, cond, uncond,
                               SeededNoise(range(bs)), res,
                               steps or s.num_inference_steps, s.guidance_scale, perf.get("batched_vae_decode", True))

    flops = {}
    def flops_of(bs: int, steps: int | None = None) -> float:
        if (bs, steps) not in flops:
            flops[(bs, steps)] = count_flops(make_step(Config({**ctx.cfg.perf, "sdpa": False, "torch_compile": False}),
                                                       "fp32", bs, steps=steps, dev=ctx.count_device),
                                             once_per_shape=ctx.count_once) / bs
        return flops[(bs, steps)]

    infer_dtype = "fp16" if s.mixed_precision == "fp16" else "bf16"
    for name, perf, dtype in variant_list(ctx, "sd_infer", infer_dtype):
        measure(ctx, "sd_infer", name, 1, make_step(perf, dtype, 1), flops_of(1),
                note=f"{s.num_inference_steps} steps, guidance {s.guidance_scale}, {dtype}")
        free_memory(ctx.device)
    pdt = infer_dtype if ctx.device.type == "cuda" else "fp32"
    k = ctx.cfg.bench.dpm_steps
    if ctx.wants("DPM-Solver++"):
        measure(ctx, "sd_infer", f"preset + DPM-Solver++ {k} steps", 1,
                make_step(Config(ctx.cfg.perf), pdt, 1, "dpm", k), flops_of(1, k), note=pdt)
        free_memory(ctx.device)
    batch_sweep(ctx, "sd_infer", "preset", ctx.cfg.bench.batch_sizes,
           lambda bs: make_step(Config(ctx.cfg.perf), pdt, bs), flops_of)


# ---------------------------------------------------------------- workload 5: evaluation
def bench_eval(ctx: Context) -> None:
    """5. metrics throughput: FID Inception features, LPIPS (when its weights are present),
    PSNR/SSIM (whole + hole), and all of them end to end from PNG files."""
    import tempfile
    from pathlib import Path

    from helpers.course.metrics import pixel_scores, psnr, ssim
    from helpers.study.evaluation.metrics import load_inception, load_lpips
    from helpers.study.files import load_pngs, save_png
    e = ctx.cfg.eval
    size = ctx.cfg.data.image_size
    bs = e.batch_size
    x, y = random_images(bs, size, 1).to(ctx.device), random_images(bs, size, 2).to(ctx.device)
    m = random_masks(bs, size).to(ctx.device)
    P = paths(ctx.cfg)
    inception, status = load_inception([P.cache], ctx.device)
    lp, lp_status = load_lpips(e.lpips_net, [P.cache], ctx.device)

    def psnr_ssim_separately():
        return (psnr(x, y), ssim(x, y), psnr(x, y, m), ssim(x, y, m))

    four = measure(ctx, "eval", "psnr+ssim (whole+hole), 4 calls", bs, psnr_ssim_separately, None, note=f"{size}px")
    one = measure(ctx, "eval", "psnr+ssim (whole+hole), pixel_scores", bs, lambda: pixel_scores(x, y, m), None)
    one.note = f"{size}px, one SSIM map: {one.images_per_s / four.images_per_s:.2f}x the 4 calls"
    if inception is not None:
        measure(ctx, "eval", "inception features", bs, lambda: inception(x), count_flops(lambda: inception(x)) / bs,
                note=status.message() if hasattr(status, "message") else "")
    else:
        untimed(ctx, "eval", "inception features", bs, "unavailable: " + status.message())
    if lp is not None:
        measure(ctx, "eval", "lpips", bs, lambda: lp(x, y), count_flops(lambda: lp(x, y)) / bs)
    else:
        untimed(ctx, "eval", "lpips", bs, "unavailable (no AlexNet weights)")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(bs):
            save_png(x[i].cpu(), Path(tmp) / f"p{i}.png")
            save_png(y[i].cpu(), Path(tmp) / f"t{i}.png")

        files = [Path(tmp) / f"{k}{i}.png" for k in "pt" for i in range(bs)]
        # decoding alone: one thread against the pool the evaluation uses (pairs of files per image)
        one = measure(ctx, "eval", "PNG decode, 1 thread", bs, lambda: load_pngs(files, workers=1), None,
                      note="prediction + target per image")
        n = os.cpu_count() or 1
        pool = measure(ctx, "eval", f"PNG decode, {n} threads", bs, lambda: load_pngs(files, workers=n), None)
        pool.note = f"{pool.images_per_s / one.images_per_s:.2f}x one thread"

        def end_to_end():
            both = load_pngs(files).to(ctx.device)
            a, b, mm = both[:bs], both[bs:], m
            out = [pixel_scores(a, b, mm)]
            if inception is not None:
                out.append(inception(a))
            if lp is not None:
                out.append(lp(a, b))
            return out
        measure(ctx, "eval", "end to end from PNG", bs, end_to_end, None,
                note="decode + PSNR/SSIM" + (" + Inception" if inception else "") + (" + LPIPS" if lp else ""))


def count_eval_flops(ctx: Context) -> None:
    """FLOPs per image of the evaluation networks, counted on the CPU (the TorchScript Inception
    cannot be moved to the meta device); their cost does not depend on the device."""
    from helpers.study.evaluation.metrics import load_inception, load_lpips
    P, size = paths(ctx.cfg), ctx.cfg.data.image_size
    x, y = random_images(1, size, 1), random_images(1, size, 2)
    inception, status = load_inception([P.cache], torch.device("cpu"))
    if inception is None:
        untimed(ctx, "eval", "inception features", 1, "unavailable: " + status.message())
    else:
        untimed(ctx, "eval", "inception features", 1, f"{size}px input, resized to 299",
                count_flops(lambda: inception(x)))
    lp, _ = load_lpips(ctx.cfg.eval.lpips_net, [P.cache], torch.device("cpu"))
    untimed(ctx, "eval", "lpips", 1, "" if lp else "unavailable (no AlexNet weights)",
            count_flops(lambda: lp(x, y)) if lp else None)


WORKLOADS = {"ddpm_train": bench_ddpm_train, "ddpm_sample": bench_ddpm_sample,
             "sd_lora_train": bench_sd_lora_train, "sd_infer": bench_sd_infer, "eval": bench_eval}
