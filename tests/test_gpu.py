"""What only a GPU can show (skipped without CUDA; run them on a lent GPU with `pytest -m gpu`).

* the sampling loops never make the CPU wait for the GPU (CUDA's sync debug mode turns any such
  wait into an error), the check the meta-device tests of test_perf.py stand in for on a CPU;
* the mixed-precision training paths (fp16 with a grad scaler, bf16) of the shared loop;
* the README's memory claim: one SD 1.5 inpainting LoRA step at 512 px, batch 2, fp16, fits in 24 GB.
"""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import helpers as H
from helpers.study.config import Config
from tests.fixtures.tiny import tiny_sd_components, tiny_unet

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


class NoHostSync:
    """Inside the block any CPU-GPU synchronisation raises (torch.cuda.set_sync_debug_mode)."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def _tiny_ddpm():
    return tiny_unet(7, block_out_channels=(32, 64), norm_num_groups=32, seed=None).to(CUDA)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ddpm_sampling_loop_never_syncs(sampler, dtype):
    unet = _tiny_ddpm()
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(**H.study.models.ddpm.published_scheduler_config()).alphas_cumprod
    x, m = torch.zeros(2, 3, 16, 16, device=CUDA), torch.ones(2, 1, 16, 16, device=CUDA)
    x_T = H.study.runtime.SeededNoise([0, 1])((3, 16, 16), CUDA)
    H.course.ddpm_inpainting.ddim_inpaint(unet, ac, x, m, x_T, 4, 0.0, None, sampler, dtype)   # warm-up
    with torch.no_grad(), NoHostSync():
        out = H.course.ddpm_inpainting.ddim_inpaint(unet, ac, x, m, x_T, 8, 0.0, None, sampler, dtype)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_sd_guided_loop_never_syncs(sampler):
    parts = tiny_sd_components(CUDA)
    z, m, zm = (torch.randn(2, 4, 8, 8, device=CUDA), torch.ones(2, 1, 8, 8, device=CUDA),
                torch.randn(2, 4, 8, 8, device=CUDA))
    cond, uncond = torch.randn(2, 77, 32, device=CUDA), torch.randn(2, 77, 32, device=CUDA)
    sched = H.study.evaluation.perf.make_sampler(sampler, parts["scheduler"].config)
    with torch.no_grad():
        H.course.sd_inpainting.denoise(parts["unet"], sched, z, m, zm, cond, uncond, 3, 7.5)             # warm-up
        with NoHostSync():
            out = H.course.sd_inpainting.denoise(parts["unet"], sched, z, m, zm, cond, uncond, 6, 7.5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_training_loop(tmp_path, precision):
    class Toy(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {"x": torch.full((8,), float(i) / 16)}

    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).to(CUDA)
    spec = Config(batch_size=4, lr=1e-2, num_epochs=3, max_steps=None, max_grad_norm=1.0, mixed_precision=precision,
                  checkpoint_every=None)
    loss = lambda m, b, g: (m(b["x"].to(CUDA)).float() - 1).pow(2).mean()
    r = H.study.models.training.train(model, loss, Toy(), spec, tmp_path, 0, CUDA)
    assert r.steps == 12 and all(math.isfinite(h["loss"]) for h in r.history)
    assert r.history[-1]["loss"] < r.history[0]["loss"]


def test_sd_lora_step_at_full_size_fits_in_24_gb():
    cfg = H.load_config("full")
    ctx = H.tools.bench_harness.Context(cfg, CUDA, False, 1, 2, 1.0, variants=("preset",), sweep=False)
    H.tools.bench_workloads.bench_sd_lora_train(ctx)
    row = next(r for r in ctx.rows if r.variant == "preset")
    assert row.batch_size == 2 and row.images_per_s > 0
    assert row.peak_memory_bytes < 24 * 2**30, f"{row.peak_memory_bytes / 2**30:.1f} GiB"


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason="QLoRA needs bitsandbytes (bash tools/gpu_wheels.sh --qlora, then carry .whl)")
def test_qlora_variant_trains_on_a_4bit_frozen_base_and_predicts(tmp_path, monkeypatch):
    """The ablation's QLoRA (issue 20) on the tiny smoke pipeline: the U-Net reloaded with a 4-bit NF4
    frozen base (bitsandbytes' Linear4bit), LoRA r16 trained on it by the study's loop, saved, reloaded
    onto a fresh 4-bit base and completing test images: trained, never replaced."""
    from helpers.study.models import peft_variants as PV

    monkeypatch.setenv("INPAINT_ROOT", str(tmp_path))
    cfg = H.load_config("smoke", {"sd.max_steps": 4, "data.num_images": 24, "data.max_test_images": 2,
                                  "ablation.max_test_images": 2})
    H.study.data.splits.prepare_dataset(cfg)
    (v,) = PV.variants(cfg, ["qlora_r16"])
    assert PV.unavailable_reason(v, CUDA) is None
    pipe = PV.load_pipeline(cfg, v, device=CUDA)
    kinds = {type(m).__name__ for m in pipe.unet.modules()}
    assert "Linear4bit" in kinds, f"the U-Net's linear layers are not 4-bit: {sorted(kinds)[:12]}"
    del pipe
    stats = PV.train_variant(cfg, v)
    assert stats["steps"] == 4 and all(math.isfinite(h["loss"]) for h in stats["history"])
    assert stats["trainable_params"] > 0 and stats["adapter_bytes"] > 0
    meta = PV.predict_variant(cfg, v, stats)
    assert meta["method"] == "peft_qlora_r16"
    row = {r["variant"]: r for r in PV.status(cfg, device=CUDA)}["qlora_r16"]
    assert row["status"] == "trained", row
    names = sorted(p.stem for p in H.study.files.paths(cfg).predictions("peft_qlora_r16").glob("*.png"))
    images, _ = H.study.data.predictions.read_predictions(cfg, "peft_qlora_r16", names)
    assert images.shape[0] == 2 and torch.isfinite(images).all()
