"""The methods compared, one record each: the one place a method's identity lives.

A :class:`Method` holds its id (the folder of its predictions), its labels, the notebook that writes
its predictions, how the figures draw it, whether the blind preference test shows it, and three
functions: how its status is found (files only, nothing loaded), how it loads and how it samples.
The demo, the evaluation, the tables and the figures read these records; the PEFT ablation's
variants (``ablation.variants``, ``peft_<name>``) are records of the same kind, built from the preset.

Adding a method = one :func:`register` call with its record and its functions (the tests add one
that fills the hole with grey). The functions import the study's code (:mod:`helpers.study.models.ddpm`,
:mod:`helpers.study.models.sd`, ...) when called, so reading a label loads no model library.

    status(cfg, P) -> MethodStatus                     which weights it would load, or why it cannot run
    load(cfg, P, device, root) -> model                once, on first use (None: nothing to load)
    sample(cfg, model, device, steps, guidance, prompt) -> fn(images, masks, seeds, names)
        images (N, 3, H, W) in [-1, 1], masks (N, 1, H, W) {0, 1} with 1 = hole -> (N, 3, H, W) in [-1, 1];
        ``cfg`` is the caller's copy, free to change (the request's steps and guidance go into it).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from helpers.study.config import Config

# + a variant's name (ablation.variants): the PEFT ablation (helpers.study.models.peft_variants)
ABLATION_PREFIX = "peft_"


# ---------------------------------------------------------------- what a method is
@dataclass
class MethodStatus:
    method: str
    available: bool
    weights: str = ""          # what it loads
    reason: str = ""           # why it cannot run
    command: str = ""          # the command that produces the missing weights
    hint: str = ""             # what else to do or know

    @property
    def label(self) -> str:
        return short_label(self.method)

    def message(self) -> str:
        """Why the method is disabled and what produces its weights (markdown; '' when it can run)."""
        if self.available:
            return ""
        return f"{self.label}: {self.reason} Produce them with `{self.command}`{self.hint}."


@dataclass(frozen=True)
class Method:
    id: str                    # the folder of its predictions, reports/<preset>/predictions/<id>
    label: str                 # every table and figure
    short: str                 # slides, chart axes, legends, the demo
    notebook: str              # the notebook that writes its test-set predictions
    marker: str = "o"          # figures: marker and line style (the colour follows the order of registration)
    linestyle: str = "-"
    votes: bool = True         # a candidate of the blind preference test
    status: Callable | None = None     # (cfg, P) -> MethodStatus
    load: Callable | None = None       # (cfg, P, device, root) -> model
    sample: Callable | None = None     # (cfg, model, device, steps, guidance, prompt) -> fn(x, m, seeds, names)


REGISTRY: dict[str, Method] = {}   # the study's methods, in the order every table and figure shows them


def register(method: Method) -> Method:
    """Add (or replace) a method of the study; it joins every list, table and figure from now on."""
    if method.id.startswith(ABLATION_PREFIX):
        raise ValueError(f"{method.id!r}: ids starting with {ABLATION_PREFIX!r} are the PEFT ablation's variants")
    REGISTRY[method.id] = method
    return method


def unregister(method_id: str) -> None:
    REGISTRY.pop(method_id, None)


def variant(name: str) -> Method:
    """The record of the PEFT ablation's variant ``name``: the study's SD pipeline + that variant's adapter."""
    return Method(ABLATION_PREFIX + name, f"SD 1.5 inpainting + {name} (PEFT ablation)", f"{name} (PEFT)",
                  "04_sd_lora", votes=False, status=partial(_variant_status, name=name),
                  load=partial(_variant_load, name=name), sample=_sd_sample)


def variants(cfg: Config) -> list[Method]:
    """The preset's ablation variants (``ablation.variants``), in config order; [] when it has none."""
    if not cfg.get("ablation") or not cfg.ablation.get("variants"):
        return []
    return [variant(v["name"]) for v in cfg.ablation.variants]


def all_methods(cfg: Config) -> list[Method]:
    """The study's methods, then the preset's ablation variants."""
    return [*REGISTRY.values(), *variants(cfg)]


def get(method_id: str) -> Method:
    """The record of a study method or of an ablation variant ``peft_<name>``; ValueError otherwise."""
    if method_id in REGISTRY:
        return REGISTRY[method_id]
    if method_id.startswith(ABLATION_PREFIX) and len(method_id) > len(ABLATION_PREFIX):
        return variant(method_id[len(ABLATION_PREFIX):])
    raise ValueError(f"unknown method {method_id!r}; expected one of {sorted(REGISTRY)} or {ABLATION_PREFIX}<variant>")


def is_variant(method_id: str) -> bool:
    return method_id not in REGISTRY and method_id.startswith(ABLATION_PREFIX)


def method_label(method_id: str) -> str:
    """The label of a study method or of an ablation variant ``peft_<name>`` (ValueError otherwise)."""
    return get(method_id).label


def short_label(method_id: str) -> str:
    """The short label of a study method or of an ablation variant (``<name> (PEFT)``); any other id as it is."""
    try:
        return get(method_id).short
    except ValueError:
        return method_id


def notebook_of(method_id: str) -> str:
    try:
        return get(method_id).notebook
    except ValueError:
        return "the notebook that produces it"


def voting() -> list[str]:
    """The methods the blind preference test shows, in order."""
    return [m.id for m in REGISTRY.values() if m.votes]


class _Column(Mapping):
    """A live read-only view of one field of the registry: method id -> value, in registration order."""

    def __init__(self, field: str):
        self.field = field

    def __getitem__(self, method_id: str):
        return getattr(REGISTRY[method_id], self.field)

    def __iter__(self) -> Iterator[str]:
        return iter(list(REGISTRY))

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


METHODS = _Column("label")        # method id -> label used in every table and figure
SHORT_LABELS = _Column("short")   # method id -> short human label for slides, chart axes and legends
MARKERS = _Column("marker")
LINESTYLES = _Column("linestyle")


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
    from helpers.study.models.sd import looks_local

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
    from helpers.study.models.sd import HUB_ID

    return (f"hf download {HUB_ID} --local-dir <folder>",
            f" on a machine with internet access, then set sd.pretrained_id: <folder> in configs/{cfg.preset}.yaml")


def _telea_status(cfg: Config, P) -> MethodStatus:
    return MethodStatus("telea", True, f"OpenCV Telea, radius {cfg.eval.telea_radius} (no weights)")


def _finetuned_status(cfg: Config, P) -> MethodStatus:
    """Written by notebook 03 / helpers.study.models.ddpm."""
    from helpers.study.models.ddpm import finetuned_dir

    ft = finetuned_dir(cfg, P)
    if (ft / "config.json").is_file():
        return MethodStatus("ddpm_finetuned", True, f"fine-tuned 7-channel U-Net, {ft}")
    return MethodStatus("ddpm_finetuned", False, reason=f"no fine-tuned DDPM in {ft}.",
                        command=f"python -m helpers.study train ddpm --preset {cfg.preset}",
                        hint=f"{_series(cfg)}, notebook 03")


def _repaint_status(cfg: Config, P) -> MethodStatus:
    """The pretrained unconditional DDPM (smoke: the tiny random one, rebuilt from the seed)."""
    ok, text = ddpm_base_status(cfg, P)
    return MethodStatus("ddpm_repaint", ok, text if ok else "", "" if ok else text,
                        f"hf download {cfg.ddpm.pretrained_id} --local-dir <folder>",
                        f" on a machine with internet access, then set ddpm.pretrained_id: <folder> "
                        f"in configs/{cfg.preset}.yaml")


def _zeroshot_status(cfg: Config, P) -> MethodStatus:
    ok, text = sd_base_status(cfg, P)
    return MethodStatus("sd_zeroshot", ok, text if ok else "", "" if ok else text, *_get_sd(cfg))


def _lora_status(cfg: Config, P) -> MethodStatus:
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


def _variant_status(cfg: Config, P, name: str) -> MethodStatus:
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
def _ddpm_load(cfg: Config, P, device, root, finetuned: bool):
    from helpers.study.models.ddpm import load_finetuned, load_noise_scheduler, load_unconditional_unet

    unet = load_finetuned(cfg, P) if finetuned else load_unconditional_unet(cfg, P)
    return unet.to(device), load_noise_scheduler(cfg, P).alphas_cumprod


def _sd_load(cfg: Config, P, device, root, lora: bool):
    from helpers.study.models.sd import find_lora, load_lora, load_pipeline

    pipe = load_pipeline(cfg, device=device, root=root)
    return load_lora(pipe, find_lora(cfg, root)) if lora else pipe


def _variant_load(cfg: Config, P, device, root, name: str):
    """The study's pipeline + the variant's saved adapter."""
    from helpers.study.models import peft_variants as pv

    (v,) = pv.variants(cfg, [name])
    pipe = pv.load_pipeline(cfg, v, root, device)
    return pv.load_adapter(pipe, P.root / pv.find_adapter(cfg, name, root))


# ---------------------------------------------------------------- how each samples (the request's steps)
def _telea_sample(cfg: Config, model, device, steps: int, guidance: float, prompt: str):
    from helpers.study.evaluation.predict import telea_inpaint

    return lambda x, m, seeds, names: telea_inpaint(x, m, cfg.eval.telea_radius)


def _ddim_sample(cfg: Config, model, device, steps: int, guidance: float, prompt: str):
    from helpers.study.models import ddpm

    cfg.ddpm.num_inference_steps = int(steps)
    return ddpm.ddim_sampler(cfg, *model, device)


def _repaint_sample(cfg: Config, model, device, steps: int, guidance: float, prompt: str):
    from helpers.study.models import ddpm

    cfg.ddpm.repaint.num_inference_steps = int(steps)
    return ddpm.repaint_sampler(cfg, *model, device)


def _sd_sample(cfg: Config, model, device, steps: int, guidance: float, prompt: str):
    from helpers.study.models import sd

    cfg.sd.num_inference_steps, cfg.sd.guidance_scale = int(steps), float(guidance)
    return lambda x, m, seeds, names: sd.predict(cfg, model, x, m, [prompt] * len(x), seeds, leave=False)


def sampler(cfg: Config, method_id: str, model, device, steps: int, guidance: float, prompt: str):
    """fn(images, masks, seeds, names) of ``method_id`` with the given steps, guidance and prompt in
    place of the preset's (``cfg`` itself is left as it is)."""
    return get(method_id).sample(copy.deepcopy(cfg), model, device, steps, guidance, prompt)


# ---------------------------------------------------------------- the study's five methods
register(Method("ddpm_finetuned", "DDPM fine-tuned (7-ch U-Net)", "DDPM", "03_ddpm_inpainting", "o", "-",
                status=_finetuned_status, load=partial(_ddpm_load, finetuned=True), sample=_ddim_sample))
register(Method("ddpm_repaint", "DDPM RePaint (training-free)", "RePaint", "03_ddpm_inpainting", "s", "--",
                status=_repaint_status, load=partial(_ddpm_load, finetuned=False), sample=_repaint_sample))
register(Method("sd_zeroshot", "SD 1.5 inpainting (zero-shot)", "SD zero-shot", "04_sd_lora", "^", ":",
                status=_zeroshot_status, load=partial(_sd_load, lora=False), sample=_sd_sample))
register(Method("sd_lora", "SD 1.5 inpainting + LoRA", "SD + LoRA", "04_sd_lora", "D", "-",
                status=_lora_status, load=partial(_sd_load, lora=True), sample=_sd_sample))
register(Method("telea", "OpenCV Telea (classical)", "Telea", "05_evaluation", "v", "-.",
                status=_telea_status, load=lambda cfg, P, device, root: None, sample=_telea_sample))
