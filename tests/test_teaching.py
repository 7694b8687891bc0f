"""The course teaches like the field's best courses (issue 21): every notebook ends with a summary and
exercises, the statements that were wrong stay fixed, and the identities the notebooks demonstrate hold
(the PSNR identity's direction, LoRA at init = the base model, SD's 9-channel input as a zero-initialised
widening). The checks on models use the tiny SD pipeline, CPU only."""
import re
from pathlib import Path

import jupytext
import pytest
import torch

import helpers as H

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))


def _markdown(path: Path) -> str:
    return "\n".join(c.source for c in jupytext.read(path).cells if c.cell_type == "markdown")


def _section(text: str, heading: str, depth: int = 3) -> str | None:
    """The text under ``## heading`` up to the next heading of level 1..depth."""
    m = re.search(rf"^## {heading}\s*$(.*?)(?=^#{{1,{depth}}} |\Z)", text, re.M | re.S)
    return m.group(1) if m else None


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_notebook_ends_with_a_summary_and_2_to_4_exercises(path):
    text = _markdown(path)
    summary, exercises = _section(text, "Summary"), _section(text, "Exercises", depth=2)
    assert summary and summary.strip(), f"{path.name}: no '## Summary' section"
    assert exercises is not None, f"{path.name}: no '## Exercises' section"
    # numbered 1, 2, ... through the section; 2-4 per group (a '### ' subsection, or the whole section)
    items = re.findall(r"^(\d+)\. ", exercises, re.M)
    assert items == [str(i + 1) for i in range(len(items))], items
    groups = re.split(r"^### .*$", exercises, flags=re.M)
    for group in (groups[1:] if len(groups) > 1 else groups):
        assert 2 <= len(re.findall(r"^\d+\. ", group, re.M)) <= 4, group[:80]
    # each exercise names what to edit: a cell, the parameters (preset keys) or a tab of the app
    for item in re.split(r"^\d+\. ", exercises, flags=re.M)[1:]:
        assert re.search(r"cell|overrides|`[a-z_]+\.[a-z_.]+`|tab|[Pp]aint", item), item[:80]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_summary_and_exercises_are_the_last_sections(path):
    cells = jupytext.read(path).cells
    assert "## Summary" in cells[-1].source or "## Summary" in cells[-2].source
    if path.stem.startswith("06"):      # the deck is unchanged: the sections are left out of the slides
        assert cells[-1].metadata.get("slideshow", {}).get("slide_type") == "skip"


GONE = {   # statements that were wrong (issues 21 and 26) and must not come back
    "05_evaluation": ["divide the error by the hole fraction", "weighted average of the known pixels"],
    "02_ddpm_theory": [r"lower bound on $\log p_\theta(x_0)$:", "with few and with the preset's number of steps",
                       "overlap('accuracy')"],
    "01_data": ["square-capped"],
    "04_sd_lora": ["the time per image shows it", "**merges** into the base weight", r"\rVert_\text{col}",
                   r"$R\,W$, $R$ block-diagonal"],
    "06_comparison": [r"+ w\,\big(\epsilon_\theta(z_t, c)"],
}
PRESENT = {
    "02_ddpm_theory": ["minimises the negative bound", r"\bar\alpha_t = f(t)/f(0)", "scaled to mean 1"],
    "05_evaluation": [r"\text{MSE}_\text{whole} = f\cdot\text{MSE}_\text{hole}", "first-order extrapolation",
                      "data.test_source", "11×11", "ev.by_kind"],
    "04_sd_lora": ["diffusers' convention", "their $w$ is $s - 1$", "zero-initialised after the",
                   "**This notebook does not merge**", "untimed warm-up call"],
    "03_ddpm_inpainting": ["data.test_source", "ddpm-celebahq-256"],
    "06_comparison": ["data.test_source"],
}


@pytest.mark.parametrize("stem", sorted(set(GONE) | set(PRESENT)))
def test_fixed_statements_stay_fixed(stem):
    text = (ROOT / "notebooks" / f"{stem}.md").read_text()
    for phrase in GONE.get(stem, []):
        assert phrase not in text, phrase
    for phrase in PRESENT.get(stem, []):
        assert phrase in text, phrase


def test_telea_is_never_called_an_average():
    for path in [*SOURCES, *(ROOT / "helpers").rglob("*.py")]:
        text = path.read_text().lower()
        for m in re.finditer("telea", text):
            assert "average" not in text[m.start():m.start() + 200], f"{path.name}: Telea near 'average'"


@pytest.mark.parametrize("fraction_px", [(8, 8), (4, 16), (16, 16)])
def test_psnr_identity_direction_whole_mse_is_f_times_hole_mse(fraction_px):
    """An error confined to the hole: MSE_whole = f * MSE_hole, so whole-image PSNR is higher by
    -10 log10 f dB (the error is multiplied by f, not divided)."""
    h, w = fraction_px
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 1.6 - 0.8
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 4:4 + h, 6:6 + w] = 1
    pred = x + 0.15 * mask * torch.randn(x.shape, generator=g)
    f = mask.mean(dim=(1, 2, 3)).double()
    hole, whole = H.course.metrics.psnr(pred, x, mask), H.course.metrics.psnr(pred, x)
    torch.testing.assert_close(whole - hole, -10 * torch.log10(f), rtol=0, atol=1e-9)
    assert (whole > hole).all()


# ---------------------------------------------------------------- the demonstrations of notebook 04
@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    cfg = H.load_config("smoke")
    H.study.models.sd_pipeline.resolve_source(cfg, root)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cfg, H.study.models.sd_pipeline.load_pipeline(cfg, root=root)
    torch.set_num_threads(n)


def _inputs(pipe, channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = pipe.unet.config.sample_size
    x = torch.randn(1, channels, size, size, generator=g)
    emb = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=g)
    return x, emb


def test_lora_at_init_is_the_base_model(tiny_pipe):
    cfg, pipe = tiny_pipe
    x, emb = _inputs(pipe, pipe.unet.config.in_channels)
    with torch.no_grad():
        base = pipe.unet(x, 500, encoder_hidden_states=emb, return_dict=False)[0]
    lo = cfg.sd.lora
    H.course.sd_inpainting.add_lora(pipe, lo.r, lo.alpha, lo.dropout, lo.target_modules)
    pipe.unet.eval()
    lora_B = [p for n, p in pipe.unet.named_parameters() if ".lora_B." in n]
    assert lora_B and all((b == 0).all() for b in lora_B)
    with torch.no_grad():
        adapted = pipe.unet(x, 500, encoder_hidden_states=emb, return_dict=False)[0]
        pipe.unet.disable_adapters()
        off = pipe.unet(x, 500, encoder_hidden_states=emb, return_dict=False)[0]
        pipe.unet.enable_adapters()
    assert (adapted - base).abs().max() == 0 and (adapted - off).abs().max() == 0
    with torch.no_grad():                       # a non-zero B moves the output: the check can fail
        lora_B[0].add_(0.5)
        moved = pipe.unet(x, 500, encoder_hidden_states=emb, return_dict=False)[0]
        lora_B[0].zero_()
    assert (moved - base).abs().max() > 1e-4


def test_sd_inpainting_input_is_a_zero_initialised_widening(tiny_pipe):
    from diffusers import UNet2DConditionModel

    _, pipe = tiny_pipe
    torch.manual_seed(0)
    t2i = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 4}).eval()
    wide = H.course.sd_inpainting.widen_to_inpainting(t2i, 5)
    assert wide.conv_in.in_channels == 9 and wide.config.in_channels == 9 and t2i.conv_in.in_channels == 4
    assert (wide.conv_in.weight[:, 4:] == 0).all()
    torch.testing.assert_close(wide.conv_in.weight[:, :4], t2i.conv_in.weight, rtol=0, atol=0)
    z_t, emb = _inputs(pipe, 4)
    extra = torch.randn(1, 5, *z_t.shape[-2:])            # m_down and z_masked, after z_t as SD orders them
    with torch.no_grad():
        before = t2i(z_t, 500, encoder_hidden_states=emb, return_dict=False)[0]
        after = wide(torch.cat([z_t, extra], 1), 500, encoder_hidden_states=emb, return_dict=False)[0]
        swapped = wide(torch.cat([extra, z_t], 1), 500, encoder_hidden_states=emb, return_dict=False)[0]
    assert (after - before).abs().max() <= 1e-5
    assert (swapped - before).abs().max() > 1e-3          # the order matters: z_t first


def test_latent_factor_is_read_from_the_vae(tiny_pipe):
    _, pipe = tiny_pipe
    f = H.course.sd_inpainting.latent_factor(pipe.vae)
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        z = H.course.sd_inpainting.encode_latents(pipe.vae, x)
    assert z.shape[-1] == 64 // f
    vae_sd = H.study.models.sd_pipeline.published_configs()["vae"]
    assert 2 ** (len(vae_sd["block_out_channels"]) - 1) == 8       # 512 px -> 64: 48x fewer values
    assert 512 * 512 * 3 // (64 * 64 * vae_sd["latent_channels"]) == 48
