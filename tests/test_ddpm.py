"""DDPM helpers (helpers/ddpm.py, helpers/repaint.py) on tiny models, CPU only, in seconds."""
from __future__ import annotations

from functools import partial

import nbformat
import pytest
import torch

import helpers as H
from helpers.study.config import ROOT, Config
from tests.fixtures.tiny import tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: tiny models, one thread


def batch(n: int = 4, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, 4:12, 3:10] = 1
    return {"image": image, "mask": mask}


# ---------------------------------------------------------------- forward process
@pytest.mark.parametrize("schedule, diffusers_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_q_sample_equals_diffusers_add_noise(schedule, diffusers_name):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    torch.testing.assert_close(H.course.diffusion.make_betas(schedule, 1000).float(), sched.betas, atol=1e-7, rtol=0)
    x0 = torch.rand(5, 3, 8, 8) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 1, 250, 600, 999])
    ours = H.course.diffusion.q_sample(x0, t, eps, sched.alphas_cumprod)
    ref = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    # our own alpha_bar gives the same closed form
    torch.testing.assert_close(H.course.diffusion.alpha_bar(H.course.diffusion.make_betas(schedule, 1000)).float(),
                               sched.alphas_cumprod, atol=1e-6, rtol=0)


def test_iterated_one_step_process_matches_closed_form():
    betas = H.course.diffusion.make_betas("linear", 1000)
    rows = H.course.checks.forward_check(torch.linspace(-1, 1, 16), betas, [0, 99, 999], n_chains=3000,
                           generator=torch.Generator().manual_seed(0))
    for r in rows:
        assert r["max_abs_mean_error"] < 0.06           # ~3 standard errors of a 3000-chain mean
        assert abs(r["std_empirical"] - r["std_closed_form"]) < 0.02
        assert r["ks_distance_to_normal"] < 0.02
    assert rows[-1]["alpha_bar"] < 1e-4                 # x_999 is (almost) pure noise


# ---------------------------------------------------------------- reverse process and DDIM vs diffusers
def test_p_sample_equals_diffusers_ddpm_step():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    x_t, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for t in (999, 500, 1, 0):
        ref = sched.step(eps, t, x_t, generator=torch.Generator().manual_seed(3)).prev_sample
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3))
        ab_prev = sched.alphas_cumprod[t - 1] if t > 0 else torch.tensor(1.0)
        ours = H.course.diffusion.p_sample(x_t, eps, sched.alphas_cumprod[t], ab_prev, z if t > 0 else None)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_loop_equals_diffusers_ddim_scheduler(eta):
    from diffusers import DDIMScheduler, DDPMScheduler

    unet = tiny_unet()
    cfg = DDPMScheduler(num_train_timesteps=1000).config
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    noises = [torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(100 + i)) for i in range(8)]
    it = iter(noises)
    with torch.no_grad():
        ours = H.course.diffusion.ddim_sample_loop(lambda x, t: unet(x, t).sample, x_T,
                                                   DDPMScheduler(**cfg).alphas_cumprod, 8,
                                                   eta=eta, noise_fn=lambda: next(it))
        ref_sched = DDIMScheduler.from_config(cfg)
        ref_sched.set_timesteps(8)
        assert [int(t) for t in ref_sched.timesteps] == H.course.diffusion.ddim_timesteps(1000, 8)
        x = x_T.clone()
        for i, t in enumerate(ref_sched.timesteps):
            x = ref_sched.step(unet(x, t).sample, t, x, eta=eta,
                               variance_noise=noises[i] if eta > 0 else None).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [2, 5, 10])
def test_dpm_solver_option_equals_diffusers_dpm_solver_plus_plus(steps):
    """The DDIM loop's ``solver="dpm"``: DPM-Solver++(2M) on the same levels as DDIM, equal to diffusers'
    DPMSolverMultistepScheduler given those timesteps (final step to sigma = 0)."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    unet = tiny_unet()
    cfg = DDPMScheduler(num_train_timesteps=1000).config
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = H.course.diffusion.ddim_sample_loop(lambda x, t: unet(x, t).sample, x_T,
                                                   DDPMScheduler(**cfg).alphas_cumprod, steps, solver="dpm")
        ref = DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                      final_sigmas_type="zero")
        ref.set_timesteps(timesteps=H.course.diffusion.ddim_timesteps(1000, steps))
        x = x_T.clone()
        for t in ref.timesteps:
            x = ref.step(unet(x, t).sample, t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_ddim_with_exact_eps_recovers_a_gaussian_mixture():
    """DDIM (eta = 0) with the exact noise predictor maps N(0, 1) onto the data distribution."""
    w, mu, s = (0.3, 0.7), (-0.6, 0.5), (0.1, 0.2)
    ab = H.course.diffusion.alpha_bar(H.course.diffusion.make_betas("linear", 1000))
    x_T = torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = H.course.diffusion.ddim_sample_loop(lambda x, t: H.course.checks.mixture_eps(x, ab[t], w, mu, s), x_T, ab, 50,
                                             clip=False)
    exact = H.course.checks.mixture_sample(20000, w, mu, s, torch.Generator().manual_seed(1))
    assert abs(x0.mean() - exact.mean()) < 0.02
    assert abs(x0.std() - exact.std()) < 0.02
    assert abs((x0 < 0).double().mean() - 0.3) < 0.02    # mass of the left component


# ---------------------------------------------------------------- models
def test_load_tiny_model_through_from_pretrained(tmp_root, smoke_cfg):
    P = H.study.files.paths(smoke_cfg)
    unet = H.study.models.ddpm.load_unconditional_unet(smoke_cfg, P)
    folder = P.models / H.study.models.ddpm.BASE_DIR
    assert (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file()
    assert unet.config.in_channels == 3 and unet.config.sample_size == smoke_cfg.ddpm.tiny_config.sample_size
    again = H.study.models.ddpm.load_unconditional_unet(smoke_cfg, P)    # seeded: the same random weights
    for a, b in zip(unet.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    sched = H.study.models.ddpm.load_noise_scheduler(smoke_cfg, P)
    assert sched.config.num_train_timesteps == smoke_cfg.ddpm.num_train_timesteps
    # a folder given as pretrained_id (e.g. downloaded by hand) loads through the same path
    cfg2 = H.load_config("smoke", {"ddpm.pretrained_id": str(folder)})
    assert torch.equal(H.study.models.ddpm.load_unconditional_unet(cfg2, P).conv_in.weight, unet.conv_in.weight)


def test_missing_weights_say_what_and_how(tmp_root, smoke_cfg):
    missing = tmp_root / "no" / "such" / "ddpm"
    cfg = H.load_config("smoke", {"ddpm.pretrained_id": str(missing)})
    with pytest.raises(FileNotFoundError) as e:
        H.study.models.ddpm.load_unconditional_unet(cfg, H.study.files.paths(cfg))
    msg = str(e.value)
    assert str(missing) in msg and "huggingface-cli download google/ddpm-celebahq-256" in msg
    assert "ddpm.pretrained_id" in msg


def test_widened_model_reproduces_the_original_exactly(tmp_path):
    base = tiny_unet(3)
    wide = H.course.ddpm_inpainting.widen_conv_in(base, 7)
    assert wide.config.in_channels == 7 and wide.conv_in.weight.shape[1] == 7
    assert base.conv_in.weight.shape[1] == 3                      # the original is untouched
    assert torch.equal(wide.conv_in.weight[:, 4:7], base.conv_in.weight)
    assert not wide.conv_in.weight[:, :4].any()
    b = batch(3)
    x_t = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        ref = base(x_t, t).sample
        out = wide(H.course.ddpm_inpainting.model_input(b["image"] * (1 - b["mask"]), b["mask"], x_t), t).sample
    assert torch.equal(out, ref)
    # save_pretrained / from_pretrained round-trip keeps the 7 channels and the weights
    from diffusers import UNet2DModel

    wide.save_pretrained(str(tmp_path / "wide"))
    back = UNet2DModel.from_pretrained(str(tmp_path / "wide"))
    assert back.config.in_channels == 7 and torch.equal(back.conv_in.weight, wide.conv_in.weight)


def test_published_config_builds_the_full_size_architecture():
    cfg = H.study.models.ddpm.published_unet_config()
    assert cfg["sample_size"] == 256 and cfg["block_out_channels"] == [128, 128, 256, 256, 512, 512]
    # self-attention at 16x16: the 5th level of 256 -> 128 -> 64 -> 32 -> 16
    assert cfg["down_block_types"][4] == "AttnDownBlock2D" and cfg["up_block_types"][1] == "AttnUpBlock2D"
    from diffusers import UNet2DModel

    small = {**cfg, "block_out_channels": [8, 8, 8, 8, 8, 8], "norm_num_groups": 4, "sample_size": 64}
    m = H.study.models.ddpm.build_inpainting_unet(small, 7)
    assert isinstance(m, UNet2DModel) and m.conv_in.in_channels == 7


# ---------------------------------------------------------------- loss
def test_weighted_loss_by_hand_and_zero_context_gradient():
    eps = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])           # (1, 1, 2, 2)
    eps_theta = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # squared errors 1, 4, 1, 4; weights 1.0, 0.05, 0.05, 1.0 -> (1 + 0.2 + 0.05 + 4) / 4
    loss = H.course.ddpm_inpainting.weighted_eps_loss(eps, eps_theta, mask, 1.0, 0.05)
    assert loss.item() == pytest.approx((1 + 0.2 + 0.05 + 4) / 4)
    # W broadcasts over channels: the mean runs over N*C*H*W
    e3, t3 = eps.repeat(1, 3, 1, 1), eps_theta.repeat(1, 3, 1, 1)
    assert H.course.ddpm_inpainting.weighted_eps_loss(e3, t3, mask, 1.0, 0.05).item() == pytest.approx(loss.item())
    # lambda_context = 0: no gradient reaches the known (context) pixels
    pred = torch.randn(2, 3, 8, 8, requires_grad=True)
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:6, 2:6] = 1
    H.course.ddpm_inpainting.weighted_eps_loss(torch.randn(2, 3, 8, 8), pred, m, 1.0, 0.0).backward()
    ctx = (1 - m).bool().expand_as(pred)
    assert torch.all(pred.grad[ctx] == 0) and pred.grad[~ctx].abs().sum() > 0


# ---------------------------------------------------------------- sampling
def test_ddim_inpainting_keeps_known_pixels_and_is_seeded():
    from diffusers import DDPMScheduler

    unet = H.course.ddpm_inpainting.widen_conv_in(tiny_unet(3), 7)
    ab = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    b = batch(3)
    x_masked, mask = H.course.ddpm_inpainting.masked_image(b["image"], b["mask"]), b["mask"]

    def run(seeds, sampler="ddim", eta=0.0):
        noise = H.study.runtime.SeededNoise(seeds)
        return H.course.ddpm_inpainting.ddim_inpaint(unet, ab, x_masked, mask, noise((3, 16, 16), "cpu"), 4, eta,
                                                     lambda: noise((3, 16, 16), "cpu"), sampler)
    out = run([1, 2, 3])
    known = (1 - mask).bool().expand_as(out)
    assert torch.equal(out[known], b["image"][known])              # known pixels untouched
    assert out.min() >= -1 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(run([1, 2, 3]), out)                      # same seed, same image
    assert not torch.equal(run([7, 8, 9])[~known], out[~known])    # another seed, another image
    # DPM-Solver++ (perf.sampler: dpm) and eta > 0 obey the same contract
    for kw in ({"sampler": "dpm"}, {"eta": 1.0}):
        o = run([1, 2, 3], **kw)
        assert torch.equal(o[known], b["image"][known]) and o.abs().max() <= 1
        assert torch.equal(run([1, 2, 3], **kw), o)


def test_ddim_inpainting_known_from_q_shows_the_network_the_noised_known_pixels():
    """known_from_q: at every level t the x_t channels the network sees hold sqrt(ab_t) x + sqrt(1 - ab_t) z
    outside the hole (z: the first draw of noise_fn), the sampler's own x_t inside; off: the sampler's x_t."""
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    b = batch(2)
    x_masked, mask = H.course.ddpm_inpainting.masked_image(b["image"], b["mask"]), b["mask"]
    seen = []

    class Recorder(torch.nn.Module):                    # eps = 0.1 x_t, and what it was given
        def forward(self, inp, t):
            seen.append((inp[:, 4:].clone(), int(t)))
            return type("Out", (), {"sample": 0.1 * inp[:, 4:]})()

    def run(known_from_q):
        seen.clear()
        noise = H.study.runtime.SeededNoise([1, 2])
        x_T = noise((3, 16, 16), "cpu")
        out = H.course.ddpm_inpainting.ddim_inpaint(Recorder(), ab, x_masked, mask, x_T, 4, 0.0,
                                                    lambda: noise((3, 16, 16), "cpu"), known_from_q=known_from_q)
        return out, x_T, list(seen)

    z = H.study.runtime.SeededNoise([1, 2])
    z((3, 16, 16), "cpu")                               # x_T: the first draw
    z = z((3, 16, 16), "cpu")                           # z: the next one
    known = (1 - mask).bool().expand(-1, 3, -1, -1)
    out, x_T, steps = run(True)
    assert [t for _, t in steps] == [750, 500, 250, 0]
    for x_t, t in steps:
        expected = ab[t].sqrt() * x_masked + (1 - ab[t]).sqrt() * z
        assert torch.allclose(x_t[known], expected[known], atol=1e-6)
    assert torch.equal(steps[0][0][~known], x_T[~known])           # the hole: the sampler's own x_T
    assert torch.equal(out[known], b["image"][known])              # the known pixels pasted back as before
    _, x_T, plain = run(False)
    assert torch.equal(plain[0][0], x_T)                           # off: the network sees the sampler's x_t
    assert not torch.allclose(plain[1][0][known], steps[1][0][known])


def test_repaint_schedule_and_sampler():
    assert H.course.ddpm_inpainting.repaint_schedule(5, 2, 2) == [4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert H.course.ddpm_inpainting.repaint_schedule(4, 2, 1) == [3, 2, 1, 0, -1]   # no resampling: plain DDPM order
    assert H.course.ddpm_inpainting.count_model_calls(5, 2, 2) == 9
    from diffusers import DDPMScheduler

    unet = tiny_unet(3)
    ab = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    b = batch(2)
    def run(seeds):
        noise = H.study.runtime.SeededNoise(seeds)
        return H.course.ddpm_inpainting.repaint_inpaint(unet, ab, b["image"], b["mask"],
                                                        lambda: noise((3, 16, 16), "cpu"), 5, 2, 2)
    out = run([5, 6])
    known = (1 - b["mask"]).bool().expand_as(out)
    assert torch.equal(out[known], b["image"][known])
    assert out.abs().max() <= 1
    assert torch.equal(run([5, 6]), out)


# ---------------------------------------------------------------- training
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    from diffusers import DDPMScheduler

    unet = H.course.ddpm_inpainting.widen_conv_in(tiny_unet(3), 7).train()
    loss_fn = partial(H.course.ddpm_inpainting.inpainting_loss,
                      alphas_cumprod=DDPMScheduler(num_train_timesteps=1000).alphas_cumprod,
                      lambda_mask=1.0, lambda_context=0.05)
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    b = batch(4)
    fixed = lambda: torch.Generator().manual_seed(0)               # the same t and eps every step
    with torch.no_grad():
        before = loss_fn(unet, b, fixed()).item()
    for _ in range(15):
        H.course.ddpm_inpainting.training_step(unet, b, loss_fn, opt, fixed(), max_grad_norm=1.0)
    with torch.no_grad():
        after = loss_fn(unet, b, fixed()).item()
    assert after < 0.7 * before, (before, after)


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n: int = 12):
        self.b = batch(n, seed=3)

    def __len__(self):
        return len(self.b["image"])

    def __getitem__(self, i):
        return {"image": self.b["image"][i], "mask": self.b["mask"][i]}


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    from diffusers import DDPMScheduler

    from helpers.study.models.training import train

    spec = Config(batch_size=4, lr=1e-3, weight_decay=0.01, num_epochs=2, max_steps=None, max_grad_norm=1.0,
                  mixed_precision="no", checkpoint_every=2, num_workers=0)
    loss_fn = partial(H.course.ddpm_inpainting.inpainting_loss,
                      alphas_cumprod=DDPMScheduler(num_train_timesteps=1000).alphas_cumprod,
                      lambda_mask=1.0, lambda_context=0.05)
    cpu = torch.device("cpu")
    # 1. uninterrupted: 2 epochs x 3 batches
    a = H.course.ddpm_inpainting.widen_conv_in(tiny_unet(3), 7)
    ra = train(a, loss_fn, _Toy(), spec, tmp_path / "a", seed=0, device=cpu, desc="a")
    # 2. killed after 4 steps, then started again from a fresh model: resumes from the checkpoint
    b = H.course.ddpm_inpainting.widen_conv_in(tiny_unet(3), 7)
    train(b, loss_fn, _Toy(), spec, tmp_path / "b", seed=0, device=cpu, max_steps=4, desc="b1")
    b2 = H.course.ddpm_inpainting.widen_conv_in(tiny_unet(3), 7)
    rb = train(b2, loss_fn, _Toy(), spec, tmp_path / "b", seed=0, device=cpu, desc="b2")
    assert ra.steps == rb.steps == 6 and rb.resumed_from == 4
    for (k, va), vb in zip(a.state_dict().items(), b2.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rb.history]


def test_checkpoint_folder_changes_with_the_run_not_with_its_length(smoke_cfg):
    fp = lambda cfg: H.study.models.runs.run_fingerprint(cfg, "ddpm", H.study.models.ddpm.TRAJECTORY_KEYS)
    base = fp(smoke_cfg)
    assert fp(H.load_config("smoke", {"ddpm.max_steps": 99})) == base
    assert fp(H.load_config("smoke", {"ddpm.num_inference_steps": 7})) == base
    assert fp(H.load_config("smoke", {"ddpm.lambda_context": 0.0})) != base


# ---------------------------------------------------------------- notebooks (executed by test_notebooks.py)
@pytest.mark.parametrize("name", ["02_ddpm_theory.ipynb", "03_ddpm_inpainting.ipynb"])
def test_notebook_is_committed_clean(name):
    nb = nbformat.read(str(ROOT / "notebooks" / name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source.strip() == "import helpers as H"
    assert "parameters" in code[1].metadata.get("tags", [])
    assert "slideshow" in nb.cells[0].metadata       # a cell without slide metadata continues the slide
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_seeded_noise_depends_on_the_image_seed_only():
    a = H.study.runtime.SeededNoise([11, 22, 33])((3, 4, 4), "cpu")
    b = H.study.runtime.SeededNoise([22])((3, 4, 4), torch.device("cpu"))
    assert a.shape == (3, 3, 4, 4) and torch.equal(a[1:2], b)          # same seed, same noise, any batch
    assert not torch.equal(a[0], a[1])


def test_an_edited_loss_trains_anew_the_same_code_reuses_the_run(prepared, capsys):
    """The issue's case: after a finished run, a loss edited to raise is run (not skipped as 'already
    finished'); the course's loss again reuses the first run, and each call says which run and why."""
    cfg, _ = prepared
    cfg.ddpm.max_steps, cfg.ddpm.val_every = 1, 0
    P, cpu = H.study.files.paths(cfg), torch.device("cpu")

    def fit(loss_fn):
        unet, sched = H.study.models.ddpm.build_inpainting_model(cfg, P)
        return H.study.models.ddpm.finetune(cfg, P, unet, sched, cpu, loss_fn=loss_fn)

    first = fit(H.course.ddpm_inpainting.inpainting_loss)
    assert first["steps"] == 1 and first["run"].startswith("new run in ddpm_inpaint/ckpt-")
    ns = {"__name__": "__main__"}
    exec("def inpainting_loss(model, batch, generator, **kw):\n    raise RuntimeError('edited')\n", ns)
    with pytest.raises(RuntimeError, match="edited"):
        fit(ns["inpainting_loss"])
    assert "the code differs from the previous run in ddpm_inpaint/ckpt-" in capsys.readouterr().out
    again = fit(H.course.ddpm_inpainting.inpainting_loss)
    assert again["reused"] and again["run"].startswith("reusing the run in ddpm_inpaint/ckpt-")


def test_validation_tiles_without_a_grid_drawer(tmp_path):
    """The command line's validator (no report layer): the grid rows as plain tiles, the mask white = hole."""
    import numpy as np
    from PIL import Image

    x, m = torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8)
    m[:, :, :4] = 1
    H.study.models.ddpm.save_tiles(H.study.models.ddpm.grid_rows(x * (1 - m), m, x, x), tmp_path / "v.png")
    tiles = np.asarray(Image.open(tmp_path / "v.png"))
    assert tiles.shape == (16, 32, 3)
    assert (tiles[:4, 8:16] == 255).all() and (tiles[4:8, 8:16] == 0).all()       # mask tile: hole white
