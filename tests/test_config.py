"""Presets: `full` holds the study's values exactly; both presets have the same keys."""
import pytest

import helpers as H


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("tiny_config",):
            out |= _keys(v, prefix + k + ".")
    return out


def test_full_preset_is_the_study():
    c = H.load_config("full")
    d, s = c.ddpm, c.sd
    assert c.data.image_size == 256
    assert (d.in_channels, d.batch_size, d.lr, d.num_epochs, d.max_grad_norm) == (7, 8, 1e-5, 10, 1.0)
    assert (d.lambda_mask, d.lambda_context, d.num_inference_steps) == (1.0, 0.05, 50)
    assert d.pretrained_id == "google/ddpm-celebahq-256" and d.mixed_precision in ("fp16", "bf16")
    assert d.max_steps is None
    assert s.pretrained_id == "stable-diffusion-v1-5/stable-diffusion-inpainting" and s.tiny is False
    assert s.resolution == 512
    assert (s.lora.r, s.lora.alpha, s.lora.dropout) == (16, 16, 0.05)
    assert s.lora.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    assert (s.batch_size, s.lr, s.num_epochs, s.mixed_precision) == (2, 1e-4, 3, "fp16")
    assert (s.prompt_dropout, s.num_inference_steps, s.guidance_scale) == (0.15, 50, 7.5)
    assert s.max_steps is None
    assert isinstance(c.seed, int)
    assert c.captions.model_id.startswith("Salesforce/blip")


def test_presets_have_the_same_keys():
    assert _keys(H.load_config("smoke")) == _keys(H.load_config("full"))


def test_smoke_is_small():
    c = H.load_config("smoke")
    assert c.data.image_size <= 64 and c.data.source == "bundled" and c.sd.tiny
    assert c.ddpm.pretrained_id is None and c.ddpm.tiny_config is not None


def test_overrides_and_errors(tmp_path):
    c = H.load_config("smoke", {"ddpm.max_steps": 3, "seed": 5})
    assert c.ddpm.max_steps == 3 and c.seed == 5 and c["ddpm"]["max_steps"] == 3
    with pytest.raises(KeyError, match="unknown key 'lrr'"):
        H.load_config("smoke", {"ddpm.lrr": 1})
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        H.load_config("nope")
    with pytest.raises(AttributeError, match="no key"):
        _ = H.load_config("smoke").nothing
    p = tmp_path / "mine.yaml"
    p.write_text("preset: mine\nseed: 1\n")
    assert H.load_config(p).preset == "mine"


def test_parse_overrides_reads_yaml_values():
    from helpers.study.config import parse_overrides
    assert parse_overrides(["ddpm.max_steps=3", "sd.tiny=false", "captions.model_id=null", "data.folder=/x=y"]) == {
        "ddpm.max_steps": 3, "sd.tiny": False, "captions.model_id": None, "data.folder": "/x=y"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["ddpm.max_steps"])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("module,prefix", [("study.__main__", ["train", "ddpm"]), ("study.__main__", ["train", "sd"]),
                                           ("study.__main__", ["train", "peft", "--variant", "lora_r4"]),
                                           ("tools.bench", []), ("report.export", [])])
def test_every_entry_point_takes_both_set_forms(module, prefix, monkeypatch):
    """`--set a=1 b=2` and repeated `--set` reach the config, in one call, for every command line;
    nothing runs (the step after parsing is replaced by one that records the overrides)."""
    import importlib

    mod = importlib.import_module(f"helpers.{module}")
    seen = []

    def record(preset, *args, **kw):
        overrides = args[2] if module == "report.export" else (args[0] if args else kw.get("overrides"))
        seen.append((preset, dict(overrides or {})))
        raise _Stop

    monkeypatch.setattr(mod, "run" if module == "report.export" else "load_config", record)
    argv = [*prefix, "--preset", "smoke", "--set", "ddpm.max_steps=3", "sd.lr=0.5", "--set", "ddpm.pretrained_id=./x",
            "--set", "seed=7"]
    with pytest.raises(_Stop):
        mod.main(argv)
    assert seen == [("smoke", {"ddpm.max_steps": 3, "sd.lr": 0.5, "ddpm.pretrained_id": "./x", "seed": 7})]
