"""Stable Diffusion inpainting + LoRA (helpers/sd.py) on the tiny pipeline, CPU only.

One module-scoped fixture builds the tiny pipeline once, saved with save_pretrained into a
temporary root, and every test loads it back through helpers.study.models.sd_pipeline.load_pipeline: the function
that loads the real checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import helpers as H
from helpers.study.evaluation.perf import make_sampler
from tests.fixtures import reference

R = 64          # SD working size of the smoke preset
STEPS = 3       # denoising steps in these tests


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


@pytest.fixture(scope="module")
def sd_root(tmp_path_factory):
    """A project root holding the tiny base pipeline (reports/smoke/models/sd_base)."""
    root = tmp_path_factory.mktemp("sd")
    cfg = H.load_config("smoke")
    H.study.models.sd_pipeline.resolve_source(cfg, root)
    return root


def load(root, overrides=None, **kw):
    cfg = H.load_config("smoke", overrides)
    return cfg, H.study.models.sd_pipeline.load_pipeline(cfg, root=root, **kw)


def toy_batch(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        a = 4 + 3 * i
        masks[i, :, a:a + 14, a + 2:a + 18] = 1
    return images, masks


def run_inpaint(pipe, images, masks, prompts, seeds=None, composite=True):
    emb = H.course.sd_inpainting.encode_prompts(pipe.tokenizer, pipe.text_encoder, [""] + list(prompts))
    cond = torch.stack([emb[p] for p in prompts])
    seeds = range(len(images)) if seeds is None else seeds
    sampler = make_sampler("ddim", pipe.scheduler.config)
    return H.course.sd_inpainting.inpaint(pipe.unet, pipe.vae, sampler, images, masks,
                                          cond, emb[""][None], H.study.runtime.SeededNoise(seeds), R, STEPS, 7.5,
                                          composite=composite)


def attach(pipe, cfg) -> dict:
    """The course's LoRA attachment with the preset's settings; the parameter counts of the result."""
    lo = cfg.sd.lora
    H.course.sd_inpainting.add_lora(pipe, lo.r, lo.alpha, lo.dropout, lo.target_modules)
    if cfg.sd.get("gradient_checkpointing"):
        pipe.unet.enable_gradient_checkpointing()
    return H.study.models.sd.lora_info(pipe, lo)


# ---------------------------------------------------------------- loading
def test_tiny_pipeline_loads_through_the_real_loader(sd_root):
    from diffusers import StableDiffusionInpaintPipeline

    cfg, pipe = load(sd_root)
    assert isinstance(pipe, StableDiffusionInpaintPipeline)
    assert pipe.source == str(H.study.files.paths(cfg, sd_root).models / "sd_base")
    assert pipe.unet.config.in_channels == 9 and pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77
    assert H.course.sd_inpainting.latent_factor(pipe.vae) == 2          # tiny VAE: 2 blocks
    ids = pipe.tokenizer("a photo of a cat").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert len(ids) == 7                               # whole words from the small vocabulary


@pytest.mark.parametrize("kind", ["missing", "not_a_pipeline", "broken_pipeline"])
def test_missing_or_wrong_weights_say_where_and_how(sd_root, tmp_path, kind):
    if kind == "missing":
        source = tmp_path / "no" / "such" / "folder"
    else:
        source = tmp_path / "weights"
        source.mkdir()
        if kind == "not_a_pipeline":
            (source / "readme.txt").write_text("not weights")
        else:   # looks like a pipeline, but the component folders are missing
            sd_base = H.study.files.paths(H.load_config("smoke"), sd_root).models / "sd_base"
            (source / "model_index.json").write_text((sd_base / "model_index.json").read_text())
    cfg = H.load_config("smoke", {"sd.tiny": False, "sd.pretrained_id": str(source)})
    with pytest.raises(H.study.models.sd_pipeline.WeightsNotFoundError) as err:
        H.study.models.sd_pipeline.load_pipeline(cfg, root=sd_root)
    msg = str(err.value)
    assert str(source) in msg
    assert H.study.models.sd_pipeline.HUB_ID in msg and "hf download" in msg


def test_the_weights_message_is_never_cut(sd_root, monkeypatch):
    """The loader's own error is passed on whole, however long (it was cut at 300 characters)."""
    from diffusers import StableDiffusionInpaintPipeline

    long = "a long loader message " * 40 + "THE END."

    def fail(*a, **k):
        raise OSError(long)

    monkeypatch.setattr(StableDiffusionInpaintPipeline, "from_pretrained", fail)
    cfg = H.load_config("smoke", {"sd.tiny": False, "sd.pretrained_id": "someone/sd-inpainting"})
    with pytest.raises(H.study.models.sd_pipeline.WeightsNotFoundError) as err:
        H.study.models.sd_pipeline.load_pipeline(cfg, root=sd_root)
    assert long in str(err.value) and str(err.value).endswith("needs no weights.")


def test_published_configs_give_the_sd15_inpainting_sizes():
    c = H.study.models.sd_pipeline.build_components(H.study.models.sd_pipeline.published_configs(), device="meta")
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert c["unet"].config.in_channels == 9 and c["unet"].config.cross_attention_dim == 768
    assert count(c["unet"]) == 859_535_364            # SD 1.5 U-Net 859,520,964 + 5 extra input channels
    assert count(c["vae"]) == 83_653_863
    assert count(c["text_encoder"]) == 123_060_480    # CLIP ViT-L/14 text transformer
    assert H.course.sd_inpainting.latent_factor(c["vae"]) == 8


# ---------------------------------------------------------------- the pieces
def test_pieces_have_the_documented_shapes(sd_root):
    cfg, pipe = load(sd_root)
    images, masks = toy_batch(1)
    p = H.study.models.sd_pipeline.encode_pieces(pipe, images[0], masks[0], "a photo", R)
    lat = R // 2
    assert p["z0"].shape == p["z_masked"].shape == (4, lat, lat)
    assert p["m_down"].shape == (1, lat, lat) and set(p["m_down"].unique().tolist()) <= {0.0, 1.0}
    assert p["unet_input"].shape == (9, lat, lat)
    assert p["text_embedding"].shape == (77, 32)
    # the hole is blanked (0) before the VAE
    assert torch.all(p["masked_image"][:, p["mask"][0] > 0.5] == 0)


# ---------------------------------------------------------------- LoRA training
def _spec(cfg, **kw):
    spec = dict(cfg.sd)
    spec.update(checkpoint_every=0, **kw)
    return H.study.config.wrap(spec)


def _toy_dataset(n=4):
    images, masks = toy_batch(n)
    return [{"image": images[i], "mask": masks[i], "name": f"im{i}", "kind": "box"} for i in range(n)]


def test_a_training_step_changes_only_lora(sd_root, tmp_path):
    cfg, pipe = load(sd_root)
    info = attach(pipe, cfg)
    assert 0 < info["fraction_of_all"] < info["fraction_of_unet"] < 0.05
    trainable = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any(p.requires_grad for m in (pipe.vae, pipe.text_encoder) for p in m.parameters())
    before = {name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()}
              for name in ("unet", "vae", "text_encoder")}
    loss_fn = H.study.models.sd.make_loss_fn(pipe, cfg, {f"im{i}": "a photo of a cat" for i in range(4)})
    res = H.study.models.training.train(pipe.unet, loss_fn, _toy_dataset(), _spec(cfg, lr=1e-3, max_steps=1),
                                        tmp_path / "ckpt", cfg.seed, torch.device("cpu"),
                                        collate_fn=H.study.data.dataset.collate)
    assert res.steps == 1 and np.isfinite(res.history[0]["loss"])
    for name in ("unet", "vae", "text_encoder"):
        after = getattr(pipe, name).state_dict()
        for k, v in after.items():
            if "lora" in k:
                continue
            assert torch.equal(v, before[name][k]), f"frozen weight {name}.{k} changed"
    lora_b = [k for k in before["unet"] if ".lora_B." in k]
    assert lora_b and all(not torch.equal(pipe.unet.state_dict()[k], before["unet"][k]) for k in lora_b)


def test_fp16_frozen_weights_keep_lora_in_fp32_and_the_grad_scaler_works(sd_root):
    """The known pitfall: fp16 LoRA parameters make GradScaler fail ('Attempting to unscale FP16
    gradients'). add_lora keeps them in fp32 while the frozen weights stay fp16."""
    cfg, pipe = load(sd_root, dtype=torch.float16)
    attach(pipe, cfg)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    assert {p.dtype for p in params} == {torch.float32}
    assert {p.dtype for p in pipe.unet.parameters() if not p.requires_grad} == {torch.float16}
    loss_fn = H.study.models.sd.make_loss_fn(pipe, cfg, {})
    batch = H.study.data.dataset.collate(_toy_dataset(2))
    opt = torch.optim.AdamW(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        loss = loss_fn(pipe.unet, batch, torch.Generator().manual_seed(0))
    scaler.scale(loss).backward()
    scaler.unscale_(opt)                              # raises for fp16 gradients
    scaler.step(opt)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_gradient_checkpointing_still_trains_lora(sd_root):
    cfg, pipe = load(sd_root, {"sd.gradient_checkpointing": True})
    attach(pipe, cfg)
    assert pipe.unet.is_gradient_checkpointing
    pipe.unet.train()
    loss_fn = H.study.models.sd.make_loss_fn(pipe, cfg, {})
    loss = loss_fn(pipe.unet, H.study.data.dataset.collate(_toy_dataset(2)), torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for n, p in pipe.unet.named_parameters() if ".lora_B." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_prompt_dropout_rate_and_determinism(sd_root):
    cfg, pipe = load(sd_root)
    names = [f"im{i}" for i in range(64)]
    loss_fn = H.study.models.sd.make_loss_fn(pipe, cfg, {n: "a photo of a cat" for n in names})
    embeds = loss_fn.keywords["text_embeds"]
    assert not torch.equal(embeds[""], embeds["a photo of a cat"])
    g = torch.Generator().manual_seed(1)
    dropped = total = 0
    for _ in range(150):
        dropped += int(H.course.sd_inpainting.prompt_dropout_mask(len(names), cfg.sd.prompt_dropout, g).sum())
        total += len(names)
    rate = dropped / total                                  # 9600 draws: std of the rate ~0.0036
    assert abs(rate - cfg.sd.prompt_dropout) < 0.015, rate
    # the same generator seed gives the same step (what exact resume relies on)
    batch = H.study.data.dataset.collate(_toy_dataset(2))
    with torch.no_grad():
        a = loss_fn(pipe.unet, batch, torch.Generator().manual_seed(5))
        b = loss_fn(pipe.unet, batch, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_saved_lora_loads_into_a_fresh_pipeline_with_the_same_output(sd_root, tmp_path):
    over = {"sd.lora.alpha": 8}                   # alpha != r: the saved metadata must carry the scale
    cfg, pipe = load(sd_root, over)
    attach(pipe, cfg)
    with torch.no_grad():                         # a LoRA that visibly changes the model (B starts at 0)
        g = torch.Generator().manual_seed(0)
        for n, p in pipe.unet.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pipe.unet.eval()
    images, masks = toy_batch(2)
    prompts = ["a photo", "a photo of a cat"]
    before = run_inpaint(pipe, images, masks, prompts, composite=False)
    path = H.study.models.sd.save_lora(pipe.unet, tmp_path / "lora")
    assert path.name == "pytorch_lora_weights.safetensors" and path.is_file()

    _, fresh = load(sd_root, over)
    base = run_inpaint(fresh, images, masks, prompts, composite=False)
    H.study.models.sd.load_lora(fresh, path)
    after = run_inpaint(fresh, images, masks, prompts, composite=False)
    assert (before - base).abs().max() > 0.05     # the LoRA matters...
    assert torch.allclose(after, before, atol=1e-5)  # ...and survives save -> load


# ---------------------------------------------------------------- inference
def test_inference_keeps_known_pixels_is_seeded_and_batch_independent(sd_root):
    cfg, pipe = load(sd_root)
    images, masks = toy_batch(3)
    prompts = ["a photo"] * 3
    out = run_inpaint(pipe, images, masks, prompts)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    known = (masks < 0.5).expand_as(images)
    assert torch.equal(out[known], images[known])             # exactly, not approximately
    assert not torch.allclose(out[~known], images[~known])     # the hole was filled
    again = run_inpaint(pipe, images, masks, prompts)
    assert torch.equal(out, again)
    one_by_one = torch.cat([run_inpaint(pipe, images[i:i + 1], masks[i:i + 1], prompts[:1], [i]) for i in range(3)])
    assert torch.allclose(out, one_by_one, atol=1e-4)
    other_seed = run_inpaint(pipe, images, masks, prompts, seeds=[7, 8, 9])
    assert not torch.allclose(out, other_seed)



@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_known_from_q_shows_the_unet_the_noised_known_latents(sampler):
    """known_noise (zeta): before every step z_t outside the hole is sqrt(ab_t) z_masked + sqrt(1 - ab_t) zeta,
    inside it the sampler's own; without it the U-Net sees the sampler's z_t everywhere."""
    sched = make_sampler(sampler, {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                                   "beta_start": 0.00085, "beta_end": 0.012})
    g = torch.Generator().manual_seed(0)
    z_T, z_masked, zeta = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:5, 3:7] = 1
    seen = []

    class Recorder(torch.nn.Module):                    # eps = 0.1 z_t; records z_t and t
        dtype = torch.float32

        def forward(self, inp, t, encoder_hidden_states=None, return_dict=False):
            seen.append((inp[:, :4].clone(), int(t)))
            return (0.1 * inp[:, :4],)

    cond = torch.zeros(2, 3, 8)
    H.course.sd_inpainting.denoise(Recorder(), sched, z_T, m, z_masked, cond, cond, 4, 1.0, known_noise=zeta)
    known = (1 - m).bool().expand(-1, 4, -1, -1)
    assert len(seen) == 4
    for z_t, t in seen:
        ab = float(sched.alphas_cumprod[t])
        expected = sched.scale_model_input(ab ** 0.5 * z_masked + (1 - ab) ** 0.5 * zeta, t)
        assert torch.allclose(z_t[known], expected[known], atol=1e-5)
    assert torch.allclose(seen[0][0][~known], sched.scale_model_input(z_T * sched.init_noise_sigma,
                                                                      seen[0][1])[~known], atol=1e-6)
    with_q = [z for z, _ in seen]
    seen.clear()
    H.course.sd_inpainting.denoise(Recorder(), make_sampler(sampler, dict(sched.config)), z_T, m, z_masked, cond,
                                   cond, 4, 1.0)
    assert not torch.allclose(seen[0][0][known], with_q[0][known])

def test_inference_loop_matches_the_diffusers_pipeline(sd_root):
    """The step-by-step loop of notebook 04 reproduces diffusers' own pipe(...) call."""
    cfg, pipe = load(sd_root)
    pipe.scheduler = make_sampler("ddim", pipe.scheduler.config)
    images, masks = toy_batch(2)
    prompts = ["a photo", "a photo of a cat"]
    mine = run_inpaint(pipe, images, masks, prompts, composite=False)
    ref = reference.reference_pipeline_output(pipe, images, masks, prompts,
                                              H.study.runtime.SeededNoise(range(2)).generators, R, STEPS, 7.5)
    assert torch.allclose(mine, H.course.sd_inpainting.from_sd_resolution(ref, images.shape[-1]), atol=1e-4)


def test_train_and_predict_the_test_set_end_to_end(sd_root, prepared):
    """train_lora on the prepared smoke data (random training masks), save, reload, predict the
    frozen test set: PNG files keep the known pixels exactly; meta says what was used."""
    cfg, _ = prepared
    cfg.sd.max_steps = 2
    root = H.study.files.paths(cfg).root
    pipe = H.study.models.sd_pipeline.load_pipeline(cfg, source=H.study.models.sd_pipeline.resolve_source(cfg, sd_root))
    stats = H.study.models.sd.train_lora(cfg, pipe)
    assert stats["steps"] == 2 and stats["trainable_params"] > 0 and len(stats["history"]) == 2
    # resumes: nothing left to do
    again = H.study.models.sd.train_lora(cfg, H.study.models.sd_pipeline.load_pipeline(cfg, source=pipe.source))
    assert again["reused"] and again["images_per_s"] == stats["images_per_s"]

    lora_pipe = H.study.models.sd.load_lora(H.study.models.sd_pipeline.load_pipeline(cfg, source=pipe.source),
                                            stats["lora_path"])
    meta = H.study.models.sd.predict_test_set(cfg, lora_pipe, "sd_lora", train_stats=stats, limit=3)
    test = H.study.data.dataset.load_test_set(cfg)
    names = test["name"][:3]
    preds, saved = H.study.data.predictions.read_predictions(cfg, "sd_lora", names)
    known = (test["mask"][:3] < 0.5).expand_as(preds)
    sel = known.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(H.study.files.to_uint8(preds)[sel], H.study.files.to_uint8(test["image"][:3])[sel])
    for key in ("weights", "images_per_s", "sample_seconds_per_image", "trainable_params", "train_images_per_s",
                "train_steps", "device"):
        assert saved.get(key) is not None, key
    assert "LoRA" in saved["weights"] and saved["n_images"] == 3 and (root / saved["lora_weights"]).is_file()
    assert meta["weights"] == saved["weights"] and meta["images_per_s"] == saved["images_per_s"]


def test_inference_keys_and_a_longer_run_never_retrain_from_scratch(sd_root, prepared):
    """After a finished LoRA run: changing an inference key reuses it (no step trained), a bigger
    max_steps resumes it, and the finished LoRA of each run stays in its own folder."""
    cfg, _ = prepared
    cfg.sd.max_steps = 2
    source = H.study.models.sd_pipeline.resolve_source(cfg, sd_root)
    first = H.study.models.sd.train_lora(cfg, H.study.models.sd_pipeline.load_pipeline(cfg, source=source))
    assert first["steps"] == 2 and first["resumed_from"] == 0
    run_dir = H.study.models.sd.lora_run_dir(cfg, source, H.study.data.captions.make_captions(cfg)["captions"])
    assert first["lora_path"] == str(run_dir / H.study.models.sd.LORA_WEIGHTS)
    for key, value in (("num_inference_steps", 9), ("guidance_scale", 3.0), ("inference_batch_size", 1),
                       ("checkpoint_every", 1), ("num_workers", 1), ("num_epochs", 5)):
        other = H.load_config("smoke", {"sd.max_steps": 2, f"sd.{key}": value})
        again = H.study.models.sd.train_lora(other, H.study.models.sd_pipeline.load_pipeline(other, source=source))
        assert again["reused"] and again["steps"] == 2 and again["lora_path"] == first["lora_path"], key
    longer = H.load_config("smoke", {"sd.max_steps": 3})
    more = H.study.models.sd.train_lora(longer, H.study.models.sd_pipeline.load_pipeline(longer, source=source))
    assert more["resumed_from"] == 2 and more["steps"] == 3 and more["lora_path"] == first["lora_path"]
    # a run that changes the trajectory gets its own folder; the finished one is kept
    new = H.load_config("smoke", {"sd.max_steps": 1, "sd.lr": 5e-4})
    other_run = H.study.models.sd.train_lora(new, H.study.models.sd_pipeline.load_pipeline(new, source=source))
    assert other_run["resumed_from"] == 0 and other_run["lora_path"] != first["lora_path"]
    assert (run_dir / H.study.models.sd.LORA_WEIGHTS).is_file() and (run_dir / "last.pt").is_file()


def test_a_checkpoint_of_another_adapter_is_refused_by_name(sd_root, prepared):
    """Strict resume for LoRA: the adapter's own key set and shapes (r=4 checkpoint, r=8 adapter)."""
    import shutil

    cfg, _ = prepared
    cfg.sd.max_steps = 1
    source = H.study.models.sd_pipeline.resolve_source(cfg, sd_root)
    H.study.models.sd.train_lora(cfg, H.study.models.sd_pipeline.load_pipeline(cfg, source=source))
    caps = H.study.data.captions.make_captions(cfg)["captions"]
    wider = H.load_config("smoke", {"sd.max_steps": 1, "sd.lora.r": 8})
    target = H.study.models.sd.lora_run_dir(wider, source, caps)
    target.mkdir(parents=True)
    shutil.copy(H.study.models.sd.lora_run_dir(cfg, source, caps) / "last.pt", target / "last.pt")
    with pytest.raises(H.study.models.training.CheckpointMismatchError,
                       match=f"{target.name}/last.pt does not match.*shape"):
        H.study.models.sd.train_lora(wider, H.study.models.sd_pipeline.load_pipeline(wider, source=source))


def test_lora_training_refuses_fallback_captions_unless_opted_in(sd_root, prepared):
    """As in `full` (captions.allow_fallback_for_lora: false): no LoRA step on the fixed prompt."""
    cfg, _ = prepared
    cfg.sd.max_steps = 1
    cfg.captions.allow_fallback_for_lora = False
    pipe = H.study.models.sd_pipeline.load_pipeline(cfg, source=H.study.models.sd_pipeline.resolve_source(cfg, sd_root))
    with pytest.raises(H.study.data.captions.CaptionsError, match="LoRA training refused.*fallback"):
        H.study.models.sd.train_lora(cfg, pipe)
    assert not list((H.study.files.paths(cfg).models / "sd_lora").glob("ckpt-*/last.pt"))
    cfg.captions.allow_fallback_for_lora = True
    stats = H.study.models.sd.train_lora(cfg, pipe)
    assert stats["steps"] == 1 and "fallback prompt" in stats["captions_status"]


def test_a_re_attached_adapter_replaces_the_old_one(sd_root):
    """Running the add_lora cell again (exercise 04.3) gives a fresh adapter: B back to zero, one adapter's
    parameters, not two; the same for attach_adapter (the PEFT cells)."""
    cfg, pipe = load(sd_root)
    first = attach(pipe, cfg)
    with torch.no_grad():
        for n, p in pipe.unet.named_parameters():
            if ".lora_B." in n:
                p.fill_(0.5)
    again = attach(pipe, cfg)
    lora_B = [p for n, p in pipe.unet.named_parameters() if ".lora_B." in n]
    assert lora_B and all(bool((b == 0).all()) for b in lora_B)
    assert again["trainable_params"] == first["trainable_params"] and list(pipe.unet.peft_config) == ["default"]
    variant = H.study.models.peft_variants.variants(cfg)[0]
    H.course.peft_variants.attach_adapter(pipe, variant)
    H.course.peft_variants.attach_adapter(pipe, variant)
    assert list(pipe.unet.peft_config) == ["default"] and pipe.unet.peft_config["default"].r == variant["r"]
