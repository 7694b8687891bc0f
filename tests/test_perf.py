"""Speed switches change speed, never results."""
import pytest
import torch

from helpers import perf, sd
from helpers.config import Config


@pytest.fixture(scope="module")
def tiny_unet():
    return sd.build_components(sd.tiny_configs(1000, 0, 1, 1))["unet"]


def _out(unet):
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 9, 32, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=e).sample


def test_attention_processors_agree(tiny_unet):
    assert perf.set_attention(tiny_unet, sdpa=False) > 0
    plain = _out(tiny_unet)
    perf.set_attention(tiny_unet, sdpa=True)
    assert torch.allclose(plain, _out(tiny_unet), atol=1e-5)


def test_fused_qkv_same_output_and_skipped_with_lora():
    unet = sd.build_components(sd.tiny_configs(1000, 0, 1, 1))["unet"]
    before = _out(unet)
    switches = Config({"sdpa": True, "fused_qkv": True, "channels_last": False, "torch_compile": False})
    perf.optimize_model(unet, switches, torch.device("cpu"))
    assert "Fused" in type(next(iter(unet.attn_processors.values()))).__name__
    assert torch.allclose(before, _out(unet), atol=1e-5)
    from peft import LoraConfig
    other = sd.build_components(sd.tiny_configs(1000, 0, 1, 1))["unet"]
    other.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    perf.optimize_model(other, switches, torch.device("cpu"))
    assert "Fused" not in type(next(iter(other.attn_processors.values()))).__name__


def test_make_sampler():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    assert isinstance(perf.make_sampler("ddim", {}), DDIMScheduler)
    assert isinstance(perf.make_sampler("dpm", {}), DPMSolverMultistepScheduler)
    with pytest.raises(ValueError, match="ddim' or 'dpm"):
        perf.make_sampler("euler", {})
