"""The mini preset's pretrained stand-ins (helpers.study.models.pretrain_mini): a cut-budget run saves folders
that the project's own loaders read back, the trained nets beat their initialisation on a fixed held-out
batch, and the shipped folders pretrained/mini/* load with the parameter counts of their recipe."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers as H

pytest.importorskip("sklearn")
from helpers.study.models import pretrain_mini as PM  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "mini"
CUT = PM.Recipe(seed=0, ddpm_steps=40, ddpm_batch_size=8, vae_steps=30, vae_batch_size=8, sd_steps=40,
                sd_batch_size=8, mask_pool=32, ddpm_lr=2e-3, sd_lr=2e-3, ema_decay=0.9)


def held_out(n: int = 16) -> torch.Tensor:
    """A fixed batch of TARGET digits (never trained on; read here only to score)."""
    from helpers.study.data.sources import digit_images

    imgs = [im for _, (_, im) in zip(range(n), digit_images("target", PM.SIZE))]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mini")
    records = PM.run(out, CUT, command="test")
    return out, records


@pytest.mark.slow
def test_ddpm_loads_and_beats_init(cut_run):
    out, records = cut_run
    cfg = H.load_config("mini", {"ddpm.pretrained_id": str(out / "ddpm")})
    P = H.study.files.paths(cfg, out / "root")
    unet = H.study.models.ddpm.load_unconditional_unet(cfg, P)
    sched = H.study.models.ddpm.load_noise_scheduler(cfg, P)
    assert unet.config.in_channels == 3 and unet.config.sample_size == PM.SIZE
    assert sched.config.beta_schedule == CUT.ddpm_beta_schedule
    assert sum(p.numel() for p in unet.parameters()) == records["ddpm"]["parameters"]
    torch.manual_seed(CUT.seed)
    init = PM.ddpm_unet().eval()
    x, ab = held_out(), sched.alphas_cumprod.float()
    with torch.no_grad():
        loss = {name: PM.ddpm_loss(net, x, ab, torch.Generator().manual_seed(7)).item()
                for name, net in (("init", init), ("trained", unet))}
    assert loss["trained"] < 0.7 * loss["init"], loss


@pytest.mark.slow
def test_sd_loads_and_beats_init(cut_run):
    out, records = cut_run
    cfg = H.load_config("mini", {"sd.pretrained_id": str(out / "sd-inpainting")})
    pipe = H.study.models.sd_pipeline.load_pipeline(cfg, device=torch.device("cpu"), root=out / "root")
    assert pipe.unet.config.in_channels == 9 and pipe.unet.dtype == torch.float32
    assert pipe.vae.config.scaling_factor == pytest.approx(records["sd"]["vae"]["scaling_factor"])
    assert len(pipe.tokenizer) == 49408
    # the untrained U-Net and text encoder (same seed), with the trained VAE: only what step 2 trained differs
    tok = pipe.tokenizer
    init = H.study.models.sd_pipeline.build_components(
        PM.sd_configs(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id), seed=CUT.seed)
    x = held_out()
    m = PM.mask_pool(len(x), np.random.default_rng(5), CUT.min_hole, CUT.max_hole)
    captions = ["a handwritten digit"] * len(x)
    ab = pipe.scheduler.alphas_cumprod.float()
    with torch.no_grad():
        loss = {name: PM.sd_inpaint_loss(unet, te, tok, pipe.vae, ab, x, m, captions,
                                         torch.Generator().manual_seed(7)).item()
                for name, unet, te in (("init", init["unet"], init["text_encoder"]),
                                       ("trained", pipe.unet, pipe.text_encoder))}
    assert loss["trained"] < loss["init"], loss
    # the pipeline runs end to end (2 DDIM steps)
    n = PM.SIZE
    img = pipe(prompt="a handwritten three", image=torch.zeros(1, 3, n, n), mask_image=torch.ones(1, 1, n, n),
               height=n, width=n, num_inference_steps=2, output_type="pt").images
    assert img.shape == (1, 3, n, n) and torch.isfinite(img).all()


@pytest.mark.slow
def test_recipe_and_readme(cut_run):
    out, records = cut_run
    recipe = json.loads((out / "recipe.json").read_text())
    assert set(recipe) == {"ddpm", "sd"}
    assert recipe["ddpm"]["steps"] == 40 and recipe["sd"]["unet_text_encoder"]["steps"] == 40
    assert "source" in recipe["sd"]["data"] and "never" in (out / "README.md").read_text()
    assert not list(out.glob(".*")), "temporary folders left behind"


@pytest.mark.skipif(not (SHIPPED / "recipe.json").is_file(), reason="pretrained/mini not built yet")
def test_shipped_folders_load_with_recorded_parameter_counts():
    recipe = json.loads((SHIPPED / "recipe.json").read_text())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    cfg = H.load_config("mini")                     # pretrained_id: pretrained/mini/... as shipped
    unet = H.study.models.ddpm.load_unconditional_unet(cfg, H.study.files.paths(cfg))
    assert count(unet) == recipe["ddpm"]["parameters"]
    pipe = H.study.models.sd_pipeline.load_pipeline(cfg, device=torch.device("cpu"))
    assert {k: count(getattr(pipe, k)) for k in ("vae", "text_encoder", "unet")} == recipe["sd"]["parameters"]
    assert pipe.unet.config.in_channels == 9
    size = sum(f.stat().st_size for f in (SHIPPED / "sd-inpainting").rglob("*") if f.is_file())
    assert size < 10.5e6, size
    # what the shipped weights learned, on held-out TARGET digits (bold: a style they never saw), against the
    # same architectures untrained: the DDPM's denoising loss and the latent U-Net's inpainting loss
    sched = H.study.models.ddpm.load_noise_scheduler(cfg, H.study.files.paths(cfg))
    torch.manual_seed(0)
    x = held_out(32)
    with torch.no_grad():
        ddpm = {name: PM.ddpm_loss(net, x, sched.alphas_cumprod.float(), torch.Generator().manual_seed(7)).item()
                for name, net in (("init", PM.ddpm_unet().eval()), ("shipped", unet))}
        tok = pipe.tokenizer
        init = H.study.models.sd_pipeline.build_components(
            PM.sd_configs(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id), seed=0)
        m = PM.mask_pool(len(x), np.random.default_rng(5), 0.15, 0.5)
        captions = [H.study.data.sources.digit_caption(0)] * len(x)     # any caption: the loss is not label-scored
        ab = pipe.scheduler.alphas_cumprod.float()
        nets = (("init", init["unet"], init["text_encoder"]), ("shipped", pipe.unet, pipe.text_encoder))
        sd = {name: PM.sd_inpaint_loss(u, te, tok, pipe.vae, ab, x, m, captions,
                                       torch.Generator().manual_seed(7)).item() for name, u, te in nets}
    assert ddpm["shipped"] < 0.5 * ddpm["init"], ddpm
    assert sd["shipped"] < 0.5 * sd["init"], sd
