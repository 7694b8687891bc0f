"""Benchmark of the heavy steps, against the device's measured arithmetic peak.

    python -m helpers.tools.bench --preset full          # on a GPU: real architectures, random weights
    python -m helpers.tools.bench --preset smoke         # on a CPU: tiny configs (the table says so); full and lite
                                                   # on a CPU are refused (refuse_gpu_preset_on_cpu)
    python -m helpers.tools.bench --preset full --full-size --set ...   # on a CPU: the real sizes, very slowly
                                                   # (a smoke of the real-size benchmark, e.g. on the
                                                   # stand-ins of tests.fixtures.standins: tests/test_fullsize.py)

The architectures are the published ones (helpers.study.models.ddpm.published_unet_config,
helpers.study.models.sd.published_configs),
or, where ``ddpm.pretrained_id`` / ``sd.pretrained_id`` is a local folder (a downloaded checkpoint or a
stand-in), the configs that folder holds; the weights are always random (timing and memory do not depend
on them).

Workloads (each at one or more batch sizes, each in several variants of the ``perf`` switches):

1. ``ddpm_train``   7-channel DDPM U-Net training step (256x256, config of google/ddpm-celebahq-256)
2. ``ddpm_sample``  DDIM inpainting sampling with that U-Net (cfg.ddpm.num_inference_steps steps)
3. ``sd_lora_train`` SD 1.5 inpainting LoRA training step at 512x512 (VAE encode + 9-ch U-Net + LoRA)
4. ``sd_infer``     SD 1.5 inpainting inference, cfg.sd.num_inference_steps steps with guidance
5. ``eval``         evaluation features: FID Inception, LPIPS (when available), PSNR/SSIM

For every row: images/s, seconds per batch, peak memory, FLOPs per image (counted once per batch
size with ``torch.utils.flop_counter`` on the plain variant built on the meta device: shapes only,
so counting costs no GPU time or memory; attention counted as matmuls; in a sampling loop each network
call traced once per shape and counted again per call, :class:`CountOncePerShape`), achieved
TFLOP/s and its ratio to the peak matmul rate measured in the same run, and the speed-up of
the variant over the plain one (ratios from one run, never across runs). Each row reaches the JSON as soon
as it is measured (:class:`RowWriter`), so a run cut short keeps what it finished.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from helpers.study.config import Config, add_set_argument, load_config, parse_overrides
from helpers.study.files import paths, save_json
from helpers.study.runtime import get_device, peak_memory_bytes, reset_peak_memory

# the switches the variants toggle; "plain" has them all off
SWITCHES = ("sdpa", "channels_last", "torch_compile", "fused_adamw", "cuda_graphs", "batched_vae_decode", "fused_qkv")


# the peak a --flops-only estimate is stated against, per preset (TFLOP/s, what it is)
REFERENCE_PEAK = {"lite": (82.0, "an assumed fp16 tensor peak of a 16 GB consumer GPU "
                                 "(pass your card's with --peak-tflops)")}


DEFAULT_PEAK = (800.0, "about the bf16 dense peak of an H100")


# FLOPs are counted on the meta device (shapes only): no time, no memory, the same counts as real tensors
# (tested), so counting a batch of 32 never runs out of memory where the timed bf16 run would fit
META = torch.device("meta")


@dataclass
class Row:
    workload: str
    variant: str
    batch_size: int
    images_per_s: float
    seconds_per_batch: float
    peak_memory_bytes: int | None
    flops_per_image: float | None
    achieved_tflops: float | None
    fraction_of_peak: float | None
    speedup_vs_plain: float | None = None
    note: str = ""


@dataclass
class Context:
    cfg: Config
    device: torch.device
    tiny: bool
    warmup: int
    iters: int
    peak_tflops: float
    rows: list = field(default_factory=list)
    flops_only: bool = False      # count FLOPs (on the meta device), time nothing
    variants: tuple = ()          # keep only variants whose name contains one of these ("plain" always kept)
    sweep: bool = True            # the batch-size sweeps of the preset variant
    count_device: torch.device = META   # where FLOPs are counted (the tests compare it with real tensors)
    count_once: bool = True       # sampling loops: each network call traced once per shape, then multiplied
    on_row: Callable[[Row], None] | None = None   # called with every row as soon as it exists (run(): saves it)

    def wants(self, variant: str) -> bool:
        return variant == "plain" or not self.variants or any(k in variant for k in self.variants)


# ---------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall seconds of ``fn()`` over ``iters`` calls after ``warmup`` calls (CUDA synced)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)




def count_flops(fn: Callable[[], object], once_per_shape: bool = False, stats: dict | None = None) -> int:
    """FLOPs of one call, counted by torch.utils.flop_counter (matmuls, convolutions, attention).

    ``once_per_shape``: a sampling loop calls the same networks again and again at the same shapes (50 U-Net
    calls for 50 steps): each network call (U-Net forward, VAE encode, VAE decode) is traced once per module and
    input shapes, and its later calls are counted by adding that count again (:class:`CountOncePerShape`).
    The loop itself still runs (the schedulers' arithmetic, which the counter does not count), so the number of
    calls is the loop's own. ``stats`` receives ``traced`` and ``repeated`` (network calls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        if not once_per_shape:
            fn()
            return int(counter.get_total_flops())
        with CountOncePerShape(counter) as once:
            fn()
    if stats is not None:
        stats.update(traced=once.traced, repeated=once.repeated)
    return int(counter.get_total_flops()) + once.extra_flops


def _signature(x) -> object:
    """What a network call's FLOPs depend on: tensor shapes and dtypes, and the other arguments' values."""
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.dtype, x.device.type)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, *(_signature(v) for v in x))
    if isinstance(x, dict):
        return ("dict", *((k, _signature(v)) for k, v in sorted(x.items())))
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return (type(x).__name__, id(x))          # anything else: the same object only


class CountOncePerShape:
    """Inside a ``FlopCounterMode``: the first call of a network (U-Net forward, VAE encode/decode) per module and
    input shapes runs and is counted; a later call with the same shapes returns the first call's output and
    adds its FLOPs again (``extra_flops``) without running the network. Only for counting on the ``meta``
    device (outputs there are shapes without data) and without autograd (a call that builds a graph always
    runs): the loop around the networks runs as written, so every call is counted, each traced once."""

    def __init__(self, counter):
        self.counter, self.memo = counter, {}
        self.extra_flops = self.traced = self.repeated = 0
        self._saved = []

    @staticmethod
    def methods() -> list[tuple[type, str]]:
        from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
        return [(UNet2DModel, "forward"), (UNet2DConditionModel, "forward"),
                (AutoencoderKL, "encode"), (AutoencoderKL, "decode")]

    def _wrap(self, name: str, original):
        def call(module, *args, **kwargs):
            if torch.is_grad_enabled():
                return original(module, *args, **kwargs)
            key = (id(module), name, _signature(args), _signature(kwargs))
            if key in self.memo:
                out, flops = self.memo[key]
                self.extra_flops += flops
                self.repeated += 1
                return out
            before = self.counter.get_total_flops()
            out = original(module, *args, **kwargs)
            self.memo[key] = (out, self.counter.get_total_flops() - before)
            self.traced += 1
            return out
        return call

    def __enter__(self):
        for cls, name in self.methods():
            original = cls.__dict__[name]
            self._saved.append((cls, name, original))
            setattr(cls, name, self._wrap(name, original))
        return self

    def __exit__(self, *exc):
        for cls, name, original in reversed(self._saved):
            setattr(cls, name, original)
        self._saved.clear()


def peak_matmul_tflops(device: torch.device, n: int | None = None, iters: int = 10) -> tuple[float, str]:
    """The device's dense matmul rate measured now: bf16 n x n x n on a GPU (n = 8192), fp32 on the
    CPU (n = 1024). Returns (TFLOP/s, description)."""
    if device.type == "cuda":
        n, dtype = n or 8192, torch.bfloat16
    else:
        n, dtype = n or 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_call(lambda: a @ b, device, warmup=3, iters=iters)
    return 2 * n**3 / seconds / 1e12, f"{str(dtype).replace('torch.', '')} {n}x{n}x{n} matmul"


def untimed(ctx: Context, workload: str, variant: str, batch_size: int, note: str,
            flops_per_image: float | None = None) -> Row:
    """Append and return a row without a timing (FLOPs only, out of memory, or unavailable): NaN speed."""
    row = Row(workload, variant, batch_size, math.nan, math.nan, None, flops_per_image, None, None, note=note)
    return _add_row(ctx, row)


def measure(ctx: Context, workload: str, variant: str, batch_size: int, step: Callable[[], object],
            flops_per_image: float | None, note: str = "") -> Row:
    """Time ``step`` (one batch), record memory and FLOP rate, append and return the row."""
    if ctx.flops_only:
        return untimed(ctx, workload, variant, batch_size, note, flops_per_image)
    reset_peak_memory(ctx.device)
    seconds = time_call(step, ctx.device, ctx.warmup, ctx.iters)
    ips = batch_size / seconds
    achieved = flops_per_image * ips / 1e12 if flops_per_image else None
    row = Row(workload, variant, batch_size, ips, seconds, peak_memory_bytes(ctx.device), flops_per_image,
              achieved, achieved / ctx.peak_tflops if achieved else None, note=note)
    return _add_row(ctx, row)


def _add_row(ctx: Context, row: Row) -> Row:
    """Keep the row, and hand it at once to ``ctx.on_row`` (run() saves bench.json with it)."""
    ctx.rows.append(row)
    if ctx.on_row is not None:
        ctx.on_row(row)
    return row


def variants(cfg: Config, device: torch.device) -> dict[str, Config]:
    """``plain`` (every switch off), ``preset`` (cfg.perf as configured), and ``+switch`` for each
    switch the preset leaves off but that can matter on this device."""
    base = copy.deepcopy(cfg.perf)
    plain = Config({**base, **{s: False for s in SWITCHES}})
    out = {"plain": plain, "preset": Config(base)}
    for s in SWITCHES:
        if device.type != "cuda" and s in ("torch_compile", "cuda_graphs", "fused_adamw", "channels_last"):
            continue  # CPU: these only cost compile time or do nothing
        out[f"+{s}"] = Config({**plain, s: True})
    return out


def with_speedups(rows: list[Row]) -> list[Row]:
    """Fill speedup_vs_plain: each row's images/s over the plain row of the same workload and batch."""
    plain = {(r.workload, r.batch_size): r.images_per_s for r in rows if r.variant == "plain"}
    for r in rows:
        base = plain.get((r.workload, r.batch_size))
        r.speedup_vs_plain = r.images_per_s / base if base else None
    return rows


def format_table(rows: list[Row], header: str) -> str:
    cols = ("workload", "variant", "batch", "img/s", "s/batch", "peak MiB", "GFLOP/img", "TFLOP/s", "% peak",
            "vs plain", "note")
    lines = [header, " | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        mem = f"{r.peak_memory_bytes / 2**20:.0f}" if r.peak_memory_bytes else "n/a"
        gf = f"{r.flops_per_image / 1e9:.2f}" if r.flops_per_image else "n/a"
        tf = f"{r.achieved_tflops:.3f}" if r.achieved_tflops is not None else "n/a"
        pk = f"{100 * r.fraction_of_peak:.1f}" if r.fraction_of_peak is not None else "n/a"
        sp = f"{r.speedup_vs_plain:.2f}x" if r.speedup_vs_plain else "n/a"
        lines.append(" | ".join([r.workload, r.variant, str(r.batch_size), f"{r.images_per_s:.3f}",
                                 f"{r.seconds_per_batch:.4f}", mem, gf, tf, pk, sp, r.note]))
    return "\n".join(lines)


# ---------------------------------------------------------------- variants
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def variant_list(ctx: Context, kind: str, preset_dtype: str) -> list[tuple[str, Config, str]]:
    """(name, perf switches, dtype) to time for a workload of ``kind`` (train | sample | sd_infer | eval).

    ``plain`` has every switch off in fp32; ``+X`` turns one switch on; ``preset`` is the preset's
    own ``perf`` with the workload's configured precision; ``all`` turns everything on in bf16."""
    plain = Config({**ctx.cfg.perf, **{s: False for s in SWITCHES}})
    on = lambda **kw: Config({**plain, **kw})
    out = [("plain", plain, "fp32")]
    if ctx.flops_only:
        return out
    if ctx.device.type == "cuda":
        out += [("+bf16 autocast", plain, "bf16"), ("+sdpa", on(sdpa=True), "fp32"),
                ("+channels_last", on(channels_last=True), "fp32"), ("+torch_compile", on(torch_compile=True), "fp32")]
        if kind == "train":
            out.append(("+fused_adamw", on(fused_adamw=True), "fp32"))
        else:
            out.append(("+cuda_graphs (compile)", on(torch_compile=True, cuda_graphs=True), "fp32"))
        if kind == "sd_infer":
            out.append(("+batched_vae_decode", on(batched_vae_decode=True), "fp32"))
            out.append(("+fused_qkv", on(fused_qkv=True, sdpa=True), "fp32"))
        everything = {s: True for s in SWITCHES}
        if kind == "train":
            everything["cuda_graphs"] = False   # optimizer steps mutate parameters outside the graph
        out.append(("all", on(**everything), "bf16"))
    else:
        out.append(("+sdpa", on(sdpa=True), "fp32"))
    out.append(("preset", Config(ctx.cfg.perf), preset_dtype if ctx.device.type == "cuda" else "fp32"))
    return [v for v in out if ctx.wants(v[0])]


def _free(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _masks(n: int, size: int, seed: int = 0) -> torch.Tensor:
    import numpy as np

    from helpers.study.data.masks import random_mask
    rng = np.random.default_rng(seed)
    return torch.stack([torch.from_numpy(random_mask(size, rng)[0])[None] for _ in range(n)])


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1)


def _generator(device: torch.device) -> torch.Generator:
    """A seeded generator where the step draws its noise; the meta device has none, so draw on the CPU."""
    return torch.Generator("cpu" if device.type == "meta" else device).manual_seed(0)


def _sweep(ctx: Context, workload: str, variant: str, sizes, make_step, flops_of) -> None:
    """Time the ``variant`` at every batch size in ``sizes`` until one does not fit in memory."""
    if ctx.flops_only or not ctx.sweep:
        return
    for bs in sizes:
        try:
            step = make_step(bs)
            measure(ctx, workload, f"{variant} (sweep)", bs, step, flops_of(bs))
        except Exception as e:
            if not _oom(e):
                raise
            untimed(ctx, workload, f"{variant} (sweep)", bs, "out of memory")
            break
        finally:
            _free(ctx.device)


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
        batch = {"image": _images(bs, size).to(dev), "mask": _masks(bs, size).to(dev)}
        g = _generator(dev)
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
        _free(ctx.device)


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
        x, m = _images(bs, size), _masks(bs, size)
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
        _free(ctx.device)
    pdt = d.mixed_precision if ctx.device.type == "cuda" else "fp32"
    k = ctx.cfg.bench.dpm_steps
    if ctx.wants("DPM-Solver++"):
        measure(ctx, "ddpm_sample", f"preset + DPM-Solver++ {k} steps", bs0,
                make_step(Config(ctx.cfg.perf), pdt, bs0, "dpm", k), flops_of(bs0, k), note=f"{size}px, {pdt}")
        _free(ctx.device)
    _sweep(ctx, "ddpm_sample", "preset", ctx.cfg.bench.batch_sizes,
           lambda bs: make_step(Config(ctx.cfg.perf), pdt, bs), flops_of)


# ---------------------------------------------------------------- workloads 3-4: SD 1.5 inpainting
def _sd_configs(cfg: Config) -> dict:
    """SD 1.5 inpainting's component configs: those of a local pipeline folder, else the published ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from helpers.study.models.sd import published_configs
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
    from helpers.study.models.sd import build_components, tiny_configs
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
        batch = {"image": _images(bs, res).to(dev), "mask": _masks(bs, res).to(dev),
                 "name": [f"x{i}" for i in range(bs)]}
        gd = _generator(dev)
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
        _free(ctx.device)
    pdt = s.mixed_precision if ctx.device.type == "cuda" else "fp32"
    _sweep(ctx, "sd_lora_train", "preset", ctx.cfg.bench.batch_sizes,
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
        x, m = _images(bs, res), _masks(bs, res)
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
        _free(ctx.device)
    pdt = infer_dtype if ctx.device.type == "cuda" else "fp32"
    k = ctx.cfg.bench.dpm_steps
    if ctx.wants("DPM-Solver++"):
        measure(ctx, "sd_infer", f"preset + DPM-Solver++ {k} steps", 1,
                make_step(Config(ctx.cfg.perf), pdt, 1, "dpm", k), flops_of(1, k), note=pdt)
        _free(ctx.device)
    _sweep(ctx, "sd_infer", "preset", ctx.cfg.bench.batch_sizes,
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
    x, y, m = _images(bs, size, 1).to(ctx.device), _images(bs, size, 2).to(ctx.device), _masks(bs, size).to(ctx.device)
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


def _count_eval_flops(ctx: Context) -> None:
    """FLOPs per image of the evaluation networks, counted on the CPU (the TorchScript Inception
    cannot be moved to the meta device); their cost does not depend on the device."""
    from helpers.study.evaluation.metrics import load_inception, load_lpips
    P, size = paths(ctx.cfg), ctx.cfg.data.image_size
    x, y = _images(1, size, 1), _images(1, size, 2)
    inception, status = load_inception([P.cache], torch.device("cpu"))
    if inception is None:
        untimed(ctx, "eval", "inception features", 1, "unavailable: " + status.message())
    else:
        untimed(ctx, "eval", "inception features", 1, f"{size}px input, resized to 299",
                count_flops(lambda: inception(x)))
    lp, _ = load_lpips(ctx.cfg.eval.lpips_net, [P.cache], torch.device("cpu"))
    untimed(ctx, "eval", "lpips", 1, "" if lp else "unavailable (no AlexNet weights)",
            count_flops(lambda: lp(x, y)) if lp else None)


# the targets: achieved FLOP rate over the bf16 peak, per workload and batch regime
TARGETS = {("sd_infer", "batch 1"): 0.35, ("sd_infer", "best batch"): 0.40, ("ddpm_sample", "best batch"): 0.40,
           ("sd_lora_train", "best batch"): 0.30, ("ddpm_train", "batch 8"): 0.30}


def study_compute(cfg: Config, flops: dict, n_train: int) -> list[dict]:
    """FLOPs of the whole study from the counted per-image costs: training epochs x images, test-set
    sampling of every method. ``flops`` maps (workload, variant) -> FLOPs per image (plain rows)."""
    from helpers.course.ddpm_inpainting import count_model_calls
    d, s, r = cfg.ddpm, cfg.sd, cfg.ddpm.repaint
    n_test = cfg.data.max_test_images or 1000
    per_eval = flops[("ddpm_sample", "plain")] / d.num_inference_steps          # one 256x256 U-Net forward
    calls = count_model_calls(r.num_inference_steps, r.jump_length, r.jump_n_sample)
    return [
        {"step": f"DDPM fine-tuning, {d.num_epochs} epochs x {n_train} images",
         "flops": d.num_epochs * n_train * flops[("ddpm_train", "plain")]},
        {"step": f"SD LoRA training, {s.num_epochs} epochs x {n_train} images",
         "flops": s.num_epochs * n_train * flops[("sd_lora_train", "plain")]},
        {"step": f"DDIM-{d.num_inference_steps} DDPM inpainting, {n_test} test images",
         "flops": n_test * flops[("ddpm_sample", "plain")]},
        {"step": f"RePaint, {r.max_images} images x {calls} U-Net calls", "flops": r.max_images * calls * per_eval},
        {"step": f"SD inference (zero-shot + LoRA), 2 x {n_test} test images",
         "flops": 2 * n_test * flops[("sd_infer", "plain")]},
    ]


def train_images(cfg: Config) -> int:
    """Training images of the preset: what data.prepare_dataset keeps for ``train`` out of
    ``data.num_images``; CelebA-HQ's 30,000 x 0.9 = 27,000 where the preset takes every image."""
    from helpers.study.data.splits import split_names
    d = cfg.data
    if not d.get("num_images"):
        return 27000
    s = split_names([f"{i:06d}" for i in range(d.num_images)], d.split, cfg.seed)
    cap = lambda n, limit: n if limit is None else min(n, limit)
    return d.num_images - cap(len(s["test"]), d.max_test_images) - cap(len(s["val"]), d.max_val_images)


def flop_budget(cfg: Config, peak_tflops: float = 800.0, n_train: int | None = None) -> dict:
    """FLOPs per image of every workload at its full size, counted on the meta device (shapes only:
    no weights, no memory, no GPU), and the speed each target ratio means at ``peak_tflops``.

    The same workload code as the timed benchmark runs under torch.utils.flop_counter, so a GPU run
    later measures exactly what is counted here."""
    n_train = train_images(cfg) if n_train is None else n_train
    ctx = Context(cfg, torch.device("meta"), False, 0, 1, peak_tflops, flops_only=True)   # tiny=False: full size
    for name in ("ddpm_train", "ddpm_sample", "sd_lora_train", "sd_infer"):
        print(f"[bench] counting {name} on the meta device ...", file=sys.stderr, flush=True)
        WORKLOADS[name](ctx)
    _count_eval_flops(ctx)
    flops = {(r.workload, r.variant): r.flops_per_image for r in ctx.rows}
    targets = []
    for (w, regime), frac in TARGETS.items():
        f = flops[(w, "plain")]
        ips = frac * peak_tflops * 1e12 / f
        targets.append({"workload": w, "regime": regime, "target_fraction": frac, "tflop_per_image": f / 1e12,
                        "images_per_s_at_target": ips, "seconds_per_image_at_target": 1 / ips})
    lines = [f"FLOPs per image at full size (counted on the meta device); targets at {peak_tflops:.0f} TFLOP/s",
             "workload | regime | TFLOP/image | target | img/s at target | s/image at target", "--- | " * 5 + "---"]
    for t in targets:
        lines.append(f"{t['workload']} | {t['regime']} | {t['tflop_per_image']:.2f} | "
                     f"{100 * t['target_fraction']:.0f} % | "
                     f"{t['images_per_s_at_target']:.2f} | {t['seconds_per_image_at_target']:.3f}")
    study = study_compute(cfg, flops, n_train)
    total = sum(x["flops"] for x in study)
    lines += ["", f"the whole study ({cfg.preset} preset, {n_train} training images): model arithmetic and hours "
              "at a given fraction of the peak", "step | PFLOP | h at 30 % | h at 8 %", "--- | --- | --- | ---"]
    hours = lambda f, frac: f / (frac * peak_tflops * 1e12) / 3600
    # the PEFT ablation (helpers.study.models.peft_variants), on top of the study: an estimate, each variant costed as
    # a LoRA training step and a base-model inference (its adapter merged); adapter arithmetic not counted
    abl, s = cfg.get("ablation", {}), cfg.sd
    n_var, n_abl = len(abl.get("variants", [])), abl.get("max_test_images") or cfg.data.max_test_images or 1000
    ablation = {"step": f"PEFT ablation (estimate), {n_var} variants x ({s.num_epochs} epochs x {n_train} images "
                f"+ {n_abl} test images)", "flops": n_var * (
                    s.num_epochs * n_train * flops[("sd_lora_train", "plain")] + n_abl * flops[("sd_infer", "plain")])}
    lines += [f"{x['step']} | {x['flops'] / 1e15:.0f} | {hours(x['flops'], 0.30):.2f} | {hours(x['flops'], 0.08):.2f}"
              for x in study + [{"step": "total", "flops": total}, ablation,
                                {"step": "total with the PEFT ablation", "flops": total + ablation["flops"]}]]
    lines += ["", "all counted rows: workload | variant | GFLOP/image | note", "--- | --- | --- | ---"]
    lines += [f"{r.workload} | {r.variant} | {r.flops_per_image / 1e9:.1f} | {r.note}" if r.flops_per_image
              else f"{r.workload} | {r.variant} | n/a | {r.note}" for r in ctx.rows]
    return {"peak_tflops": peak_tflops, "targets": targets, "rows": [asdict(r) for r in ctx.rows],
            "study": study, "study_total_flops": total, "n_train": n_train, "ablation": ablation,
            "table": "\n".join(lines)}


WORKLOADS = {"ddpm_train": bench_ddpm_train, "ddpm_sample": bench_ddpm_sample,
             "sd_lora_train": bench_sd_lora_train, "sd_infer": bench_sd_infer, "eval": bench_eval}


def _merge(previous: dict, result: dict) -> dict:
    """Rows of an earlier partial run on the same device that this run did not repeat are kept, so a
    benchmark can be taken in pieces (e.g. one workload per call on a lent GPU). Each run times its
    own plain variant, so every ratio still compares two timings of one run."""
    key = lambda r: (r["workload"], r["variant"], r["batch_size"])
    new = {key(r) for r in result["rows"]}
    kept = [r for r in previous.get("rows", []) if key(r) not in new]
    runs = previous.get("runs", [{k: previous[k] for k in ("date", "peak_tflops", "workloads") if k in previous}])
    order = list(WORKLOADS)
    rows = sorted(kept + result["rows"], key=lambda r: order.index(r["workload"]) if r["workload"] in order else 99)
    return {**result, "rows": rows, "runs": runs + result["runs"],
            "workloads": [w for w in order if any(r["workload"] == w for r in rows)]}


class BenchRefused(RuntimeError):
    """The benchmark was asked for something this machine cannot do (the message says what instead)."""


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):
        return None


def refuse_gpu_preset_on_cpu(cfg: Config, device: torch.device, full_size: bool) -> None:
    """A preset sized for a GPU (``bench.tiny: false``: full, lite) on a machine without one, and no
    ``--full-size``: raise :class:`BenchRefused` saying what the run would need and what to run instead.
    (Before, the CPU fell back to tiny networks at the preset's sizes, 512 px, 50 steps, batches up to 32,
    which the kernel's OOM killer ended on a 24 GB machine: numbers of no use, at any memory.)"""
    if device.type == "cuda" or full_size or cfg.bench.tiny:
        return
    mem = _memory_gib()
    here = f"{device.type.upper()}" + (f", {mem:.0f} GiB of memory" if mem else "")
    steps = f"{cfg.sd.num_inference_steps} SD / {cfg.ddpm.num_inference_steps} DDIM sampling steps"
    raise BenchRefused(
        f"helpers.tools.bench: the {cfg.preset!r} preset is sized for a CUDA GPU, and this machine has none ({here}).\n"
        f"  It times the full-size networks (SD 1.5 inpainting: U-Net 860M parameters at {cfg.sd.resolution} px; "
        f"the 7-channel DDPM U-Net 114M at {cfg.data.image_size} px) with {steps}, every variant, and batch "
        f"sweeps up to {max(cfg.bench.batch_sizes)}. On a CPU one full-size SD image at batch 1 already takes about "
        "12.6 GB and 44 s per 2 sampling steps (docs/benchmarks.md); its batch sweeps need many times that.\n"
        "  Instead:\n"
        f"    python -m helpers.tools.bench --preset smoke             "
        "tiny configs: checks the harness on a CPU in minutes\n"
        f"    python -m helpers.tools.bench --preset {cfg.preset} --full-size --variants plain --no-sweep --set "
        "bench.warmup=0 bench.iters=1 'bench.batch_sizes=[1]' ddpm.batch_size=1 sd.batch_size=1 eval.batch_size=2 "
        "sd.num_inference_steps=2 ddpm.num_inference_steps=2\n"
        "                                                       the smoke test of the full-size harness on a CPU "
        "(peak about 13 GB; not a measurement)\n"
        f"    python -m helpers.tools.bench --preset {cfg.preset} --flops-only   "
        "the FLOP counts at full size (no memory)\n"
        "  The numbers come from a GPU: `make gpu-check` there (docs/benchmarks.md).")


class RowWriter:
    """Writes the whole ``bench.json`` (atomically) each time a row is measured, merged with the rows of an
    earlier run kept in ``previous``: a run cut short (a time limit, a crash) keeps every row it finished.
    ``finished`` is false until the run ends."""

    def __init__(self, path: Path, meta: dict, header: str, previous: dict | None):
        self.path, self.meta, self.header, self.previous = Path(path), meta, header, previous
        self.result: dict = {}

    def snapshot(self, rows: list[Row], finished: bool) -> dict:
        result = {**self.meta, "rows": [asdict(r) for r in with_speedups(rows)], "finished": finished}
        header = self.header
        if self.previous:
            result = _merge(self.previous, result)
            n = len(result["runs"])
            header += f" (merged: {n} runs, each ratio within one run)" if n > 1 else ""
        result["table"] = format_table([Row(**r) for r in result["rows"]], header)
        return result

    def write(self, rows: list[Row], finished: bool = False) -> dict:
        self.result = self.snapshot(rows, finished)
        save_json(self.result, self.path)
        return self.result


def run(cfg: Config, only: list[str] | None = None, out_path=None, variants: list[str] | None = None,
        sweep: bool = True, merge: bool | None = None, full_size: bool = False) -> dict:
    """Run the selected workloads (default: all five) and variants (default: all); print the table;
    save JSON, rewritten after every row (:class:`RowWriter`). A partial run (``only`` or ``variants``)
    merges into an existing JSON of the same device unless ``merge=False``. ``full_size``: time the real
    architectures even on a CPU (slow). A GPU preset on a CPU without ``full_size`` is refused
    (:func:`refuse_gpu_preset_on_cpu`). Returns the JSON dict."""
    import datetime as dt
    from importlib import metadata

    names = only or list(WORKLOADS)
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        raise ValueError(f"unknown workloads {sorted(unknown)}; choose from {list(WORKLOADS)}")
    device = get_device(cfg)
    refuse_gpu_preset_on_cpu(cfg, device, full_size)          # before anything is allocated
    tiny = bool(cfg.bench.tiny) and not full_size
    peak, peak_desc = peak_matmul_tflops(device)
    ctx = Context(cfg, device, tiny, cfg.bench.warmup, cfg.bench.iters, peak, variants=tuple(variants or ()),
                  sweep=sweep)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    header = (f"device: {gpu or 'CPU'}; peak {peak_desc}: {peak:.2f} TFLOP/s measured now; "
              + ("TINY configs (CPU run: proves the harness, not the speed of the real models)" if tiny
                 else "full-size architectures with random weights"
                 + ("" if device.type == "cuda" else " ON A CPU: a smoke of the real-size benchmark, not GPU numbers")))
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta = {"date": date, "preset": cfg.preset,
            "device": gpu or "cpu", "tiny": tiny, "peak_tflops": peak, "peak_kind": peak_desc,
            "architectures": architecture_sources(cfg) if not tiny else "tiny configs",
            "versions": {p: metadata.version(p) for p in ("torch", "diffusers", "peft")},
            "workloads": names,
            "runs": [{"date": date, "peak_tflops": peak, "workloads": names, "variants": list(variants or [])}]}
    out_path = Path(out_path or paths(cfg).reports / "bench.json")
    merge = (bool(only) or bool(variants)) if merge is None else merge
    previous = None
    if merge and out_path.is_file():
        earlier = json.loads(out_path.read_text())
        if earlier.get("device") == meta["device"] and earlier.get("tiny") == tiny:
            previous = earlier
    writer = RowWriter(out_path, meta, header, previous)
    ctx.on_row = lambda row: writer.write(ctx.rows)
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        WORKLOADS[name](ctx)
        _free(device)
    result = writer.write(ctx.rows, finished=True)
    print(result["table"])
    print(f"\nsaved {out_path}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.tools.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--only", help="comma-separated workloads: " + ",".join(WORKLOADS))
    ap.add_argument("--out", help="JSON path (default reports/<preset>/bench.json)")
    add_set_argument(ap)
    ap.add_argument("--flops-only", action="store_true",
                    help="count the FLOPs per image of the full-size workloads on the meta device (no GPU needed, "
                         "nothing timed) and print what the targets mean in images/s")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak for --flops-only (default: 800, about an H100's bf16 peak; lite: 82, an assumed "
                         "16 GB consumer GPU's fp16 tensor peak)")
    ap.add_argument("--train-images", type=int, default=None,
                    help="training-set size for the study total of --flops-only (default: the preset's, "
                         "27,000 = CelebA-HQ's 30k x 0.9 where it takes every image)")
    ap.add_argument("--full-size", action="store_true",
                    help="time the full-size architectures even on a CPU (very slow; with minimal --set values "
                         "it is a smoke test of the real-size benchmark, e.g. on tests.fixtures.standins)")
    ap.add_argument("--variants", help="comma-separated parts of variant names to keep, e.g. 'bf16,all,preset' "
                                       "(plain is always timed: the ratios need it)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the batch-size sweeps")
    ap.add_argument("--fresh", action="store_true", help="overwrite the JSON instead of merging a partial run into it")
    args = ap.parse_args(argv)
    cfg = load_config(args.preset, parse_overrides(args.overrides))
    if args.flops_only:
        peak, what = (args.peak_tflops, "given") if args.peak_tflops else REFERENCE_PEAK.get(cfg.preset, DEFAULT_PEAK)
        budget = flop_budget(cfg, peak, args.train_images)
        budget["peak_kind"] = what
        print(f"peak {peak:.0f} TFLOP/s: {what}")
        print(budget["table"])
        out = Path(args.out) if args.out else paths(cfg).reports / "flop_budget.json"
        save_json({k: v for k, v in budget.items()}, out)
        print(f"\nsaved {out}", file=sys.stderr)
        return 0
    try:
        run(cfg, args.only.split(",") if args.only else None, args.out,
            args.variants.split(",") if args.variants else None, not args.no_sweep, False if args.fresh else None,
            full_size=args.full_size)
    except BenchRefused as e:
        print(e, file=sys.stderr)
        return 2
    return 0


def report_section(cfg: Config) -> str:
    """Markdown for the report (notebook 06): the last benchmark of this preset, or a plain statement
    that there is none (how to run one is in the README: exported slides carry no setup instructions)."""
    path = paths(cfg).reports / "bench.json"
    if not path.is_file():
        return (f"The heavy steps were not benchmarked with the {cfg.preset} preset, so there is no "
                "throughput measurement to set against the hardware's limit.")
    b = json.loads(path.read_text())
    lines = b["table"].splitlines()
    head = (f"Measured {b['date'][:10]} on **{b['device']}** (peak {b['peak_kind']}: {b['peak_tflops']:.2f} TFLOP/s). "
            + ("**Tiny configs on a CPU: this shows the harness works, not how fast the real models are.**"
               if b["tiny"] else "Full-size architectures with random weights."))
    keep = [l for l in lines[1:] if "(sweep)" not in l]   # the batch sweeps stay in bench.json
    return head + "\n\n" + "\n".join(keep)


if __name__ == "__main__":
    sys.exit(main())
