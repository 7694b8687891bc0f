"""The methods compared, one record each: the one place a method's identity lives.

A :class:`Method` holds its id (the folder of its predictions), its labels, the notebook that writes
its predictions, how the figures draw it, whether the blind preference test shows it, and three
functions: how its status is found (files only, nothing loaded), how it loads and how it samples.
The demo, the evaluation, the tables and the figures read these records; the PEFT ablation's
variants (``ablation.variants``, ``peft_<name>``) are records of the same kind, built from the preset.

Adding a method = one :func:`register` call with its record and its functions (the tests add one
that fills the hole with grey). The built-in methods' and the variants' functions live in
:mod:`helpers.study.method_functions` (keyed by id; a record's own functions come first), which imports the
study's models: this module imports none of them, so reading a label loads no model library and the study's
modules (which read the labels) form no import circle.

    status(cfg, P) -> MethodStatus                     which weights it would load, or why it cannot run
    load(cfg, P, device, root) -> model                once, on first use (None: nothing to load)
    sample(cfg, model, device, steps, guidance, prompt) -> fn(images, masks, seeds, names)
        images (N, 3, H, W) in [-1, 1], masks (N, 1, H, W) {0, 1} with 1 = hole -> (N, 3, H, W) in [-1, 1];
        ``cfg`` is the caller's copy, free to change (the request's steps and guidance go into it).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

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
                  "04_sd_lora", votes=False)


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


# ---------------------------------------------------------------- the study's five methods
register(Method("ddpm_finetuned", "DDPM fine-tuned (7-ch U-Net)", "DDPM", "03_ddpm_inpainting", "o", "-"))
register(Method("ddpm_repaint", "DDPM RePaint (training-free)", "RePaint", "03_ddpm_inpainting", "s", "--"))
register(Method("sd_zeroshot", "SD 1.5 inpainting (zero-shot)", "SD zero-shot", "04_sd_lora", "^", ":"))
register(Method("sd_lora", "SD 1.5 inpainting + LoRA", "SD + LoRA", "04_sd_lora", "D", "-"))
register(Method("telea", "OpenCV Telea (classical)", "Telea", "05_evaluation", "v", "-."))
