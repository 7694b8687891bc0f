"""The LoRA side of the study: the LoRA run (captions, resume, its own folder per run), saving and
loading LoRA weights, and the test-set predictions of SD zero-shot and SD + LoRA (the pipeline itself
is :mod:`helpers.study.models.sd_pipeline`). The algorithms are taught in notebook 04 and live in
:mod:`helpers.course.sd_inpainting`; the functions here take them as arguments."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from helpers.course import sd_inpainting as course
from helpers.course.ddpm_inpainting import training_step
from helpers.course.sd_inpainting import (
    encode_prompts,
    latent_factor,
)
from helpers.study.config import Config
from helpers.study.files import load_json, paths, shown_path
from helpers.study.models.runs import announce_run, code_hashes, run_fingerprint, run_inputs, run_settings
from helpers.study.models.sd_pipeline import quiet_library_output
from helpers.study.runtime import (
    SeededNoise,
    count_parameters,
    image_seeds,
    progress,
)

log = logging.getLogger(__name__)


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"    # the file name diffusers' load_lora_weights looks for


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The U-Net's LoRA tensors in diffusers' key format (what ``load_lora_weights`` reads)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora(unet, folder: Path, is_main_process: bool = True) -> Path:
    """Save the LoRA weights (+ their r / alpha as metadata) as <folder>/pytorch_lora_weights.safetensors."""
    from diffusers import StableDiffusionInpaintPipeline

    folder = Path(folder)
    if is_main_process:     # diffusers' own is_main_process flag does not stop the other processes writing
        StableDiffusionInpaintPipeline.save_lora_weights(
            folder, unet_lora_layers=lora_state_dict(unet), is_main_process=True, safe_serialization=True,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    return folder / LORA_WEIGHTS


def load_lora(pipe, path: Path, adapter_name: str = "sd_lora"):
    """Load saved LoRA weights (a folder or the .safetensors file) into a pipeline, for inference."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LoRA weights {path} not found: "
                                f"train them in notebook 04 (helpers.study.models.sd.train_lora)")
    folder, name = (path.parent, path.name) if path.is_file() else (path, LORA_WEIGHTS)
    quiet_library_output()
    pipe.load_lora_weights(str(folder), weight_name=name, adapter_name=adapter_name)
    # the injected LoRA layers arrive in training mode (their dropout active): back to eval
    pipe.unet.eval()
    pipe.lora_path = str(folder / name)
    return pipe


def make_loss_fn(pipe, cfg: Config, captions: dict[str, str], loss_fn: Callable = course.lora_inpaint_loss) -> Callable:
    """``loss_fn`` (the course's LoRA loss) bound to a pipeline: each distinct caption (and "") encoded once."""
    prompts = [""] + sorted(set(captions.values()))
    store = pipe.device if len(prompts) <= 512 else torch.device("cpu")   # a large caption set waits on the CPU
    embeds = course.encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, device=store)
    if pipe.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError("the LoRA loss predicts the noise (epsilon); this checkpoint's scheduler says "
                         f"{pipe.scheduler.config.prediction_type!r}")
    return partial(loss_fn, vae=pipe.vae, alphas_cumprod=pipe.scheduler.alphas_cumprod.float(), text_embeds=embeds,
                   captions=captions, prompt_dropout=cfg.sd.prompt_dropout, resolution=cfg.sd.resolution)


# the sd keys that change the LoRA training trajectory; inference settings (num_inference_steps,
# guidance_scale, inference_batch_size), the run's length (num_epochs, max_steps: the learning rate is
# constant, so a longer run is the shorter one continued) and bookkeeping (checkpoint_every,
# num_workers, gradient_checkpointing) are left out: changing them never retrains from scratch
TRAJECTORY_KEYS = ("pretrained_id", "tiny", "resolution", "lora", "batch_size", "lr", "weight_decay",
                   "max_grad_norm", "mixed_precision", "prompt_dropout")


def lora_run_dir(cfg: Config, source: str, captions: dict[str, str] | None = None, root: Path | None = None,
                 variant: dict | None = None, code: dict[str, str] | None = None, extra: dict | None = None) -> Path:
    """reports/<preset>/models/sd_lora/ckpt-<fingerprint>/: checkpoint, finished LoRA and stats of one run.
    A PEFT ablation ``variant`` (helpers.study.models.peft_variants) runs in models/sd_peft/<name>/ckpt-<fingerprint>/,
    the variant's settings in the fingerprint. ``code``: :func:`~helpers.study.models.runs.code_hashes` of the
    attach, loss and step functions (default: the course's), so that edited code starts a new run; ``extra``:
    :func:`_run_extra`'s result, when the caller has it already."""
    folder = paths(cfg, root).models / "sd_lora"
    if variant is not None:
        folder = paths(cfg, root).models / "sd_peft" / variant["name"]
    extra = {**(extra or _run_extra(cfg, root, source, captions, variant)), "code": code or default_code(variant)}
    return folder / f"ckpt-{run_fingerprint(cfg, 'sd', TRAJECTORY_KEYS, **extra)}"


def _run_extra(cfg: Config, root: Path | None, source: str, captions: dict[str, str] | None,
               variant: dict | None) -> dict:
    """The settings of a LoRA run beyond the preset's sd keys: the prepared data and the base weights by
    content (:func:`~helpers.study.models.runs.run_inputs`), the captions' text, the PEFT variant."""
    extra = {"inputs": run_inputs(paths(cfg, root).data, source)}
    if captions is not None:           # the captions' text, when given
        extra["captions"] = hashlib.sha256(json.dumps(sorted(captions.items())).encode()).hexdigest()
    if variant is not None:
        extra["variant"] = variant
    return extra


def default_code(variant: dict | None = None) -> dict[str, str]:
    """The code hashes of a run with the course's functions (attach: add_lora, or attach_adapter for a variant)."""
    from helpers.course.peft_variants import attach_adapter

    return code_hashes(attach_fn=course.add_lora if variant is None else attach_adapter,
                       loss_fn=course.lora_inpaint_loss, step_fn=training_step)


def find_lora(cfg: Config, root: Path | None = None) -> Path | None:
    """The LoRA file the series' SD + LoRA predictions were made with (their meta.json names it);
    without predictions, the most recently finished run under models/sd_lora/; None when there is
    none. Used by the demo (helpers.apps.demo), which has no training run of its own to fingerprint."""
    P = paths(cfg, root)
    meta = P.predictions("sd_lora") / "meta.json"
    if meta.is_file():
        named = load_json(meta).get("lora_weights")
        if named and (P.root / named).is_file():          # relative to the root (older runs: absolute)
            return P.root / named
    finished = sorted((P.models / "sd_lora").glob(f"ckpt-*/{LORA_WEIGHTS}"), key=lambda p: p.stat().st_mtime)
    return finished[-1] if finished else None


def lora_info(pipe, lora: Config) -> dict:
    """Trainable (LoRA) and frozen parameter counts of a pipeline whose U-Net carries an adapter."""
    trainable, unet_total = count_parameters(pipe.unet)
    everything = unet_total + sum(count_parameters(m)[1] for m in (pipe.vae, pipe.text_encoder))
    return {"trainable_params": trainable, "unet_params": unet_total, "total_params": everything,
            "fraction_of_unet": trainable / unet_total, "fraction_of_all": trainable / everything, "lora": dict(lora)}


def train_lora(cfg: Config, pipe, captions: dict[str, str] | None = None, max_steps: int | None = None,
               root: Path | None = None, attach_fn: Callable = course.add_lora,
               loss_fn: Callable = course.lora_inpaint_loss, step_fn: Callable | None = None,
               variant: dict | None = None, save_fn: Callable | None = None) -> dict:
    """Attach LoRA (``attach_fn``) to the frozen U-Net, train it with ``loss_fn`` in the shared loop,
    save it. Each run has its own folder (:func:`lora_run_dir`: last.pt, the LoRA file,
    train_stats.json): a finished run is reused, a longer one resumes. Without ``captions`` the cached
    ones are used (fallback captions refused unless ``captions.allow_fallback_for_lora``).

    ``variant``: another PEFT method of the ablation (helpers.study.models.peft_variants.resolve): attached as
    ``attach_fn(pipe, variant)`` from ``cfg.seed``, saved as ``save_fn(unet, folder, is_main_process=...)``
    (the ablation passes its own, peft's state dict; default: :func:`save_lora`), its own run folder.
    Data, captions, prompt dropout, steps, learning rate and seed are the study's LoRA's."""
    from accelerate import PartialState

    from helpers.study.data.captions import check_captions_for_lora, make_captions
    from helpers.study.data.dataset import InpaintDataset, collate
    from helpers.study.evaluation.perf import set_attention
    from helpers.study.models.training import finish_run, train

    # 1. LoRA on the frozen U-Net; the speed switches that apply to training
    lo = cfg.sd.lora
    torch.manual_seed(cfg.seed)                       # the adapter's initial values (A): the same in every run
    if variant is None:
        attach_fn(pipe, lo.r, lo.alpha, lo.dropout, lo.target_modules)
    else:
        attach_fn(pipe, variant)
    if cfg.sd.get("gradient_checkpointing"):
        pipe.unet.enable_gradient_checkpointing()
    for m in (pipe.unet, pipe.vae):
        set_attention(m, cfg.perf.get("sdpa", True))
    if cfg.perf.get("channels_last") and pipe.device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
    # 2. captions -> embeddings, once; the loss of one step
    status = "captions given by the caller"
    if captions is None:
        cached = make_captions(cfg, root=root)
        check_captions_for_lora(cfg, cached)
        captions, status = cached["captions"], cached["status"]
    # 3. the shared loop (several processes, mixed precision, checkpoints, exact resume)
    dataset = InpaintDataset(cfg, "train", root)
    source = getattr(pipe, "source", "")
    code = code_hashes(attach_fn=attach_fn, loss_fn=loss_fn, step_fn=step_fn or training_step)
    extra = _run_extra(cfg, root, source, captions, variant)
    ckpt_dir = lora_run_dir(cfg, source, captions, root, variant, code, extra)
    inputs = extra.pop("inputs")                    # compared apart from the settings: the note names what changed
    note = announce_run(ckpt_dir, run_settings(cfg, "sd", TRAJECTORY_KEYS, **extra), code, inputs)
    result = train(pipe.unet, make_loss_fn(pipe, cfg, captions, loss_fn), dataset, cfg.sd, ckpt_dir, cfg.seed,
                   pipe.device, collate_fn=collate, fused_adamw=cfg.perf.get("fused_adamw", True),
                   desc="LoRA training", max_steps=max_steps, step_fn=step_fn)
    pipe.unet.eval()
    # 4. the LoRA weights in diffusers' format; the run's numbers beside them
    lora_path = (save_fn or save_lora)(pipe.unet, ckpt_dir, is_main_process=PartialState().is_main_process)
    extra = {**lora_info(pipe, variant or lo), "base": shown_path(source) if source else None,   # never a machine path
             "device": str(pipe.device), "train_images": len(dataset), "captions_status": status}
    stats = finish_run(result, ckpt_dir, max_steps, extra)
    stats["lora_path"], stats["run"] = str(lora_path), note
    return stats


def predict(cfg: Config, pipe, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence[str],
            seeds: Sequence[int] | None = None, desc: str = "SD inpainting",
            num_inference_steps: int | None = None, leave: bool = True,
            inpaint_fn: Callable = course.inpaint) -> torch.Tensor:
    """:func:`helpers.course.sd_inpainting.inpaint` (or ``inpaint_fn``) over a set in batches of
    ``sd.inference_batch_size``, with the preset's steps
    (or ``num_inference_steps``), guidance and sampler. Image ``i`` draws its noise from ``seeds[i]``
    (default: its index; the test set passes helpers.study.files.image_seeds of the names).
    ``leave=False``: a transient bar (a warm-up), silent in runner-executed notebooks."""
    from helpers.study.evaluation.perf import make_sampler, optimize_model, set_attention

    sd, device = cfg.sd, pipe.device
    seeds = list(range(len(images))) if seeds is None else list(seeds)
    # 1. speed switches: SDPA, channels_last, torch.compile (CUDA); the sampler of cfg.perf
    pipe.unet.eval()
    unet = getattr(pipe, "fast_unet", None)           # compiled once per pipeline, reused by later calls
    if unet is None:
        unet = pipe.fast_unet = optimize_model(pipe.unet, cfg.perf, device)
    set_attention(pipe.vae, cfg.perf.get("sdpa", True))
    scheduler = make_sampler(cfg.perf.get("sampler", "ddim"), pipe.scheduler.config)
    # 2. each distinct prompt once, and the empty prompt for guidance
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""] + list(prompts), device=device)
    out = []
    for start in progress(range(0, len(images), sd.inference_batch_size), desc=desc, leave=leave):
        sl = slice(start, start + sd.inference_batch_size)
        cond = torch.stack([embeds[p] for p in prompts[sl]])
        out.append(inpaint_fn(unet, pipe.vae, scheduler, images[sl], masks[sl], cond, embeds[""][None],
                           SeededNoise(seeds[sl]),
                           sd.resolution, num_inference_steps or sd.num_inference_steps, sd.guidance_scale,
                           cfg.perf.get("batched_vae_decode", True), known_from_q=sd.known_from_q).cpu())
    return torch.cat(out)


def guidance_sweep(cfg_at: Callable[[float], Config], pipe, images: torch.Tensor, masks: torch.Tensor,
                   names: Sequence[str], prompts: Sequence[str], seeds: Sequence[int], scales: Sequence[float],
                   reader, labels: Sequence[int],
                   inpaint_fn: Callable = course.inpaint) -> tuple[list[dict], list[dict]]:
    """Notebook 04's sweep on labelled digits: at each scale (``cfg_at(s)``: the preset with only the scale
    changed) the LoRA pipeline completes every image, timed, then the same pipeline with its adapter off (the
    zero-shot model) completes them too. ``reader`` (notebook 05's classifier) says whether each completion is
    still its digit; hole PSNR on the composited completion. Returns the per-scale rows and the per-image rows
    that :func:`helpers.study.evaluation.digit_accuracy.guidance_sweep_summary` reads."""
    import time

    from helpers.course.metrics import pixel_scores
    from helpers.study.data.dataset import composite
    from helpers.study.evaluation.digit_accuracy import correct
    from helpers.study.models.digits import wilson_ci

    def complete(cfg_s, desc):                        # -> per image: right digit?, hole PSNR
        pred = predict(cfg_s, pipe, images, masks, prompts, seeds, desc=desc, leave=False, inpaint_fn=inpaint_fn)
        return correct(reader, pred, labels), pixel_scores(composite(pred, images, masks), images, masks)["psnr_hole"]

    rows, per_image = [], []
    for s in scales:
        cfg_s = cfg_at(s)
        start = time.perf_counter()
        ok, db = complete(cfg_s, f"s = {s:g}")
        sec = (time.perf_counter() - start) / len(images)
        pipe.unet.disable_adapters()                  # the zero-shot model: the same pipeline, adapter off
        try:
            ok0, db0 = complete(cfg_s, f"s = {s:g}, zero-shot")
        finally:
            pipe.unet.enable_adapters()
        lo, hi = wilson_ci(int(ok.sum()), len(ok))
        rows.append({"guidance s": s, "accuracy": ok.mean(), "95% low": lo, "95% high": hi, "s/image": sec,
                     "zero-shot accuracy": ok0.mean()})
        for method, c, d in ((f"s={s:g}", ok, db), (f"zero-shot s={s:g}", ok0, db0)):
            per_image += [{"method": method, "name": n, "correct": float(a), "psnr_hole": float(b)}
                          for n, a, b in zip(names, c, d.tolist())]
    return rows, per_image


def predict_test_set(cfg: Config, pipe, method: str, train_stats: dict | None = None, root: Path | None = None,
                     limit: int | None = None, inpaint_fn: Callable = course.inpaint) -> dict:
    """Complete the frozen test set with ``pipe`` (its caption as the prompt) and save it as ``method``
    (``sd_zeroshot`` or ``sd_lora``) through the study's one prediction loop. Returns the meta."""
    from helpers.study.data.captions import describe, make_captions
    from helpers.study.data.dataset import load_test_set
    from helpers.study.evaluation.predict import method_meta
    from helpers.study.evaluation.predict import predict_test_set as predict_set

    caps = make_captions(cfg, root=root)
    prompt = lambda name: caps["captions"].get(name, cfg.captions.fallback_prompt)
    # 1. one short warm-up batch (kernel selection, torch.compile) outside the timing
    test, bs = load_test_set(cfg, root), cfg.sd.inference_batch_size
    predict(cfg, pipe, test["image"][:bs], test["mask"][:bs], [prompt(n) for n in test["name"][:bs]],
            image_seeds(cfg.seed, test["name"][:bs]), desc="warm-up", num_inference_steps=2, leave=False,
            inpaint_fn=inpaint_fn)
    # 2. the timed run: prompt encoding included, batches of sd.inference_batch_size
    fn = lambda x, m, seeds, names: predict(cfg, pipe, x, m, [prompt(n) for n in names], seeds, desc=method,
                                            leave=False, inpaint_fn=inpaint_fn)
    # weights named as printed (relative to the run's root; find_lora resolves them against it)
    P = paths(cfg, root)
    lora, base = getattr(pipe, "lora_path", None), P.shown(getattr(pipe, "source", "?"))
    lora = P.shown(lora) if lora else None
    adapter = getattr(pipe, "adapter_label", "LoRA")      # a PEFT ablation variant names itself
    tiny = " (tiny random pipeline: smoke preset, images are noise)" if cfg.sd.tiny else ""
    smoke = "smoke: tiny randomly initialised SD pipeline; proves the pipeline, says nothing about the method"
    meta = method_meta(
        method, f"{base}{tiny}" + (f" + {adapter} {lora}" if lora else " (zero-shot, no LoRA)"), pipe.device, {},
        (train_stats or {}).get("trainable_params", 0),
        sum(count_parameters(getattr(pipe, k))[1] for k in ("unet", "vae", "text_encoder")), train_stats,
        smoke if cfg.sd.tiny else "", base_weights=base, lora_weights=lora, sampler=cfg.perf.get("sampler", "ddim"),
        num_inference_steps=cfg.sd.num_inference_steps, guidance_scale=cfg.sd.guidance_scale,
        sd_resolution=cfg.sd.resolution, latent_factor=latent_factor(pipe.vae),
        latent_px=cfg.sd.resolution // latent_factor(pipe.vae), seed=cfg.seed, captions_status=caps["status"],
        captions=describe(caps),
        timing="wall time of the test set after one warm-up batch, prompt encoding included",
        lora=(train_stats or {}).get("lora"))
    return predict_set(cfg, method, fn, bs, pipe.device, meta, max_images=limit, root=root, desc=method)[2]
