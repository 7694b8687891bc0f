"""The PEFT ablation (issue 20, helpers/study/models/peft_variants.py, helpers/course/peft_variants.py).

* Real size on the meta device (no memory): each variant's trainable parameters are exactly the
  adapter's own tensors, equal to peft's count; LoRA r16 stays the study's 3,188,736.
* The tiny smoke pipeline, CPU: a few steps on a fixed batch lower the loss and leave every frozen
  weight untouched; saved and reloaded the adapter gives the same output; merged it gives the
  unmerged output.
* Bookkeeping: a variant without weights is reported as not trained (QLoRA on a CPU: needs a CUDA
  GPU), its run folder carries the variant in its fingerprint, and the table keeps every row."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import helpers as H
from helpers.course.peft_variants import adapter_config, attach_adapter
from helpers.study.models import peft_variants as PV

STUDY_LORA_R16 = 3_188_736     # the study's LoRA (r 16 on to_q, to_k, to_v, to_out.0 of SD 1.5's U-Net)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


def smoke_variants(cpu_only=True):
    cfg = H.load_config("smoke")
    return [v for v in PV.variants(cfg) if not (cpu_only and v.get("quantize"))]


def adapter_tensor_count(unet) -> int:
    """The adapter's tensors as peft names them (each tuner layer's ``adapter_layer_names``), counted
    without looking at requires_grad."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    seen = {}
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in dict.fromkeys(module.adapter_layer_names):
                container = getattr(module, attr)
                if "default" not in container:       # e.g. lora_embedding_A: only for embedding layers
                    continue
                part = container["default"]
                for p in [part] if isinstance(part, torch.nn.Parameter) else part.parameters():
                    seen[id(p)] = p.numel()
    return sum(seen.values())


# ---------------------------------------------------------------- real size, meta device
@pytest.mark.parametrize("variant", smoke_variants(cpu_only=False), ids=lambda v: v["name"])
def test_real_size_trainable_parameters_are_the_adapters_and_match_peft(variant):
    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**H.study.models.sd_pipeline.published_configs()["unet"])
    frozen = torch.nn.Linear(1, 1)
    v = {k: val for k, val in variant.items() if k != "quantize"}    # QLoRA's adapter is LoRA r16's
    attach_adapter(SimpleNamespace(unet=unet, vae=frozen, text_encoder=frozen), v)
    ours = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    peft_count, total = PeftModel.get_nb_trainable_parameters(unet)
    assert ours == peft_count == adapter_tensor_count(unet) > 0
    assert ours < 0.02 * total                                   # r64: 1.5 % of the U-Net
    if v["method"] == "lora" and not v.get("use_dora"):
        # W' = W + (alpha/r) B A on each target: r (d + k) parameters
        lin = [m for n, m in unet.named_modules() if n.endswith(tuple(f".{t}.base_layer" for t in v["target_modules"]))]
        assert ours == sum(v["r"] * (m.in_features + m.out_features) for m in lin)
    if v["name"] in ("lora_r16", "qlora_r16", "loha_r8"):        # LoHa r8: 2 r (d + k), LoRA r16's budget
        assert ours == STUDY_LORA_R16
    if v.get("use_dora"):                                         # + one magnitude per output row
        assert ours > STUDY_LORA_R16


# ---------------------------------------------------------------- the tiny pipeline
@pytest.fixture(scope="module")
def sd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    H.study.models.sd_pipeline.resolve_source(H.load_config("smoke"), root)
    return root


def fixed_batch(n=2, size=32):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 8:24, 6:22] = 1
    return {"image": images, "mask": masks, "name": [f"im{i}" for i in range(n)], "kind": ["box"] * n}


def unet_output(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, 32, 32, generator=g)
    ctx = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), encoder_hidden_states=ctx, return_dict=False)[0]


@pytest.mark.parametrize("variant", smoke_variants(), ids=lambda v: v["name"])
def test_variant_trains_saves_reloads_and_merges(variant, sd_root, tmp_path):
    cfg = H.load_config("smoke")
    pipe = H.study.models.sd_pipeline.load_pipeline(cfg, root=sd_root)
    v = {**variant, "dropout": 0.0}                          # deterministic outputs for the comparisons
    before = {k: {n: t.clone() for n, t in getattr(pipe, k).state_dict().items()}
              for k in ("unet", "vae", "text_encoder")}
    torch.manual_seed(0)
    attach_adapter(pipe, v)
    assert not any(p.requires_grad for m in (pipe.vae, pipe.text_encoder) for p in m.parameters())
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    # 1. a few steps on one fixed batch with fixed noise: the loss falls
    loss_fn = H.study.models.sd.make_loss_fn(pipe, cfg, {"im0": "a photo of a cat", "im1": "a photo"})
    opt = torch.optim.AdamW(params, lr=1e-2 if v["method"] != "oft" else 1e-3, weight_decay=0.0)
    batch, losses = fixed_batch(), []
    pipe.unet.train()
    for _ in range(8):
        loss = loss_fn(pipe.unet, batch, torch.Generator().manual_seed(3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    pipe.unet.eval()
    assert losses[-1] < losses[0], losses
    # 2. the frozen base is untouched (peft keeps it as <target>.base_layer.weight)
    for k in ("vae", "text_encoder"):
        assert all(torch.equal(t, before[k][n]) for n, t in getattr(pipe, k).state_dict().items())
    after = {n.replace(".base_layer", ""): t for n, t in pipe.unet.state_dict().items() if ".default" not in n}
    assert set(after) == set(before["unet"])
    assert all(torch.equal(after[n], before["unet"][n]) for n in after), "a frozen U-Net weight changed"
    # 3. saved and reloaded into a fresh pipeline: the same output (and not the base model's)
    out = unet_output(pipe.unet)
    path = PV.save_adapter(pipe.unet, tmp_path / "run", v)
    fresh = PV.load_adapter(H.study.models.sd_pipeline.load_pipeline(cfg, root=sd_root), path)
    base = unet_output(H.study.models.sd_pipeline.load_pipeline(cfg, root=sd_root).unet)
    assert (out - base).abs().max() > 1e-4
    assert torch.allclose(unet_output(fresh.unet), out, atol=1e-6)
    assert "default" in fresh.unet.peft_config and not any(p.requires_grad for p in fresh.unet.parameters())
    # 4. merged into the base weights: the same output without adapter layers in the forward pass
    PV.merge_adapter(fresh.unet)
    assert torch.allclose(unet_output(fresh.unet), out, atol=1e-4)


def test_adapter_config_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="unknown adapter method"):
        adapter_config({"method": "ia3", "target_modules": ["to_q"], "dropout": 0.0})


# ---------------------------------------------------------------- bookkeeping
def test_missing_weights_are_reported_as_not_trained_never_replaced(tmp_root):
    cfg = H.load_config("smoke")
    rows = {r["variant"]: r for r in PV.status(cfg, device="cpu")}
    assert set(rows) == {v["name"] for v in cfg.ablation.variants}
    assert rows["qlora_r16"]["status"] == PV.NEEDS_CUDA
    assert all(r["status"] == PV.NOT_TRAINED and r["weights"] is None for n, r in rows.items() if n != "qlora_r16")
    assert PV.find_adapter(cfg, "lora_r4") is None
    with pytest.raises(FileNotFoundError, match="not trained"):
        PV.load_adapter(SimpleNamespace(), tmp_root / "nowhere")
    # predictions whose adapter file has gone: still "not trained", the reason names the file
    folder = H.study.files.paths(cfg).predictions("peft_lora_r4")
    folder.mkdir(parents=True)
    H.study.files.save_json({"lora_weights": str(tmp_root / "gone.safetensors")}, folder / "meta.json")
    row = {r["variant"]: r for r in PV.status(cfg, device="cpu")}["lora_r4"]
    assert row["status"] == PV.NOT_TRAINED and "gone.safetensors" in row["note"]
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        PV.load_pipeline(cfg, PV.variants(cfg, ["qlora_r16"])[0], device="cpu")


def test_variant_runs_have_their_own_fingerprinted_folders(tmp_root):
    cfg = H.load_config("smoke")
    a, b = PV.variants(cfg, ["lora_r4", "loha_r8"])
    study = H.study.models.sd.lora_run_dir(cfg, "src")
    da, db = H.study.models.sd.lora_run_dir(cfg, "src", variant=a), H.study.models.sd.lora_run_dir(cfg, "src",
                                                                                                   variant=b)
    assert da.parent.name == "lora_r4" and da.parent.parent.name == "sd_peft" and da.name.startswith("ckpt-")
    assert len({study.name, da.name, db.name}) == 3
    assert H.study.models.sd.lora_run_dir(cfg, "src", variant={**a, "r": 8}).name != da.name


def test_train_predict_and_table_end_to_end(sd_root, prepared):
    """Two variants through train_lora (the study's loop) and the study's prediction loop; a resumed
    run is reused; the table keeps the untrained variant's row, scores the trained one."""
    cfg, _ = prepared
    cfg.sd.max_steps = 2
    cfg.ablation.variants = [v for v in cfg.ablation.variants if v["name"] in ("loha_r8", "lora_r64")]
    source = H.study.models.sd_pipeline.resolve_source(cfg, sd_root)
    cfg.sd.pretrained_id, cfg.sd.tiny = str(source), False         # the tiny pipeline, already built
    loha = PV.variants(cfg, ["loha_r8"])[0]
    stats = PV.train_variant(cfg, loha)
    assert stats["steps"] == 2 and stats["adapter_bytes"] > 0 and "sd_peft/loha_r8/ckpt-" in stats["lora_path"]
    assert stats["lora"]["method"] == "loha" and stats["trainable_params"] > 0
    again = PV.train_variant(cfg, loha)
    assert again.get("reused") and again["lora_path"] == stats["lora_path"]
    meta = PV.predict_variant(cfg, loha, stats)
    assert meta["method"] == "peft_loha_r8" and "loha_r8 (loha)" in meta["weights"]
    rows = {r["variant"]: r["status"] for r in PV.status(cfg)}
    assert rows == {"loha_r8": "trained", "lora_r64": PV.NOT_TRAINED}
    table = PV.evaluate_ablation(cfg, device="cpu").set_index("variant")
    untrained = table.loc["lora_r64"]
    assert untrained["status"] == PV.NOT_TRAINED and pd.isna(untrained.get("psnr_hole"))
    assert table.loc["loha_r8", "status"] == "trained" and np.isfinite(table.loc["loha_r8", "psnr_hole"])
    assert table.loc["loha_r8", "trainable_params"] == stats["trainable_params"]
    assert (H.study.files.paths(cfg).tables / PV.TABLE).is_file()
    # the cost table of a run over some variants keeps the others' rows, in config order
    cost = H.study.files.paths(cfg).tables / PV.COST_TABLE
    pd.DataFrame([{"variant": "loha_r8", "status": "old"}, {"variant": "lora_r64", "status": "kept"}]).to_csv(cost)
    PV.run_ablation(cfg, names=["loha_r8"])                 # the finished run reused, predictions written again
    rows = pd.read_csv(cost).set_index("variant")["status"].to_dict()
    assert rows == {"lora_r64": "kept", "loha_r8": "trained"}
    assert list(pd.read_csv(cost)["variant"]) == [v["name"] for v in PV.variants(cfg)] == ["lora_r64", "loha_r8"]


def test_the_reference_is_scored_on_the_variants_images_only():
    """Variants predicted on 2 of 3 test images: the reference's mean and CI over those 2, FID left out."""
    from helpers.study.evaluation.evaluate import PER_IMAGE

    cfg = H.load_config("smoke")
    rows = [{"method": "sd_lora", "name": n, **{k: v for k in PER_IMAGE}}
            for n, v in (("a", 10.0), ("b", 12.0), ("c", 30.0))]
    rows += [{"method": "peft_lora_r4", "name": n, **{k: 11.0 for k in PER_IMAGE}} for n in ("a", "b")]
    per_image = pd.DataFrame(rows)
    summary = pd.DataFrame([{"method": "sd_lora", "n": 3, "fid": 5.0, **{k: 52 / 3 for k in PER_IMAGE}},
                            {"method": "peft_lora_r4", "n": 2, "fid": 7.0, **{k: 11.0 for k in PER_IMAGE}}])
    summary = summary.set_index("method")
    out = PV.reference_on_variant_images(summary, per_image, "sd_lora", ["peft_lora_r4"], cfg)
    assert out.loc["sd_lora", "n"] == 2 and out.loc["sd_lora", "psnr_hole"] == pytest.approx(11.0)
    assert 10.0 <= out.loc["sd_lora", "psnr_hole_lo"] <= out.loc["sd_lora", "psnr_hole_hi"] <= 12.0
    assert pd.isna(out.loc["sd_lora", "fid"]) and out.loc["peft_lora_r4", "fid"] == 7.0
    two = per_image[per_image["name"] != "c"]
    same = PV.reference_on_variant_images(summary, two, "sd_lora", ["peft_lora_r4"], cfg)
    assert same.loc["sd_lora", "n"] == 3                                 # already one image set: unchanged


def test_the_tradeoff_slide_plots_scored_variants_on_a_log_axis_and_names_the_others():
    table = pd.DataFrame([
        {"variant": "reference (sd_lora)", "status": "trained", "trainable_params": 3_188_736, "psnr_hole": 20.0,
         "psnr_hole_lo": 19.5, "psnr_hole_hi": 20.5},
        {"variant": "lora_r4", "status": "trained", "trainable_params": 797_184, "psnr_hole": 19.0,
         "psnr_hole_lo": 18.0, "psnr_hole_hi": 20.0},
        {"variant": "oft_b32", "status": "trained", "trainable_params": 1_541_568, "psnr_hole": 21.0,
         "psnr_hole_lo": 20.0, "psnr_hole_hi": 22.0},
        {"variant": "qlora_r16", "status": PV.NEEDS_CUDA, "trainable_params": None, "psnr_hole": None},
    ]).convert_dtypes()
    fig = H.report.figures.peft_tradeoff(table, "psnr_hole")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert {t.get_text() for t in ax.texts} == {"lora_r4", "oft_b32"}
    assert "qlora_r16" in ax.get_title(loc="left") and PV.NEEDS_CUDA in ax.get_title(loc="left")


def test_the_command_line_refuses_an_unknown_variant_before_loading_anything(capsys):
    from helpers.study.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["train", "peft", "--preset", "smoke", "--variant", "lora_r5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown ablation variant(s) ['lora_r5']" in err and "lora_r4" in err
    with pytest.raises(SystemExit):
        main(["train", "sd", "--preset", "smoke", "--variant", "lora_r4"])
    assert "--variant is for `train peft` only" in capsys.readouterr().err
