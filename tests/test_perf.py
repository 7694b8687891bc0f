"""Speed switches change speed, never results."""
import pytest
import torch

import helpers as H
from helpers.study.config import Config
from tests.fixtures import tiny


@pytest.fixture(scope="module")
def tiny_unet():
    return tiny.tiny_sd_components()["unet"]


def _out(unet):
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 9, 32, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=e).sample


def test_attention_processors_agree(tiny_unet):
    assert H.study.evaluation.perf.set_attention(tiny_unet, sdpa=False) > 0
    plain = _out(tiny_unet)
    H.study.evaluation.perf.set_attention(tiny_unet, sdpa=True)
    assert torch.allclose(plain, _out(tiny_unet), atol=1e-5)


def test_fused_qkv_same_output_and_skipped_with_lora():
    unet = tiny.tiny_sd_components()["unet"]
    before = _out(unet)
    switches = Config({"sdpa": True, "fused_qkv": True, "channels_last": False, "torch_compile": False})
    H.study.evaluation.perf.optimize_model(unet, switches, torch.device("cpu"))
    assert "Fused" in type(next(iter(unet.attn_processors.values()))).__name__
    assert torch.allclose(before, _out(unet), atol=1e-5)
    from peft import LoraConfig
    other = tiny.tiny_sd_components()["unet"]
    other.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    H.study.evaluation.perf.optimize_model(other, switches, torch.device("cpu"))
    assert "Fused" not in type(next(iter(other.attn_processors.values()))).__name__


def test_make_sampler():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    assert isinstance(H.study.evaluation.perf.make_sampler("ddim", {}), DDIMScheduler)
    assert isinstance(H.study.evaluation.perf.make_sampler("dpm", {}), DPMSolverMultistepScheduler)
    with pytest.raises(ValueError, match="ddim' or 'dpm"):
        H.study.evaluation.perf.make_sampler("euler", {})


# ---------------------------------------------------------------- no host sync in the sampling loops
class DeviceReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records what would make the CPU wait for the GPU: reading a device tensor's value (``.item()``,
    ``bool(t)``, ``nonzero``) or an op mixing a device tensor with a non-scalar CPU tensor (a copy).

    The loops run with their "device" tensors on ``meta`` (shapes, no values): any such read there
    fails or is recorded, exactly where on a GPU it would stall the loop."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        name = str(func)
        if name.startswith(("aten._local_scalar_dense", "aten.nonzero")) and leaves[0].device.type == "meta":
            self.reads.append(name)
        if {a.device.type for a in leaves if a.dim() > 0} >= {"meta", "cpu"}:
            self.reads.append("mixed devices: " + name)
        return func(*args, **(kwargs or {}))


def _meta(t):
    return t.to("meta")


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_ddpm_sampling_loop_never_reads_the_device(sampler):
    import helpers as H
    unet = tiny.tiny_unet(7, seed=None).to("meta")
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(**H.study.models.ddpm.published_scheduler_config()).alphas_cumprod
    x, m = _meta(torch.zeros(2, 3, 16, 16)), _meta(torch.ones(2, 1, 16, 16))
    with torch.no_grad(), DeviceReads() as mode:
        out = H.course.ddpm_inpainting.ddim_inpaint(unet, ac, x, m, _meta(torch.zeros(2, 3, 16, 16)), 6, 0.0, None,
                                                    sampler)
        out = H.course.ddpm_inpainting.ddim_inpaint(unet, ac, x, m, _meta(torch.zeros(2, 3, 16, 16)), 6, 0.0,
                                                    lambda: _meta(torch.zeros(2, 3, 16, 16)), sampler,
                                                    known_from_q=True)
    assert out.shape == (2, 3, 16, 16) and mode.reads == []


def test_repaint_loop_never_reads_the_device():
    from diffusers import DDPMScheduler

    import helpers as H
    unet = tiny.tiny_unet(3, seed=None).to("meta")
    ac = DDPMScheduler(**H.study.models.ddpm.published_scheduler_config()).alphas_cumprod
    x, m = _meta(torch.zeros(2, 3, 16, 16)), _meta(torch.ones(2, 1, 16, 16))
    with torch.no_grad(), DeviceReads() as mode:
        H.course.ddpm_inpainting.repaint_inpaint(unet, ac, x, m, lambda: _meta(torch.zeros(2, 3, 16, 16)), 5, 2, 2)
    assert mode.reads == []


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_sd_guided_loop_never_reads_the_device(sampler):
    parts = tiny.tiny_sd_components(device="meta")
    z, m, zm = _meta(torch.zeros(2, 4, 8, 8)), _meta(torch.ones(2, 1, 8, 8)), _meta(torch.zeros(2, 4, 8, 8))
    cond, uncond = _meta(torch.zeros(2, 77, 32)), _meta(torch.zeros(2, 77, 32))
    with torch.no_grad(), DeviceReads() as mode:
        sched = H.study.evaluation.perf.make_sampler(sampler, parts["scheduler"].config)
        out = H.course.sd_inpainting.denoise(parts["unet"], sched, z, m, zm, cond, uncond, 5, 7.5)
        out = H.course.sd_inpainting.denoise(parts["unet"], sched, z, m, zm, cond, uncond, 5, 7.5, known_noise=zm)
    assert out.shape == (2, 4, 8, 8) and mode.reads == []


def test_device_reads_detector_catches_a_sync():
    """The detector is not blind: a diffusers DDIM step fed a device timestep reads it."""
    sch = H.study.evaluation.perf.make_sampler("ddim", {})
    sch.set_timesteps(5)
    x = _meta(torch.zeros(1, 3, 4, 4))
    with pytest.raises(RuntimeError), torch.no_grad(), DeviceReads():
        sch.step(x, _meta(torch.tensor(800)), x)
