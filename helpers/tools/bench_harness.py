"""The benchmark's harness: the row and the run's context, timing, FLOP counting (once per batch size on
the meta device; :class:`CountOncePerShape` for sampling loops), the measured peak, the variants of the
``perf`` switches, batch sweeps and the table. The workloads are in :mod:`helpers.tools.bench_workloads`,
the command line and the FLOP budget in :mod:`helpers.tools.bench`."""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from helpers.study.config import Config
from helpers.study.runtime import peak_memory_bytes, reset_peak_memory

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


def free_memory(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def random_masks(n: int, size: int, seed: int = 0) -> torch.Tensor:
    import numpy as np

    from helpers.study.data.masks import random_mask
    rng = np.random.default_rng(seed)
    return torch.stack([torch.from_numpy(random_mask(size, rng)[0])[None] for _ in range(n)])


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1)


def seeded_generator(device: torch.device) -> torch.Generator:
    """A seeded generator where the step draws its noise; the meta device has none, so draw on the CPU."""
    return torch.Generator("cpu" if device.type == "meta" else device).manual_seed(0)


def batch_sweep(ctx: Context, workload: str, variant: str, sizes, make_step, flops_of) -> None:
    """Time the ``variant`` at every batch size in ``sizes`` until one does not fit in memory."""
    if ctx.flops_only or not ctx.sweep:
        return
    for bs in sizes:
        try:
            step = make_step(bs)
            measure(ctx, workload, f"{variant} (sweep)", bs, step, flops_of(bs))
        except Exception as e:
            if not out_of_memory(e):
                raise
            untimed(ctx, workload, f"{variant} (sweep)", bs, "out of memory")
            break
        finally:
            free_memory(ctx.device)
