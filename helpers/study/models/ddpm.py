"""The DDPM side of the study: the pretrained unconditional U-Net (hub id, local folder, or the tiny
random model of the smoke preset, saved and loaded back through the same ``from_pretrained``), its
fine-tuning run (resume, checkpoints, validation grids) and the test-set predictions of the
fine-tuned 7-channel model and of RePaint. The algorithms themselves are taught in notebook 03 and
live in :mod:`helpers.course.ddpm_inpainting`; the functions here take them as arguments, so a
notebook runs the cells it just defined.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from helpers.course import ddpm_inpainting as course
from helpers.study.config import ROOT, Config
from helpers.study.evaluation.predict import method_meta, predict_test_set
from helpers.study.files import Paths, save_pretrained_atomic, shown_path
from helpers.study.models.runs import announce_run, code_hashes, run_fingerprint, run_inputs, run_settings
from helpers.study.runtime import SeededNoise, count_parameters, image_seeds, release_memory, resolve_dtype

log = logging.getLogger(__name__)


BASE_DIR = "ddpm_base"          # P.models/ddpm_base: the tiny unconditional model (smoke)


FINETUNED_DIR = "ddpm_inpaint"  # P.models/ddpm_inpaint: checkpoints and the fine-tuned U-Net


HOW_TO_GET = (
    "The full preset uses google/ddpm-celebahq-256 (Ho et al. 2020, 256x256 faces). Either run "
    "once with internet access (the weights are then cached under {cache}), or download them on "
    "a machine that has it:\n"
    "    huggingface-cli download google/ddpm-celebahq-256 --local-dir <folder>   (or: hf download ...)\n"
    "copy <folder> here and set ddpm.pretrained_id: <folder> in configs/{preset}.yaml "
    "(or overrides={{'ddpm.pretrained_id': '<folder>'}})."
)


# ====================================================================== 4. models: load, build, widen
def published_unet_config() -> dict:
    """The UNet2DModel config of google/ddpm-celebahq-256 (its config.json on the hub): 6
    resolution levels 256 -> 8, self-attention at 16x16, about 114M parameters. Used to build the
    full-size architecture with random weights (benchmark, offline)."""
    return {
        "sample_size": 256, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
        "time_embedding_type": "positional", "freq_shift": 1, "flip_sin_to_cos": False,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                             "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "block_out_channels": [128, 128, 256, 256, 512, 512], "layers_per_block": 2,
        "mid_block_scale_factor": 1, "downsample_padding": 0, "act_fn": "silu",
        "attention_head_dim": None, "norm_num_groups": 32, "norm_eps": 1e-6,
    }


def published_scheduler_config() -> dict:
    """The DDPMScheduler config shipped with google/ddpm-celebahq-256."""
    return {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
            "variance_type": "fixed_small", "clip_sample": True}


def build_inpainting_unet(config: dict | None = None, in_channels: int = 7):
    """A randomly initialised UNet2DModel with ``in_channels`` inputs (default: the full-size
    architecture of :func:`published_unet_config`). For timing and memory, not for results."""
    from diffusers import UNet2DModel

    return UNet2DModel(**{**(config or published_unet_config()), "in_channels": in_channels})


def local_path(pretrained_id: str) -> Path | None:
    """A local folder for ``pretrained_id`` (absolute, relative to cwd or to the repo), or None if
    it looks like a hub id. A path-like id that does not exist is an error (no hub lookup)."""
    p = Path(os.path.expanduser(pretrained_id))
    for cand in (p, ROOT / p):
        if cand.exists():
            return cand
    if p.is_absolute() or pretrained_id.startswith((".", "~")) or len(p.parts) > 2:
        raise FileNotFoundError(f"ddpm.pretrained_id = {pretrained_id!r}: no such folder")
    return None


def _from_pretrained(cls, source: str, cache_dir: Path, subfolder: str, filename: str):
    """``cls.from_pretrained`` on a hub id or a folder. google/ddpm-celebahq-256 keeps its files
    at the root; a local folder may also hold them in ``subfolder`` (a saved pipeline's layout)."""
    p = Path(source)
    sub = subfolder if p.is_dir() and not (p / filename).is_file() and (p / subfolder / filename).is_file() else None
    return cls.from_pretrained(source, subfolder=sub, cache_dir=str(cache_dir))


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _tiny_base(cfg: Config, P: Paths) -> Path:
    """Smoke: build UNet2DModel(**ddpm.tiny_config) with seeded random weights and a DDPMScheduler
    from the preset, and save both to P.models/ddpm_base (to be loaded back like a hub repo)."""
    from accelerate import PartialState
    from diffusers import UNet2DModel

    if not cfg.ddpm.get("tiny_config"):
        raise ValueError("ddpm.pretrained_id is null and ddpm.tiny_config is empty: set one of them")
    folder = P.models / BASE_DIR
    state = PartialState()
    with state.main_process_first():            # several processes: the main one writes, the others read
        if state.is_main_process:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                unet = UNet2DModel(**{"in_channels": 3, "out_channels": 3, **cfg.ddpm.tiny_config.to_dict()})
            save_pretrained_atomic(unet, folder)
            _scheduler_from_cfg(cfg).save_pretrained(str(folder))
    return folder


def _source(cfg: Config, P: Paths) -> str:
    pid = cfg.ddpm.pretrained_id
    if not pid:
        return str(_tiny_base(cfg, P))
    try:
        local = local_path(pid)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}.\n" + HOW_TO_GET.format(cache=P.cache / "hub", preset=cfg.preset)) from None
    return str(local) if local is not None else pid


def load_unconditional_unet(cfg: Config, P: Paths):
    """The pretrained unconditional 3-channel U-Net: ``UNet2DModel.from_pretrained(ddpm.pretrained_id)``
    (hub id, cached in data/cache/hub, or a local folder). With ``pretrained_id: null`` (smoke), a
    tiny random model is saved to P.models/ddpm_base and loaded back through the same call."""
    from diffusers import UNet2DModel

    source = _source(cfg, P)
    try:
        unet = _from_pretrained(UNet2DModel, source, P.cache / "hub", "unet", "config.json")
    except Exception as e:  # diffusers/huggingface_hub raise OSError, ValueError, HTTP errors...
        raise FileNotFoundError(
            f"could not load the DDPM U-Net from {source!r} ({type(e).__name__}: {_first_line(e)}).\n"
            + HOW_TO_GET.format(cache=P.cache / "hub", preset=cfg.preset)) from e
    unet.register_to_config(_name_or_path=shown_path(source, P.root))   # saved weights name no machine path
    unet.eval()
    return unet


def _scheduler_from_cfg(cfg: Config):
    from diffusers import DDPMScheduler

    schedule = {"cosine": "squaredcos_cap_v2"}.get(cfg.ddpm.beta_schedule, cfg.ddpm.beta_schedule)
    kw = {**published_scheduler_config(), "num_train_timesteps": cfg.ddpm.num_train_timesteps,
          "beta_schedule": schedule}
    return DDPMScheduler(**kw)


def load_noise_scheduler(cfg: Config, P: Paths):
    """The training (DDPM) scheduler: the pretrained repo's scheduler config when it has one,
    else a DDPMScheduler built from ddpm.num_train_timesteps and ddpm.beta_schedule."""
    from diffusers import DDPMScheduler

    source = _source(cfg, P) if cfg.ddpm.pretrained_id else str(P.models / BASE_DIR)
    try:
        sched = _from_pretrained(DDPMScheduler, source, P.cache / "hub", "scheduler", "scheduler_config.json")
    except Exception as e:
        log.warning("no scheduler config in %s (%s): building DDPMScheduler from the preset", source, _first_line(e))
        return _scheduler_from_cfg(cfg)
    if sched.config.num_train_timesteps != cfg.ddpm.num_train_timesteps:
        log.warning("the pretrained scheduler has %d timesteps, the preset says %d: using the pretrained one",
                    sched.config.num_train_timesteps, cfg.ddpm.num_train_timesteps)
    return sched


def weights_description(cfg: Config, P: Paths) -> str:
    """Which base weights a preset uses, in words (for meta.json and the notebooks)."""
    if cfg.ddpm.pretrained_id:
        return f"pretrained unconditional DDPM {cfg.ddpm.pretrained_id}"
    return (f"TINY RANDOMLY INITIALISED UNet2DModel (ddpm.tiny_config, seed {cfg.seed}), saved to "
            f"{(P.models / BASE_DIR).relative_to(P.root)} and loaded back with from_pretrained: "
            f"no pretrained weights (smoke)")


def build_inpainting_model(cfg: Config, P: Paths):
    """(7-channel U-Net widened from the pretrained unconditional one, DDPM scheduler)."""
    base = load_unconditional_unet(cfg, P)
    return course.widen_conv_in(base, cfg.ddpm.in_channels), load_noise_scheduler(cfg, P)


# the ddpm keys that change the fine-tuning trajectory (not its length: a longer run resumes)
TRAJECTORY_KEYS = ("pretrained_id", "tiny_config", "in_channels", "num_train_timesteps", "beta_schedule", "batch_size",
                   "lr", "weight_decay", "max_grad_norm", "lambda_mask", "lambda_context", "mixed_precision")


def checkpoint_dir(cfg: Config, P: Paths, code: dict[str, str] | None = None,
                   inputs: dict[str, str] | None = None) -> Path:
    """P.models/ddpm_inpaint/ckpt-<fingerprint>: a changed setting, or changed code (``code``: the
    :func:`~helpers.study.models.runs.code_hashes` of the loss and step; default: the course's), starts
    a new run, never resumes a checkpoint of a different one; ``inputs``: :func:`inputs_of`, when the caller has it."""
    code = code or code_hashes(loss_fn=course.inpainting_loss, step_fn=course.training_step)
    fp = run_fingerprint(cfg, "ddpm", TRAJECTORY_KEYS, code=code, inputs=inputs or inputs_of(cfg, P))
    return P.models / FINETUNED_DIR / f"ckpt-{fp}"


def inputs_of(cfg: Config, P: Paths) -> dict[str, str]:
    """The prepared data and the base weights a fine-tuning run reads (:func:`~.runs.run_inputs`);
    smoke's tiny base is made from ddpm.tiny_config and the seed, both in the fingerprint already."""
    return run_inputs(P.data, _source(cfg, P) if cfg.ddpm.pretrained_id else "ddpm.tiny_config")


def finetuned_dir(cfg: Config, P: Paths) -> Path:
    return P.models / FINETUNED_DIR / "unet"


def make_validator(cfg: Config, P: Paths, unet, alphas_cumprod: torch.Tensor, device: torch.device,
                   inpaint_fn: Callable = course.ddim_inpaint, draw_grid: Callable | None = None):
    """on_validate(step) for the training loop: inpaint a fixed validation batch with ``inpaint_fn``
    (DDIM: a notebook passes its own) and save the grid P.figures/03_val_step<step>.png (main process
    only), drawn by ``draw_grid(rows, col_titles=, path=, title=)`` (notebook 03 passes
    helpers.report.figures.image_grid), or without one as plain tiles (:func:`save_tiles`)."""
    from accelerate import PartialState

    from helpers.study.data.dataset import InpaintDataset, collate

    ds = InpaintDataset(cfg, "val")
    batch = collate([ds[i] for i in range(min(len(ds), 4))])
    x, m = batch["image"], batch["mask"]
    sample = ddim_sampler(cfg, unet, alphas_cumprod, device, inpaint_fn)

    def on_validate(step: int) -> None:
        if not PartialState().is_main_process:
            return
        pred = sample(x, m, image_seeds(cfg.seed, batch["name"]), batch["name"]).cpu()
        rows, path = grid_rows(course.masked_image(x, m), m, pred, x), P.figures / f"03_val_step{step:06d}.png"
        if draw_grid is None:
            save_tiles(rows, path)
            return
        import matplotlib.pyplot as plt

        plt.close(draw_grid(rows, col_titles=GRID_TITLES, path=path, title=f"validation, step {step}",
                            preset=cfg.preset))

    return on_validate


def save_tiles(rows: list[list], path: Path) -> None:
    """The images of ``rows`` ([-1, 1]; a 1-channel mask shown grey) tiled into one PNG, without titles."""
    from helpers.study.files import save_png

    rgb = lambda im: im.expand(3, -1, -1) * 2 - 1 if im.shape[0] == 1 else im  # noqa: E731  mask {0,1} -> [-1,1]
    save_png(torch.cat([torch.cat([rgb(im.float().cpu()) for im in row], dim=2) for row in rows], dim=1), path)


def finetune(cfg: Config, P: Paths, unet, noise_scheduler, device: torch.device,
             on_validate: Callable[[int], None] | None = None, max_steps: int | None = None,
             loss_fn: Callable = course.inpainting_loss, step_fn: Callable = course.training_step) -> dict:
    """Fine-tune the 7-channel U-Net: ``loss_fn`` (the hole-weighted eps-loss) and ``step_fn`` (one
    training step) in the study's loop (AdamW, clipping, mixed precision, checkpoints, exact resume);
    save it to P.models/ddpm_inpaint/unet and return the run's statistics. A finished run of the same
    settings and the same code (:func:`~helpers.study.models.runs.code_fingerprint`) is loaded, not trained
    again; an edited ``loss_fn`` or ``step_fn`` trains anew in its own folder (the printed line says which)."""
    from accelerate import PartialState

    from helpers.study.data.dataset import InpaintDataset, collate
    from helpers.study.evaluation.perf import set_attention
    from helpers.study.models.training import finish_run, train

    # 1. data, the loss with the preset's weights, speed switches (no torch.compile: checkpoints need plain names)
    d = cfg.ddpm
    loss = partial(loss_fn, alphas_cumprod=noise_scheduler.alphas_cumprod, lambda_mask=d.lambda_mask,
                   lambda_context=d.lambda_context)
    set_attention(unet, cfg.perf.get("sdpa", True))
    if cfg.perf.get("channels_last") and device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    # 2. the run's folder, named by the settings and the code that runs (an edited cell starts anew); the shared loop
    code = code_hashes(loss_fn=loss_fn, step_fn=step_fn)
    inputs = inputs_of(cfg, P)
    ckpt = checkpoint_dir(cfg, P, code, inputs)
    note = announce_run(ckpt, run_settings(cfg, "ddpm", TRAJECTORY_KEYS), code, inputs)
    result = train(unet, loss, InpaintDataset(cfg, "train"), d, ckpt, cfg.seed, device, collate_fn=collate,
                   fused_adamw=cfg.perf.get("fused_adamw", True), on_validate=on_validate,
                   desc="DDPM fine-tuning", max_steps=max_steps, step_fn=step_fn)
    release_memory(device)      # the optimizer state leaves the GPU before sampling measures its peak
    # 3. statistics of this call (or of the call that did the steps), the weights in diffusers' format
    stats = finish_run(result, ckpt, max_steps)
    if PartialState().is_main_process:
        save_pretrained_atomic(unet, finetuned_dir(cfg, P))
    stats["weights_path"] = str(finetuned_dir(cfg, P).relative_to(P.root))
    stats["run"] = note
    return stats


def load_finetuned(cfg: Config, P: Paths):
    """The fine-tuned 7-channel U-Net saved by :func:`finetune`."""
    from diffusers import UNet2DModel

    folder = finetuned_dir(cfg, P)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no fine-tuned DDPM in {folder}: run notebook 03 (or "
                                f"`python -m helpers.study train ddpm --preset {cfg.preset}`) first")
    return UNet2DModel.from_pretrained(str(folder)).eval()


def ddim_sampler(cfg: Config, unet, alphas_cumprod: torch.Tensor, device: torch.device,
                 inpaint_fn: Callable = course.ddim_inpaint) -> Callable:
    """fn(images, masks, seeds, names) for the prediction loop: x_T seeded per image, then
    ``inpaint_fn`` (DDIM, or DPM-Solver++ with ``perf.sampler: dpm``) with the preset's steps and eta."""
    d = cfg.ddpm
    dtype = resolve_dtype(d.mixed_precision, device)

    def fn(images, masks, seeds, names):
        noise = SeededNoise(seeds)
        x_T = noise(images.shape[1:], device)
        return inpaint_fn(unet, alphas_cumprod, course.masked_image(images, masks).to(device), masks.to(device),
                          x_T, d.num_inference_steps, d.eta, lambda: noise(images.shape[1:], device),
                          cfg.perf.get("sampler", "ddim"), dtype, known_from_q=d.known_from_q)

    return fn


def repaint_sampler(cfg: Config, unet, alphas_cumprod: torch.Tensor, device: torch.device,
                    inpaint_fn: Callable = course.repaint_inpaint) -> Callable:
    """fn(images, masks, seeds, names) running RePaint with the unconditional model."""
    r = cfg.ddpm.repaint
    dtype = resolve_dtype(cfg.ddpm.mixed_precision, device)

    def fn(images, masks, seeds, names):
        noise = SeededNoise(seeds)
        return inpaint_fn(unet, alphas_cumprod, images.to(device), masks.to(device),
                          lambda: noise(images.shape[1:], device), r.num_inference_steps, r.jump_length,
                          r.jump_n_sample, dtype)

    return fn


def save_finetuned_predictions(cfg: Config, P: Paths, unet, alphas_cumprod: torch.Tensor, device: torch.device,
                               train_stats: dict, inpaint_fn: Callable = course.ddim_inpaint):
    """The whole test set inpainted by the fine-tuned model, written as method ``ddpm_finetuned``.
    Returns (predictions, test set, meta)."""
    d = cfg.ddpm
    trainable, total = count_parameters(unet)
    smoke = "" if d.pretrained_id else "; SMOKE: tiny random model, barely trained, outputs are noise-like"
    meta = method_meta(
        "ddpm_finetuned", f"{weights_description(cfg, P)}; first conv widened to {d.in_channels} channels and "
        f"fine-tuned here for {train_stats.get('steps')} steps; saved in {finetuned_dir(cfg, P).relative_to(P.root)}",
        device, {}, trainable, total, train_stats,
        f"known pixels pasted back; training: {train_stats.get('note', '')}{smoke}",
        sampler=cfg.perf.get("sampler", "ddim"), num_inference_steps=d.num_inference_steps, eta=d.eta,
        mixed_precision=str(resolve_dtype(d.mixed_precision, device)))
    fn = ddim_sampler(cfg, unet, alphas_cumprod, device, inpaint_fn)
    return predict_test_set(cfg, "ddpm_finetuned", fn, d.sample_batch_size, device, meta,
                            desc=f"{meta['sampler'].upper()} inpainting")


def save_repaint_predictions(cfg: Config, P: Paths, unet, alphas_cumprod: torch.Tensor, device: torch.device,
                             inpaint_fn: Callable = course.repaint_inpaint):
    """RePaint with the pretrained unconditional model on the first ``ddpm.repaint.max_images`` test
    images, written as method ``ddpm_repaint``. Returns (predictions, test subset, meta)."""
    r = cfg.ddpm.repaint
    smoke = "" if cfg.ddpm.pretrained_id else "; SMOKE: tiny random model, outputs are noise-like"
    meta = method_meta(
        "ddpm_repaint", f"{weights_description(cfg, P)} (unconditional, 3 channels, not fine-tuned)", device, {},
        0, count_parameters(unet)[1], None,
        f"training-free RePaint baseline, possibly on a subset: compare with other methods on its images only{smoke}",
        num_inference_steps=r.num_inference_steps, jump_length=r.jump_length, jump_n_sample=r.jump_n_sample,
        model_calls_per_image=course.count_model_calls(r.num_inference_steps, r.jump_length, r.jump_n_sample))
    fn = repaint_sampler(cfg, unet, alphas_cumprod, device, inpaint_fn)
    preds, test, meta = predict_test_set(cfg, "ddpm_repaint", fn, cfg.ddpm.sample_batch_size, device, meta,
                                         max_images=r.max_images, desc="RePaint")
    return preds, test, meta


def perf_rows(train_stats: dict, finetuned_meta: dict, repaint_meta: dict | None = None) -> list[dict]:
    """Trainable parameters, images/s and peak memory of training and sampling (notebook 03)."""
    gib = lambda b: None if b is None else round(b / 2**30, 3)
    rows = [{"stage": "fine-tuning (train)", "trainable_params": train_stats.get("trainable_params"),
             "total_params": train_stats.get("total_params"), "images_per_s": train_stats.get("images_per_s"),
             "peak_memory_GiB": gib(train_stats.get("peak_memory_bytes")), "seconds": train_stats.get("seconds"),
             "detail": f"{train_stats.get('steps')} steps"},
            {"stage": f"{finetuned_meta['sampler'].upper()} inpainting (fine-tuned)",
             "trainable_params": finetuned_meta["trainable_params"],
             "total_params": finetuned_meta["total_params"], "images_per_s": finetuned_meta["images_per_s"],
             "peak_memory_GiB": gib(finetuned_meta["peak_memory_bytes"]), "seconds": finetuned_meta["sample_seconds"],
             "detail": f"{finetuned_meta['num_inference_steps']} steps, {finetuned_meta['n_images']} images"}]
    if repaint_meta is not None:
        rows.append({"stage": "RePaint (training-free)", "trainable_params": 0,
                     "total_params": repaint_meta["total_params"], "images_per_s": repaint_meta["images_per_s"],
                     "peak_memory_GiB": gib(repaint_meta["peak_memory_bytes"]),
                     "seconds": repaint_meta["sample_seconds"],
                     "detail": f"{repaint_meta['model_calls_per_image']} U-Net calls, "
                               f"{repaint_meta['n_images']} images"})
    return rows


# ====================================================================== 8. figures
GRID_TITLES = ["masked input", "mask (white = hole)", "prediction", "ground truth"]


def grid_rows(x_masked, mask, pred, target, n: int | None = None) -> list[list]:
    """Rows (masked input | mask | prediction | ground truth) for helpers.report.figures.image_grid."""
    n = len(pred) if n is None else min(n, len(pred))
    return [[x_masked[i], mask[i], pred[i], target[i]] for i in range(n)]
