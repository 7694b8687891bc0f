"""Benchmark of the heavy steps, against the device's measured arithmetic peak.

    python -m helpers.tools.bench --preset full          # on a GPU: real architectures, random weights
    python -m helpers.tools.bench --preset smoke         # on a CPU: tiny configs (the table says so); full and lite
                                                   # on a CPU are refused (refuse_gpu_preset_on_cpu)
    python -m helpers.tools.bench --preset full --full-size --set ...   # on a CPU: the real sizes, very slowly
                                                   # (a smoke of the real-size benchmark, e.g. on the
                                                   # stand-ins of tests.fixtures.standins: tests/test_fullsize.py)

The architectures are the published ones (helpers.study.models.ddpm.published_unet_config,
helpers.study.models.sd_pipeline.published_configs),
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

This module is the command line, the run and the FLOP budget; the harness (rows, timing, FLOP counting,
variants) is :mod:`helpers.tools.bench_harness`, the five workloads :mod:`helpers.tools.bench_workloads`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from helpers.study.config import Config, add_set_argument, load_config, parse_overrides
from helpers.study.files import paths, save_json
from helpers.study.runtime import get_device
from helpers.tools.bench_harness import (
    DEFAULT_PEAK,
    REFERENCE_PEAK,
    Context,
    Row,
    format_table,
    free_memory,
    peak_matmul_tflops,
    with_speedups,
)
from helpers.tools.bench_workloads import WORKLOADS, architecture_sources, count_eval_flops

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
    count_eval_flops(ctx)
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
        free_memory(device)
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
