"""Tier ``fullsize``: the ``full`` and ``lite`` presets at their real sizes on the CPU, on the stand-ins
of tests.fixtures.standins (published layouts and configs, random weights), with minimal work: one training
step, two sampling steps, two test images, every notebook through papermill (helpers.report).

What a GPU user runs is what runs here: the same loaders on the hub's folder layouts (the DDPM's root
layout with legacy attention keys, the SD pipeline with its real CLIP tokenizer and PNDM scheduler,
BLIP, a parquet data set), the same 113.7M / 859.5M / 83.7M / 123.1M parameter networks, LoRA on the
same 128 modules. The series runs for ``full``; ``lite`` differs only in amounts (checked by
:func:`test_lite_runs_what_full_runs`). Run it with ``make test-fullsize`` (peak about 16 GB:
never two full-size processes at once). The stand-ins are written once into data/standins/ (about
6 GB, a few minutes) and reused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import helpers as H
from tests.fixtures import standins as S

pytestmark = [pytest.mark.fullsize, pytest.mark.slow]

# LoRA r 16 on to_q, to_k, to_v, to_out.0 of SD 1.5's U-Net: 16 transformer blocks x 2 attentions x 4
# projections = 128 modules; r * (in + out) per module, summed: 3,188,736 parameters
LORA_MODULES, LORA_PARAMS = 128, 3_188_736
TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")
N_IMAGES, N_TEST = 8, 2


@pytest.fixture(scope="session", autouse=True)
def _only_when_selected(request):
    """The tier takes minutes and 6 GB of stand-ins: it runs when asked for by marker (``-m fullsize``,
    as ``make test-fullsize`` and ``.ci/run`` do; ``-m gpu`` for its GPU test), not in a plain ``pytest``."""
    expr = request.config.getoption("markexpr") or ""
    if not any(m in expr.replace(f"not {m}", "") for m in ("fullsize", "gpu")):
        pytest.skip("fullsize tier: run it with `make test-fullsize` (pytest -m fullsize)")


def device_name() -> str:
    """cpu here and in CI; ``INPAINT_FULLSIZE_DEVICE=cuda`` on a GPU (make gpu-check)."""
    return os.environ.get("INPAINT_FULLSIZE_DEVICE", "cpu")


def standins_root() -> Path:
    return Path(os.environ.get("INPAINT_STANDINS", S.DEFAULT_OUT))


@pytest.fixture(scope="session")
def standins():
    out = standins_root()
    S.ensure(out)
    return out


def minimal_overrides(out: Path) -> dict:
    """The preset's values except the amount of work: 8 images (4 train, 2 val, 2 test), one training
    step at batch 1, two sampling steps, RePaint on one image, 4 caption tokens."""
    return {**S.overrides(out), "device": device_name(),
            "data.num_images": N_IMAGES, "data.split": {"train": 0.5, "val": 0.25, "test": 0.25},
            "data.max_test_images": N_TEST, "captions.max_new_tokens": 4,
            "ddpm.batch_size": 1, "ddpm.max_steps": 1, "ddpm.num_inference_steps": 2, "ddpm.sample_batch_size": 1,
            "ddpm.repaint.num_inference_steps": 2, "ddpm.repaint.jump_length": 1, "ddpm.repaint.jump_n_sample": 1,
            "ddpm.repaint.max_images": 1,
            "sd.batch_size": 1, "sd.max_steps": 1, "sd.num_inference_steps": 2, "sd.inference_batch_size": 1,
            "eval.batch_size": 2, "eval.bootstrap_samples": 20, "eval.kid_subset_size": 2, "eval.kid_subsets": 4,
            # the PEFT ablation: one variant at real size (the others are checked at real size on the meta
            # device by tests/test_peft_variants.py); the digits DDPM of notebook 02: a few seconds
            "ablation.variants": [{"name": "lora_r4", "method": "lora", "r": 4, "alpha": 4}],
            "ablation.max_test_images": 1,
            "digits.budget": 10, "digits.checkpoints": [0, 10], "digits.compare_budget": 5,
            "digits.bootstrap_samples": 50}


# ---------------------------------------------------------------- the stand-ins themselves (fast once written)
def test_standins_have_the_published_layout_and_sizes(standins):
    from diffusers import UNet2DModel
    from transformers import CLIPTokenizer

    f = S.folders(standins)
    # the DDPM repo keeps its files at the root, with model_index.json, and the 2022 attention key names
    assert {p.name for p in f["ddpm"].iterdir()} >= {"model_index.json", "config.json", "scheduler_config.json",
                                                     "diffusion_pytorch_model.bin"}
    raw = torch.load(f["ddpm"] / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True)
    assert any(k.endswith("attentions.0.query.weight") for k in raw) and not any(".to_q." in k for k in raw)
    # ... which diffusers renames on load: the project's loader gets every tensor, unchanged
    unet = UNet2DModel.from_pretrained(str(f["ddpm"]))
    assert H.study.runtime.count_parameters(unet)[1] == S.PARAMS["ddpm_unet"]
    assert all(torch.equal(raw[k], v) for k, v in S.legacy_attention_keys(unet.state_dict()).items())
    # SD: model_index.json as published, the real CLIP tokenizer
    index = json.loads((f["sd"] / "model_index.json").read_text())
    assert (index["scheduler"] == ["diffusers", "PNDMScheduler"]
            and index["_class_name"] == "StableDiffusionInpaintPipeline")
    tok = CLIPTokenizer.from_pretrained(str(f["sd"] / "tokenizer"))
    assert len(tok) == 49408 and (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    ids = tok("a photograph of an astronaut riding a horse").input_ids
    assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) == 10       # whole words: one token each
    assert tok.decode(ids[1:-1]) == "a photograph of an astronaut riding a horse"
    # the data set in the hub's parquet layout
    assert all((f["data"] / "data" / f"{s}-00000-of-00001.parquet").is_file() for s in ("train", "validation"))


def test_full_size_pipeline_loads_with_published_parameter_counts(standins):
    cfg = H.load_config("full", minimal_overrides(standins))
    pipe = H.study.models.sd_pipeline.load_pipeline(cfg, device=torch.device(device_name()))
    counts = {row["component"]: row["params"] for row in H.study.models.sd_pipeline.describe(pipe)}
    assert counts == {"unet": S.PARAMS["sd_unet"], "vae": S.PARAMS["sd_vae"],
                      "text_encoder": S.PARAMS["sd_text_encoder"], "scheduler": 0}
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.unet.config.sample_size == 64
    lo = cfg.sd.lora
    H.course.sd_inpainting.add_lora(pipe, lo.r, lo.alpha, lo.dropout, lo.target_modules)
    info = H.study.models.sd.lora_info(pipe, lo)
    lora = [n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(lora) == LORA_MODULES and info["trainable_params"] == LORA_PARAMS
    assert all(n.endswith(TARGETS) for n in lora) and all(sum(n.endswith(t) for n in lora) == 32 for t in TARGETS)
    # frozen bases: nothing but the LoRA matrices requires grad
    for m in (pipe.vae, pipe.text_encoder):
        assert not any(p.requires_grad for p in m.parameters())
    assert all(("lora_A" in n or "lora_B" in n) == p.requires_grad for n, p in pipe.unet.named_parameters())


# ---------------------------------------------------------------- the whole series, per preset
def _series(preset: str, standins: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"fullsize_{preset}")
    mp = pytest.MonkeyPatch()
    mp.setenv("INPAINT_ROOT", str(root))
    try:
        over = minimal_overrides(standins)
        manifest = H.report.export.run(preset, overrides=over)
        return manifest, H.load_config(preset, over)
    finally:
        mp.undo()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_lite_runs_what_full_runs(tmp_path):
    """The series runs once, for ``full``: ``lite`` differs from ``full`` only in amounts (images, epochs,
    batch sizes, benchmark sweep), and with this tier's minimal amounts only in epochs (capped by
    ``max_steps: 1``) and the benchmark's batch sizes (not part of the series). So lite's series would run
    the same code on the same stand-ins a second time (about 15 minutes of CI): it is not repeated. A key
    that makes lite take another path (a model, a sampler, a precision, a data source) fails this test,
    and the series must then run for lite too."""
    over = minimal_overrides(tmp_path)
    full, lite = (_flat(H.load_config(p, over).to_dict()) for p in ("full", "lite"))
    differ = {k for k in full.keys() | lite.keys() if full.get(k) != lite.get(k)}
    assert differ == {"preset", "ddpm.num_epochs", "sd.num_epochs", "bench.batch_sizes"}, differ
    assert over["ddpm.max_steps"] == over["sd.max_steps"] == 1          # epochs capped: the same single step


@pytest.fixture(scope="module", params=["full"])
def series(request, standins, tmp_path_factory):
    manifest, cfg = _series(request.param, standins, tmp_path_factory)
    root = Path(manifest["exports"]["report"]).parents[2]
    return manifest, cfg, root


def _paths(cfg, root):
    return H.study.files.paths(cfg, root)


def test_every_notebook_ran_and_the_report_was_produced(series):
    manifest, cfg, root = series
    assert [n["notebook"] for n in manifest["notebooks"]] == [p.name for p in H.report.series.list_notebooks()]
    assert all(n["status"] == "ok" for n in manifest["notebooks"])
    slides = Path(manifest["exports"]["slides"]).read_text()
    assert Path(manifest["exports"]["report"]).stat().st_size > 10_000
    assert f"Preset <strong>{cfg.preset}</strong>" in slides           # the slides say which preset made them
    P = _paths(cfg, root)
    index = json.loads((P.data / "index.json").read_text())
    assert index["source"] == "hub" and len(index["splits"]["test"]) == N_TEST and index["image_size"] == 256
    caps = json.loads((P.data / "captions.json").read_text())
    # every prepared image is captioned: the train split's and the held-out test images (CelebA-HQ's validation)
    n_prepared = sum(len(v) for v in index["splits"].values())
    assert caps["status"].startswith("generated by") and len(caps["captions"]) == n_prepared
    assert all(name.startswith("validation_") for name in index["splits"]["test"])


def test_predictions_have_the_data_shape_and_keep_known_pixels(series):
    _, cfg, root = series
    test = H.study.data.dataset.load_test_set(cfg, root)
    assert test["image"].shape == (N_TEST, 3, 256, 256)
    for method in H.study.methods.METHODS:
        meta = json.loads((_paths(cfg, root).predictions(method) / "meta.json").read_text())
        names = test["name"][:meta["n_images"]]
        pred, _ = H.study.data.predictions.read_predictions(cfg, method, names, root)
        assert pred.shape == (len(names), 3, 256, 256), method
        keep = (1 - test["mask"][:len(names)]).bool().expand_as(pred)
        # PNGs are 8-bit: known pixels equal the test image's to the quantisation step
        assert (pred[keep] - test["image"][:len(names)][keep]).abs().max() <= 1 / 127.5 + 1e-6, method
    assert json.loads((_paths(cfg, root).predictions("ddpm_finetuned") / "meta.json").read_text())["n_images"] == N_TEST


def test_lora_placement_count_and_reload_identity(series):
    from safetensors.torch import load_file

    _, cfg, root = series
    P = _paths(cfg, root)
    summary = json.loads((P.tables / "04_sd_summary.json").read_text())
    assert summary["lora"]["trainable_params"] == LORA_PARAMS and summary["train"]["steps"] == 1
    lora_file = H.study.models.sd.find_lora(cfg, root)          # the run's folder models/sd_lora/ckpt-<fingerprint>/
    saved = load_file(str(lora_file))
    modules = {k.split(".lora")[0] for k in saved}
    assert len(modules) == LORA_MODULES and sum(v.numel() for v in saved.values()) == LORA_PARAMS
    assert all(m.endswith(TARGETS) for m in modules)
    # the checkpoint holds exactly the trainable tensors (frozen bases are not in it) and the saved
    # LoRA file holds the same values
    ckpt = torch.load(lora_file.parent / "last.pt", map_location="cpu", weights_only=False)
    assert all("lora_A" in k or "lora_B" in k for k in ckpt["model"]) and len(ckpt["model"]) == 2 * LORA_MODULES
    ours = sorted(float(v.double().sum()) for v in ckpt["model"].values())
    theirs = sorted(float(v.double().sum()) for v in saved.values())
    assert ours == pytest.approx(theirs, rel=0, abs=1e-9)


def test_ddpm_finetuned_weights_reload_identically(series):
    _, cfg, root = series
    P = _paths(cfg, root)
    unet = H.study.models.ddpm.load_finetuned(cfg, P)
    assert unet.config.in_channels == 7
    assert H.study.runtime.count_parameters(unet)[1] == S.PARAMS["ddpm_unet"] + 4 * 128 * 9
    ckpt = torch.load(next((P.models / "ddpm_inpaint").glob("ckpt-*/last.pt")), map_location="cpu", weights_only=False)
    assert ckpt["step"] == 1
    state = unet.state_dict()
    assert set(ckpt["model"]) == set(state) and all(torch.equal(state[k], v) for k, v in ckpt["model"].items())


# ---------------------------------------------------------------- the real-size benchmark, on the CPU
def test_full_size_benchmark_runs_on_the_cpu(standins, tmp_root):
    """``python -m helpers.tools.bench --preset full --full-size`` on the stand-ins: every workload at its real
    size (one timed call each, plain variant, two sampling steps): the benchmark cannot rot between GPU runs."""
    import helpers as H

    over = {**S.overrides(standins), "device": device_name(), "bench.warmup": 0, "bench.iters": 1,
            "bench.batch_sizes": [1], "ddpm.batch_size": 1, "sd.batch_size": 1, "ddpm.num_inference_steps": 2,
            "sd.num_inference_steps": 2, "eval.batch_size": 2}
    cfg = H.load_config("full", over)
    out = tmp_root / "bench.json"
    result = H.tools.bench.run(cfg, out_path=out, variants=["plain"], sweep=False, full_size=True)
    saved = json.loads(out.read_text())
    assert saved["tiny"] is False and saved["architectures"]["sd"] == str(cfg.sd.pretrained_id)
    rows = {r["workload"]: r for r in saved["rows"] if r["variant"] == "plain"}
    assert set(rows) == set(H.tools.bench_workloads.WORKLOADS) - {"eval"}
    assert ("ON A CPU" in result["table"]) == (device_name() == "cpu")
    # real sizes: a training step of the 256 px U-Net is about 3 forwards (1.5 TFLOP), two guided SD steps at
    # 512 px are 4 U-Net evaluations plus the VAE (about 3.4 TFLOP)
    forward = rows["ddpm_sample"]["flops_per_image"] / cfg.ddpm.num_inference_steps
    assert forward > 0.4e12 and abs(rows["ddpm_train"]["flops_per_image"] / forward - 3) < 0.05
    assert rows["sd_infer"]["flops_per_image"] > 3e12 and rows["sd_lora_train"]["flops_per_image"] > 3e12
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["batch_size"] == 1


# ---------------------------------------------------------------- only on a GPU (make gpu-check)
@pytest.mark.gpu
def test_lite_training_steps_fit_16_gb():
    """The lite preset's promise: its DDPM (batch 8, 256 px) and LoRA (batch 1, 512 px) steps in fp16 fit a
    16 GB card. Measured with the benchmark's training workloads on the published architectures (the configs
    the stand-ins are written from: no stand-in needs writing first, so a short GPU call reaches this test)."""
    from helpers.tools import bench_harness, bench_workloads

    cfg = H.load_config("lite")
    assert bench_workloads.architecture_sources(cfg) == {"ddpm": "published config (helpers.study.models.ddpm)",
                                           "sd": "published configs (helpers.study.models.sd)"}
    ctx = bench_harness.Context(cfg, torch.device("cuda"), False, 1, 2, 1.0, variants=("preset",), sweep=False)
    bench_workloads.bench_ddpm_train(ctx)
    bench_workloads.bench_sd_lora_train(ctx)
    for r in ctx.rows:
        if r.variant == "preset":
            assert r.peak_memory_bytes < 15 * 2**30, f"{r.workload}: {r.peak_memory_bytes / 2**30:.1f} GiB"
