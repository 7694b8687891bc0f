"""The benchmark harness runs on the CPU with tiny configs and writes a JSON with every workload."""
import json

import pytest
import torch

import helpers as H
from helpers.tools import bench as B
from helpers.tools import bench_harness, bench_workloads
from tests.fixtures.tiny import tiny_sd_components, tiny_unet


def test_peak_and_flop_counting():
    peak, desc = H.tools.bench_harness.peak_matmul_tflops(torch.device("cpu"), n=256, iters=2)
    assert peak > 0 and "256x256x256" in desc
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64)
    assert H.tools.bench_harness.count_flops(lambda: lin(x)) == 2 * 8 * 64 * 32      # 2 * M * K * N


def test_variants_plain_has_every_switch_off(smoke_cfg):
    ctx = H.tools.bench_harness.Context(smoke_cfg, torch.device("cpu"), True, 0, 1, 1.0)
    vs = {name: (perf, dtype) for name, perf, dtype in H.tools.bench_harness.variant_list(ctx, "train", "fp16")}
    assert all(vs["plain"][0][s] is False for s in H.tools.bench_harness.SWITCHES) and vs["plain"][1] == "fp32"
    assert vs["preset"][0] == smoke_cfg.perf and vs["preset"][1] == "fp32"   # the CPU runs fp32


def test_speedups_are_ratios_to_plain():
    rows = [H.tools.bench_harness.Row("w", "plain", 2, 10.0, 0.2, None, None, None, None),
            H.tools.bench_harness.Row("w", "fast", 2, 25.0, 0.08, None, None, None, None)]
    assert [r.speedup_vs_plain for r in H.tools.bench_harness.with_speedups(rows)] == [1.0, 2.5]


@pytest.mark.slow
def test_harness_writes_every_workload(tmp_root):
    cfg = H.load_config("smoke", {"bench.warmup": 0, "bench.iters": 1, "bench.batch_sizes": [1],
                                  "eval.batch_size": 2})
    out = tmp_root / "bench.json"
    result = H.tools.bench.run(cfg, out_path=out)
    saved = json.loads(out.read_text())
    assert saved["tiny"] is True and saved["peak_tflops"] > 0 and saved["device"] == "cpu"
    workloads = {r["workload"] for r in saved["rows"]}
    assert workloads == set(H.tools.bench_workloads.WORKLOADS)
    for w in ("ddpm_train", "ddpm_sample", "sd_lora_train", "sd_infer"):
        rows = [r for r in saved["rows"] if r["workload"] == w]
        plain = next(r for r in rows if r["variant"] == "plain")
        assert plain["images_per_s"] > 0 and plain["flops_per_image"] > 0 and plain["speedup_vs_plain"] == 1.0
        assert 0 < plain["fraction_of_peak"]
        assert any(r["variant"] == "preset" for r in rows)
    assert "TINY" in result["table"]


def test_meta_device_counts_what_real_tensors_count(smoke_cfg):
    """Counting on the meta device (shapes only) gives the same FLOPs as running the workload on the
    CPU: the full-size budget (``--flops-only``) can be trusted without a GPU."""
    counts = {}
    for dev in ("cpu", "meta"):
        ctx = H.tools.bench_harness.Context(smoke_cfg, torch.device(dev), True, 0, 1, 1.0, flops_only=True,
                                    count_device=torch.device(dev))
        H.tools.bench_workloads.bench_ddpm_train(ctx)
        H.tools.bench_workloads.bench_sd_lora_train(ctx)
        H.tools.bench_workloads.bench_sd_infer(ctx)
        counts[dev] = {(r.workload, r.variant): r.flops_per_image for r in ctx.rows}
        assert all(r.images_per_s != r.images_per_s for r in ctx.rows)      # nothing timed (NaN)
    assert counts["cpu"] == counts["meta"] and all(v > 0 for v in counts["cpu"].values())


@pytest.mark.slow
def test_full_size_flop_budget_matches_the_issue_arithmetic(tmp_root):
    """The issue's targets in time per image follow from the counted FLOPs of the published
    architectures: SD inpainting at 35 % of 800 TFLOP/s is about 0.3 s per image, DDIM-50 of the
    256x256 DDPM at 40 % about 13 images/s."""
    budget = H.tools.bench.flop_budget(H.load_config("full"), 800.0)     # the study's step counts and sizes
    t = {(x["workload"], x["regime"]): x for x in budget["targets"]}
    assert 0.27 < t[("sd_infer", "batch 1")]["seconds_per_image_at_target"] < 0.33
    assert 12.0 < t[("ddpm_sample", "best batch")]["images_per_s_at_target"] < 14.0
    rows = {(r["workload"], r["variant"]): r["flops_per_image"] for r in budget["rows"]}
    # training = forward + backward (about 3 forwards) of the 0.5 TFLOP 256x256 U-Net
    assert abs(rows[("ddpm_train", "plain")] / (rows[("ddpm_sample", "plain")] / 50) - 3) < 0.05
    # the whole study: about 1.2 EFLOP of model arithmetic (1.4 h at 30 % of 800 TFLOP/s), 2,000 test images
    assert 1.1e18 < budget["study_total_flops"] < 1.3e18 and len(budget["study"]) == 5
    # InceptionV3 at 299x299: 5.7 GMAC
    assert abs(rows[("eval", "inception features")] / 1e9 - 11.4) < 0.2


def test_partial_runs_merge_and_keep_plain(tmp_root):
    """A benchmark taken in pieces (one workload or a few variants per call) ends in one JSON; every
    piece times its own plain variant so the ratios stay within one run."""
    cfg = H.load_config("smoke", {"bench.warmup": 0, "bench.iters": 1})
    out = tmp_root / "bench.json"
    H.tools.bench.run(cfg, ["ddpm_train"], out, variants=["preset"], sweep=False)
    r2 = H.tools.bench.run(cfg, ["ddpm_sample"], out, variants=["DPM"], sweep=False)
    rows = {(r["workload"], r["variant"]) for r in r2["rows"]}
    assert rows == {("ddpm_train", "plain"), ("ddpm_train", "preset"), ("ddpm_sample", "plain"),
                    ("ddpm_sample", f"preset + DPM-Solver++ {cfg.bench.dpm_steps} steps")}
    assert len(r2["runs"]) == 2 and "merged: 2 runs" in r2["table"]
    assert json.loads(out.read_text())["workloads"] == ["ddpm_train", "ddpm_sample"]
    fresh = H.tools.bench.run(cfg, ["ddpm_train"], out, variants=["preset"], sweep=False, merge=False)
    assert {r["workload"] for r in fresh["rows"]} == {"ddpm_train"} and len(fresh["runs"]) == 1


@pytest.mark.slow
def test_lite_budget_is_about_one_hour_on_a_16_gb_card():
    """lite: the same models and protocol on fewer images, sized from the counted FLOPs to about one
    hour at 30 % of the fp16 peak the benchmark states for it (an assumed 16 GB consumer card)."""
    cfg = H.load_config("lite")
    assert (H.tools.bench.train_images(cfg) == 2036 and cfg.data.max_test_images == 200
            and cfg.ddpm.repaint.max_images == 20)
    peak, _ = H.tools.bench_harness.REFERENCE_PEAK["lite"]
    budget = H.tools.bench.flop_budget(cfg, peak)
    hours = budget["study_total_flops"] / (0.30 * peak * 1e12) / 3600
    assert 0.8 < hours < 1.3 and budget["n_train"] == 2036
    full = H.load_config("full")
    for key in ("pretrained_id", "lambda_mask", "lambda_context", "num_inference_steps", "lr"):
        assert cfg.ddpm[key] == full.ddpm[key]                      # the same models and protocol
    assert cfg.sd.lora == full.sd.lora and cfg.data.hub_id == full.data.hub_id and cfg.eval == full.eval
    assert cfg.ddpm.mixed_precision == cfg.sd.mixed_precision == "fp16"


# ---------------------------------------------------------------- counting once per network call (issue 19)
def _tiny_sd_parts(device="meta"):
    return tiny_sd_components(device)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_counting_each_network_call_once_equals_tracing_the_loop(sampler):
    """A sampling loop's FLOPs, each network call traced once per shape and multiplied by the loop's calls,
    equal the FLOPs of tracing every call of a 3-step loop: exactly, on the tiny configs (meta device)."""
    from diffusers import DDPMScheduler

    meta = torch.device("meta")
    with meta:
        unet = tiny_unet(7, block_out_channels=(32, 64), norm_num_groups=32, seed=None)
    x, m = torch.zeros(2, 3, 16, 16), torch.ones(2, 1, 16, 16)
    ac = DDPMScheduler(**H.study.models.ddpm.published_scheduler_config()).alphas_cumprod
    ddim = lambda: H.course.ddpm_inpainting.ddim_inpaint(unet, ac, x, m, torch.zeros(2, 3, 16, 16, device=meta), 3, 0.0,
                                                         None, sampler)
    stats = {}
    once = bench_harness.count_flops(ddim, once_per_shape=True, stats=stats)
    # 1 U-Net call traced, 2 added
    assert once == bench_harness.count_flops(ddim) > 0 and stats == {"traced": 1, "repeated": 2}

    p = _tiny_sd_parts()
    sched = H.study.evaluation.perf.make_sampler(sampler, p["scheduler"].config)
    cond, uncond = torch.randn(2, 77, 32), torch.randn(1, 77, 32)
    noise = H.study.runtime.SeededNoise(range(2))
    sd_loop = lambda: H.course.sd_inpainting.inpaint(p["unet"], p["vae"], sched, torch.zeros(2, 3, 32, 32),
                                                     torch.ones(2, 1, 32, 32), cond, uncond, noise, 64, 3, 7.5)
    stats = {}
    once = bench_harness.count_flops(sd_loop, once_per_shape=True, stats=stats)
    assert once == bench_harness.count_flops(sd_loop) > 0
    assert stats == {"traced": 3, "repeated": 2}     # VAE encode, U-Net (both guidance passes in one call), decode


def test_workload_counts_are_the_same_counted_once_or_traced():
    """The benchmark's own sampling workloads (DDIM, DPM-Solver++, SD's guided loop) count the same FLOPs per image
    whether each call is traced or each network traced once per shape (3 steps, tiny configs)."""
    cfg = H.load_config("smoke", {"ddpm.num_inference_steps": 3, "sd.num_inference_steps": 3, "bench.dpm_steps": 3})
    counts = {}
    for once in (True, False):
        ctx = bench_harness.Context(cfg, torch.device("meta"), True, 0, 1, 1.0, flops_only=True, count_once=once)
        bench_workloads.bench_ddpm_sample(ctx)
        bench_workloads.bench_sd_infer(ctx)
        counts[once] = {(r.workload, r.variant): r.flops_per_image for r in ctx.rows}
    assert counts[True] == counts[False] and len(counts[True]) == 4 and all(v > 0 for v in counts[True].values())


def test_count_once_leaves_the_networks_as_they_were():
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
    before = [UNet2DModel.forward, UNet2DConditionModel.forward, AutoencoderKL.encode, AutoencoderKL.decode]
    with pytest.raises(RuntimeError, match="inside"):
        bench_harness.count_flops(lambda: (_ for _ in ()).throw(RuntimeError("inside")), once_per_shape=True)
    assert before == [UNet2DModel.forward, UNet2DConditionModel.forward, AutoencoderKL.encode, AutoencoderKL.decode]


# ---------------------------------------------------------------- rows saved as they are measured (issue 19)
def test_each_row_is_saved_as_soon_as_it_is_measured(tmp_root, monkeypatch):
    """A workload that fails after its first row: that row is in bench.json (written atomically after every row,
    merged with the rows already there), marked as not finished."""
    cfg = H.load_config("smoke", {"bench.warmup": 0, "bench.iters": 1})
    out = tmp_root / "bench.json"
    B.run(cfg, ["ddpm_train"], out, variants=["plain"], sweep=False)          # an earlier piece
    assert json.loads(out.read_text())["finished"] is True

    def boom(ctx):
        bench_harness.measure(ctx, "boom", "plain", 1, lambda: None, None)
        assert json.loads(out.read_text())["rows"][-1]["workload"] == "boom"     # on disk before the next row
        bench_harness.untimed(ctx, "boom", "second", 1, "no timing")
        raise RuntimeError("killed after two rows")

    monkeypatch.setitem(bench_workloads.WORKLOADS, "boom", boom)
    with pytest.raises(RuntimeError, match="killed"):
        B.run(cfg, ["boom"], out, sweep=False)
    saved = json.loads(out.read_text())
    assert saved["finished"] is False and len(saved["runs"]) == 2
    assert [(r["workload"], r["variant"]) for r in saved["rows"]] == [("ddpm_train", "plain"), ("boom", "plain"),
                                                                      ("boom", "second")]
    assert "boom | second" in saved["table"] and not list(tmp_root.glob("*.tmp*"))


# ---------------------------------------------------------------- a GPU preset on a CPU (issue 19)
@pytest.mark.parametrize("preset", ["full", "lite"])
def test_gpu_preset_on_a_cpu_is_refused_before_anything_is_allocated(preset, tmp_root, monkeypatch, capsys):
    """`--preset full` on a CPU without `--full-size` ran tiny networks at 512 px with batch sweeps up to 32 until
    the OOM killer ended it: it is refused, saying what it would need and what to run instead."""
    def never(*a, **k):
        raise AssertionError("nothing may be allocated or timed")
    monkeypatch.setattr(B, "peak_matmul_tflops", never)
    monkeypatch.setitem(bench_workloads.WORKLOADS, "sd_infer", never)
    cfg = H.load_config(preset, {"device": "cpu"})
    with pytest.raises(B.BenchRefused) as e:
        B.run(cfg, ["sd_infer"], tmp_root / "bench.json")
    msg = str(e.value)
    for part in ("sized for a CUDA GPU", "--preset smoke", "--full-size", "--flops-only", "make gpu-check",
                 f"up to {max(cfg.bench.batch_sizes)}"):
        assert part in msg
    assert not (tmp_root / "bench.json").exists()
    assert B.main(["--preset", preset, "--only", "sd_infer", "--set", "device=cpu"]) == 2
    assert "sized for a CUDA GPU" in capsys.readouterr().err


def test_full_size_and_tiny_presets_are_not_refused_on_a_cpu():
    cpu = torch.device("cpu")
    B.refuse_gpu_preset_on_cpu(H.load_config("smoke"), cpu, False)             # tiny configs: the harness check
    B.refuse_gpu_preset_on_cpu(H.load_config("full"), cpu, True)               # --full-size: the smoke of real sizes
    B.refuse_gpu_preset_on_cpu(H.load_config("full"), torch.device("cuda"), False)             # a GPU
