"""The functions of the study's built-in methods (the records are :mod:`helpers.study.methods`):
how each finds its status (files only, nothing loaded), loads and samples. They import the study's
code (ddpm, sd, peft_variants, predict); the records name them lazily, so reading a label imports
none of it and the study's modules may read the records without an import circle."""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

from helpers.study.config import Config
from helpers.study.methods import ABLATION_PREFIX, Method, MethodStatus, get, is_variant


# ---------------------------------------------------------------- how the status is found (files only)
def _hub_cached(repo_id: str, filename: str, cache: Path) -> bool:
    """Is ``filename`` of hub repo ``repo_id`` in the local cache (no network call)?"""
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=str(cache)), str)
    except Exception:
        return False


def ddpm_base_status(cfg: Config, P) -> tuple[bool, str]:
    """Is the unconditional DDPM (RePaint's) on disk? (ok, what it is or why not)."""
    from helpers.study.models.ddpm import BASE_DIR, local_path

    pid = cfg.ddpm.pretrained_id
    if not pid:
        return True, f"tiny random unconditional U-Net (seed {cfg.seed}, smoke), in {P.models / BASE_DIR}"
    try:
        local = local_path(pid)
    except FileNotFoundError:
        return False, f"ddpm.pretrained_id {pid!r} is not a folder here."
    if local is not None:
        ok = (local / "config.json").is_file() or (local / "unet" / "config.json").is_file()
        return ok, (f"pretrained DDPM from {local}" if ok else f"{local} holds no config.json (not a diffusers U-Net).")
    if _hub_cached(pid, "config.json", P.cache / "hub"):
        return True, f"pretrained DDPM {pid} (local hub cache)"
    return False, f"the pretrained DDPM {pid!r} is not in the local cache {P.cache / 'hub'} (the demo never downloads)."


def sd_base_status(cfg: Config, P) -> tuple[bool, str]:
    """Is the preset's SD inpainting pipeline on disk? (ok, what it is or why not)."""
    from helpers.study.models.sd_pipeline import looks_local

    if cfg.sd.tiny:
        return True, f"tiny random SD inpainting pipeline (seed {cfg.seed}, smoke), in {P.models / 'sd_base'}"
    pid = cfg.sd.pretrained_id
    if not pid:
        return False, "sd.pretrained_id is empty and sd.tiny is false."
    if looks_local(str(pid)):
        ok = (Path(pid).expanduser() / "model_index.json").is_file()
        return ok, (f"SD inpainting from {pid}" if ok else f"{pid} is not a diffusers pipeline folder.")
    if _hub_cached(str(pid), "model_index.json", P.cache / "hub"):
        return True, f"SD inpainting {pid} (local hub cache)"
    return False, (f"the SD inpainting weights {pid!r} are not in the local cache {P.cache / 'hub'} "
                   f"(the demo never downloads).")


def _series(cfg: Config) -> str:
    return f" (or `make report PRESET={cfg.preset}`)"


def _get_sd(cfg: Config) -> tuple[str, str]:
    from helpers.study.models.sd_pipeline import HUB_ID

    return (f"hf download {HUB_ID} --local-dir <folder>",
            f" on a machine with internet access, then set sd.pretrained_id: <folder> in configs/{cfg.preset}.yaml")


def telea_status(cfg: Config, P) -> MethodStatus:
    return MethodStatus("telea", True, f"OpenCV Telea, radius {cfg.eval.telea_radius} (no weights)")


def finetuned_status(cfg: Config, P) -> MethodStatus:
    """Written by notebook 03 / helpers.study.models.ddpm."""
    from helpers.study.models.ddpm import finetuned_dir

    ft = finetuned_dir(cfg, P)
    if (ft / "config.json").is_file():
        return MethodStatus("ddpm_finetuned", True, f"fine-tuned 7-channel U-Net, {ft}")
    return MethodStatus("ddpm_finetuned", False, reason=f"no fine-tuned DDPM in {ft}.",
                        command=f"python -m helpers.study train ddpm --preset {cfg.preset}",
                        hint=f"{_series(cfg)}, notebook 03")


def repaint_status(cfg: Config, P) -> MethodStatus:
    """The pretrained unconditional DDPM (smoke: the tiny random one, rebuilt from the seed)."""
    ok, text = ddpm_base_status(cfg, P)
    return MethodStatus("ddpm_repaint", ok, text if ok else "", "" if ok else text,
                        f"hf download {cfg.ddpm.pretrained_id} --local-dir <folder>",
                        f" on a machine with internet access, then set ddpm.pretrained_id: <folder> "
                        f"in configs/{cfg.preset}.yaml")


def zeroshot_status(cfg: Config, P) -> MethodStatus:
    ok, text = sd_base_status(cfg, P)
    return MethodStatus("sd_zeroshot", ok, text if ok else "", "" if ok else text, *_get_sd(cfg))


def lora_status(cfg: Config, P) -> MethodStatus:
    """The preset's SD pipeline and the LoRA file of notebook 04."""
    from helpers.study.models.sd import find_lora

    ok, text = sd_base_status(cfg, P)
    if not ok:
        command, hint = _get_sd(cfg)
        return MethodStatus("sd_lora", False, reason=text, command=command, hint=hint)
    lora = find_lora(cfg, P.root)
    if lora is None:
        return MethodStatus("sd_lora", False, reason=f"no LoRA weights under {P.models / 'sd_lora'}.",
                            command=f"python -m helpers.study train sd --preset {cfg.preset}",
                            hint=f"{_series(cfg)}, notebook 04")
    return MethodStatus("sd_lora", True, f"{text} + LoRA {lora}")


def variant_status(cfg: Config, P, name: str) -> MethodStatus:
    """Available when the SD pipeline is and the variant's adapter file (the one its test-set
    predictions were made with) is on disk; otherwise the reason, never another adapter instead."""
    from helpers.study.models import peft_variants as pv

    m = ABLATION_PREFIX + name
    ok, text = sd_base_status(cfg, P)
    if not ok:
        command, hint = _get_sd(cfg)
        return MethodStatus(m, False, reason=text, command=command, hint=hint)
    (row,) = [r for r in pv.status(cfg, P.root) if r["variant"] == name]
    if row["status"] == "trained":
        adapter = (row["meta"].get("variant") or {}).get("method", "")
        return MethodStatus(m, True, f"{text} + {adapter} adapter {row['weights']}")
    # reason: the status alone (the demo groups by it); the detail in the hint
    return MethodStatus(m, False, reason=f"{row['status']}.",
                        command=f"python -m helpers.study train peft --preset {cfg.preset} --variant {name}",
                        hint=f" (or notebook 04's PEFT ablation section; {row.get('note', '')})")


# ---------------------------------------------------------------- how each loads
def ddpm_load(cfg: Config, P, device, root, finetuned: bool):
    from helpers.study.models.ddpm import load_finetuned, load_noise_scheduler, load_unconditional_unet

    unet = load_finetuned(cfg, P) if finetuned else load_unconditional_unet(cfg, P)
    return unet.to(device), load_noise_scheduler(cfg, P).alphas_cumprod


def sd_load(cfg: Config, P, device, root, lora: bool):
    from helpers.study.models.sd import find_lora, load_lora
    from helpers.study.models.sd_pipeline import load_pipeline

    pipe = load_pipeline(cfg, device=device, root=root)
    return load_lora(pipe, find_lora(cfg, root)) if lora else pipe


def variant_load(cfg: Config, P, device, root, name: str):
    """The study's pipeline + the variant's saved adapter."""
    from helpers.study.models import peft_variants as pv

    (v,) = pv.variants(cfg, [name])
    pipe = pv.load_pipeline(cfg, v, root, device)
    return pv.load_adapter(pipe, P.root / pv.find_adapter(cfg, name, root))


# ---------------------------------------------------------------- how each samples (the request's steps)
def telea_sample(cfg: Config, model, device, steps: int, guidance: float, prompt: str):
    from helpers.study.evaluation.predict import telea_inpaint

    return lambda x, m, seeds, names: telea_inpaint(x, m, cfg.eval.telea_radius)


def ddim_sample(cfg: Config, model, device, steps: int, guidance: float, prompt: str):
    from helpers.study.models import ddpm

    cfg.ddpm.num_inference_steps = int(steps)
    return ddpm.ddim_sampler(cfg, *model, device)


def repaint_sample(cfg: Config, model, device, steps: int, guidance: float, prompt: str):
    from helpers.study.models import ddpm

    cfg.ddpm.repaint.num_inference_steps = int(steps)
    return ddpm.repaint_sampler(cfg, *model, device)


def sd_sample(cfg: Config, model, device, steps: int, guidance: float, prompt: str):
    from helpers.study.models import sd

    cfg.sd.num_inference_steps, cfg.sd.guidance_scale = int(steps), float(guidance)
    return lambda x, m, seeds, names: sd.predict(cfg, model, x, m, [prompt] * len(x), seeds, leave=False)


# ---------------------------------------------------------------- which functions a method runs
BUILTIN = {  # id -> (status, load, sample)
    "ddpm_finetuned": (finetuned_status, partial(ddpm_load, finetuned=True), ddim_sample),
    "ddpm_repaint": (repaint_status, partial(ddpm_load, finetuned=False), repaint_sample),
    "sd_zeroshot": (zeroshot_status, partial(sd_load, lora=False), sd_sample),
    "sd_lora": (lora_status, partial(sd_load, lora=True), sd_sample),
    "telea": (telea_status, lambda cfg, P, device, root: None, telea_sample),
}


def functions(method: Method) -> tuple:
    """(status, load, sample) of a method: its record's own when it brings them (a registered method),
    else the built-in method's, or the PEFT variant's (the study's SD pipeline + that variant's adapter)."""
    if method.status is not None:
        return method.status, method.load, method.sample
    if is_variant(method.id):
        name = method.id[len(ABLATION_PREFIX):]
        return partial(variant_status, name=name), partial(variant_load, name=name), sd_sample
    return BUILTIN[method.id]


def status(cfg: Config, P, method_id: str) -> MethodStatus:
    """Which weights ``method_id`` would load, or why it cannot run (files only, nothing loaded)."""
    return functions(get(method_id))[0](cfg, P)


def load(cfg: Config, P, device, root, method_id: str):
    """The model of ``method_id`` (None: nothing to load)."""
    return functions(get(method_id))[1](cfg, P, device, root)


def sampler(cfg: Config, method_id: str, model, device, steps: int, guidance: float, prompt: str):
    """fn(images, masks, seeds, names) of ``method_id`` with the given steps, guidance and prompt in
    place of the preset's (``cfg`` itself is left as it is)."""
    return functions(get(method_id))[2](copy.deepcopy(cfg), model, device, steps, guidance, prompt)
