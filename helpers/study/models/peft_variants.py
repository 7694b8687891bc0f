"""The PEFT ablation (issue 20): the study's LoRA beside other parameter-efficient adapters of the SD
1.5 inpainting U-Net (LoRA at several ranks, DoRA, LoHa, LoKr, OFT; QLoRA on CUDA), as one controlled
experiment. The adapters are taught in notebook 04 and built by :mod:`helpers.course.peft_variants`.

* The variants are ``ablation.variants`` of the preset; every one trains through
  :func:`helpers.study.models.sd.train_lora` (same data, captions, prompt dropout, batch, learning rate,
  steps and seed as the study's LoRA) in its own resumable run folder
  ``reports/<preset>/models/sd_peft/<name>/ckpt-<fingerprint>/`` holding peft's state dict
  (``adapter_model.safetensors``) and the variant (``adapter_config.json``).
* Its test-set predictions are the method ``peft_<name>`` (``reports/<preset>/predictions/``),
  written by the study's one prediction loop and scored by the study's evaluation
  (:func:`helpers.study.evaluation.evaluate.evaluate_all`), with paired bootstrap CIs against
  ``ablation.reference`` (the study's LoRA).
* A variant without weights is reported as *not trained* (or, for QLoRA without CUDA and
  bitsandbytes, *needs a CUDA GPU with bitsandbytes*), never replaced by another.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from helpers.course.peft_variants import attach_adapter
from helpers.study.config import Config
from helpers.study.files import load_json, paths, save_json
from helpers.study.methods import ABLATION_PREFIX

log = logging.getLogger(__name__)


ADAPTER_WEIGHTS = "adapter_model.safetensors"      # peft's file name for an adapter's state dict
ADAPTER_CONFIG = "adapter_config.json"             # here: the variant, from which adapter_config rebuilds it
NOT_TRAINED = "not trained"
NEEDS_CUDA = "needs a CUDA GPU with bitsandbytes"
TABLE = "04b_peft_ablation.csv"
COST_TABLE = "04b_peft_cost.csv"


# ============================================================== the variants of the preset
def resolve(cfg: Config, variant: dict) -> dict:
    """A variant of ``ablation.variants`` with the study's target modules and dropout unless it sets them."""
    lo = cfg.sd.lora
    return {"target_modules": list(lo.target_modules), "dropout": lo.dropout, **dict(variant)}


def variants(cfg: Config, names=None) -> list[dict]:
    """The preset's variants (resolved), in config order; ``names`` keeps only those."""
    out = [resolve(cfg, v) for v in cfg.ablation.variants]
    unknown = set(names or []) - {v["name"] for v in out}
    if unknown:
        raise KeyError(f"unknown ablation variant(s) {sorted(unknown)}: the preset has {[v['name'] for v in out]}")
    return [v for v in out if names is None or v["name"] in names]


def method_id(variant: dict) -> str:
    """The variant's method folder under predictions/: ``peft_<name>``."""
    return ABLATION_PREFIX + variant["name"]


def unavailable_reason(variant: dict, device: torch.device | str) -> str | None:
    """Why a variant cannot train here (QLoRA: a 4-bit base needs CUDA and bitsandbytes), else None."""
    if variant.get("quantize"):
        if torch.device(device).type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
            return NEEDS_CUDA
    return None


# ============================================================== saving and loading an adapter (peft's own state dict)
def save_adapter(unet, folder: Path, variant: dict, is_main_process: bool = True) -> Path:
    """peft's state dict of the U-Net's adapter as <folder>/adapter_model.safetensors (written
    atomically), the variant beside it as adapter_config.json. Works for every peft method, which
    diffusers' ``save_lora_weights`` (LoRA only) does not."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    path = folder / ADAPTER_WEIGHTS
    if is_main_process:
        state = {k: v.detach().float().contiguous().cpu() for k, v in get_peft_model_state_dict(unet).items()}
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"method": variant["method"], "name": variant["name"]})
        os.replace(tmp, path)
        save_json({"variant": variant, "peft_type": str(unet.peft_config["default"].peft_type)},
                  folder / ADAPTER_CONFIG)
    return path


def load_adapter(pipe, path: Path):
    """Attach a saved variant (folder or its .safetensors) to ``pipe``'s U-Net for inference: the
    adapter rebuilt from its variant, then peft's ``set_peft_model_state_dict``. Every adapter tensor
    must be in the file (a missing one raises instead of leaving its initial value)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" else path
    if not (folder / ADAPTER_WEIGHTS).is_file() or not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"adapter weights {folder / ADAPTER_WEIGHTS} {NOT_TRAINED}: train the variant "
                                "in notebook 04 (helpers.study.models.peft_variants.train_variant)")
    variant = load_json(folder / ADAPTER_CONFIG)["variant"]
    attach_adapter(pipe, variant)
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(pipe.unet, state)
    expected = {k for k, _ in pipe.unet.named_parameters() if ".default" in k}
    missing = sorted(k for k in result.missing_keys if k in expected)
    if missing or result.unexpected_keys:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS} does not match variant {variant['name']!r}: "
                         f"{len(missing)} adapter tensor(s) missing, {len(result.unexpected_keys)} unexpected")
    pipe.unet.requires_grad_(False)
    pipe.unet.eval()                                    # adapter dropout off
    pipe.lora_path = str(folder / ADAPTER_WEIGHTS)
    pipe.adapter_label = f"{variant['name']} ({variant['method']})"
    return pipe


def merge_adapter(unet) -> None:
    """Fold every adapter into its base weight (W <- W'), as peft's ``merge`` does layer by layer:
    the merged U-Net runs at the base model's cost."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()


# ============================================================== pipelines, training, predictions
def load_pipeline(cfg: Config, variant: dict, root: Path | None = None, device=None):
    """The study's pipeline; for a ``quantize: nf4`` variant (QLoRA) its U-Net reloaded with a 4-bit
    NF4 frozen base (diffusers' bitsandbytes integration), which needs CUDA and bitsandbytes."""
    from helpers.study.models import sd_pipeline
    from helpers.study.runtime import get_device

    device = device or get_device(cfg)
    reason = unavailable_reason(variant, device)
    if reason:
        raise RuntimeError(f"variant {variant['name']!r} {reason}")
    pipe = sd_pipeline.load_pipeline(cfg, root=root, device=device)
    if variant.get("quantize"):
        from diffusers import BitsAndBytesConfig, UNet2DConditionModel

        if variant["quantize"] != "nf4":
            raise ValueError(f"variant {variant['name']!r}: quantize {variant['quantize']!r}; only nf4 is supported")
        dtype = sd_pipeline.weight_dtype(cfg, device)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        source = pipe.source
        cache = str(paths(cfg, root).cache / "hub")
        pipe.unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", quantization_config=q,
                                                         dtype=dtype, cache_dir=cache)
        pipe.source = source
    return pipe


def train_variant(cfg: Config, variant: dict, root: Path | None = None, max_steps: int | None = None,
                  captions: dict | None = None, attach_fn=attach_adapter, loss_fn=None) -> dict:
    """Train one variant with the study's LoRA recipe (:func:`helpers.study.models.sd.train_lora`); returns its
    train stats (+ ``adapter_bytes``, ``step_seconds``). A finished run is reused, a longer one resumes."""
    from helpers.course.sd_inpainting import lora_inpaint_loss
    from helpers.study.models import sd

    pipe = load_pipeline(cfg, variant, root)
    stats = sd.train_lora(cfg, pipe, captions=captions, max_steps=max_steps, root=root, attach_fn=attach_fn,
                          loss_fn=loss_fn or lora_inpaint_loss, variant=variant,
                          save_fn=partial(save_adapter, variant=variant))
    stats["adapter_bytes"] = Path(stats["lora_path"]).stat().st_size
    stats["step_seconds"] = stats["seconds"] / max(1, stats["steps"] - stats.get("resumed_from", 0))
    stats["variant"] = variant
    del pipe
    return stats


def predict_variant(cfg: Config, variant: dict, stats: dict, root: Path | None = None, inpaint_fn=None) -> dict:
    """The frozen test set completed by a fresh pipeline carrying the saved adapter: method ``peft_<name>``."""
    from helpers.course.sd_inpainting import inpaint
    from helpers.study.models import sd

    pipe = load_adapter(load_pipeline(cfg, variant, root), stats["lora_path"])
    meta = sd.predict_test_set(cfg, pipe, method_id(variant), train_stats=stats, root=root,
                               limit=cfg.ablation.get("max_test_images"), inpaint_fn=inpaint_fn or inpaint)
    extra = {"variant": variant, "adapter_bytes": stats["adapter_bytes"], "step_seconds": stats["step_seconds"]}
    folder = paths(cfg, root).predictions(method_id(variant))
    save_json({**load_json(folder / "meta.json"), **extra}, folder / "meta.json")
    return {**meta, **extra}


def run_ablation(cfg: Config, root: Path | None = None, names=None, attach_fn=attach_adapter, loss_fn=None,
                 inpaint_fn=None, max_steps: int | None = None) -> pd.DataFrame:
    """Train and predict every variant this machine can run; one row per variant with its status
    (trained, or why not) and its cost: trainable parameters, adapter file size, seconds per
    training step, peak training memory (GPU), inference speed. Saved as tables/04b_peft_cost.csv."""
    from helpers.study.runtime import get_device

    rows, device = [], get_device(cfg)
    for v in variants(cfg, names):
        reason = unavailable_reason(v, device)
        row = {"variant": v["name"], "method": method_id(v), "adapter": v["method"], "status": reason or "trained"}
        if reason is None:
            stats = train_variant(cfg, v, root, max_steps=max_steps, attach_fn=attach_fn, loss_fn=loss_fn)
            meta = predict_variant(cfg, v, stats, root, inpaint_fn)
            row.update(trainable_params=stats["trainable_params"], adapter_bytes=stats["adapter_bytes"],
                       train_steps=stats["steps"], step_seconds=stats["step_seconds"],
                       train_peak_memory_bytes=stats["peak_memory_bytes"], images_per_s=meta["images_per_s"],
                       final_loss=stats["history"][-1]["loss"] if stats["history"] else None)
        rows.append(row)
    table = pd.DataFrame(rows)
    path = paths(cfg, root).tables / COST_TABLE
    if names is not None and path.is_file():             # some variants only: the others' rows are kept
        kept = pd.read_csv(path)
        table = pd.concat([kept[~kept["variant"].isin(table["variant"])], table], ignore_index=True)
        order = {v["name"]: i for i, v in enumerate(variants(cfg))}
        table = table.sort_values("variant", key=lambda c: c.map(order).fillna(len(order)), kind="stable")
    table = table.reset_index(drop=True).convert_dtypes()  # counts stay integers beside a row without them
    table.to_csv(path, index=False)
    return table


# ============================================================== which variants are trained
def status(cfg: Config, root: Path | None = None, device=None) -> list[dict]:
    """One row per variant: ``trained`` when its predictions exist and the adapter file they name is
    on disk; else ``not trained`` (or ``needs a CUDA GPU with bitsandbytes``), with the reason."""
    from helpers.study.runtime import get_device

    device, P = device or get_device(cfg), paths(cfg, root)
    rows = []
    for v in variants(cfg):
        meta_path = P.predictions(method_id(v)) / "meta.json"
        meta = load_json(meta_path) if meta_path.is_file() else {}
        weights = meta.get("lora_weights")
        if weights and (P.root / weights).is_file():          # relative to the root (older runs: absolute)
            rows.append({"variant": v["name"], "method": method_id(v), "status": "trained", "weights": weights,
                         "meta": meta})
            continue
        reason = unavailable_reason(v, device)
        why = (f"no predictions in {P.relative(meta_path.parent)}" if not meta
               else f"its adapter file {P.relative(weights) if weights else '(none named)'} is missing")
        rows.append({"variant": v["name"], "method": method_id(v), "status": reason or NOT_TRAINED,
                     "weights": None, "meta": meta, "note": why + ": run notebook 04's PEFT ablation"})
    return rows


def find_adapter(cfg: Config, name: str, root: Path | None = None) -> Path | None:
    """The adapter file of a trained variant (the one its predictions were made with), else None."""
    for row in status(cfg, root):
        if row["variant"] == name:
            return Path(row["weights"]) if row["weights"] else None
    raise KeyError(f"unknown ablation variant {name!r}")


# ============================================================== the ablation table
def reference_on_variant_images(summary: pd.DataFrame, per_image: pd.DataFrame, ref: str, trained: list,
                                 cfg: Config) -> pd.DataFrame:
    """The reference's per-image means and CIs over the images the variants were scored on (the
    variants may be predicted on the first ``ablation.max_test_images`` test images, the reference on
    all of them): one image set per statement. Its FID / KID, set statistics, are then left out."""
    from helpers.study.evaluation.evaluate import PER_IMAGE
    from helpers.study.evaluation.metrics import bootstrap_ci

    variant_names = set(per_image.loc[per_image["method"].isin(trained), "name"])
    ref_rows = per_image[per_image["method"] == ref]
    if ref not in summary.index or not variant_names or set(ref_rows["name"]) <= variant_names:
        return summary
    ref_rows = ref_rows[ref_rows["name"].isin(variant_names)]
    summary = summary.astype(object)
    summary.loc[ref, "n"] = len(ref_rows)
    for k in PER_IMAGE:
        summary.loc[ref, [k, f"{k}_lo", f"{k}_hi"]] = bootstrap_ci(ref_rows[k].to_numpy(dtype=float),
                                                                    cfg.eval.bootstrap_samples, cfg.seed)
    for k in ("fid", "kid", "kid_std"):
        if k in summary.columns:
            summary.loc[ref, k] = None
    return summary


def evaluate_ablation(cfg: Config, root: Path | None = None, device=None, scores_fn=None, scored=None) -> pd.DataFrame:
    """Every trained variant scored with the study's protocol (:func:`helpers.study.evaluation.evaluate.evaluate_all`:
    hole PSNR / SSIM, LPIPS, FID / KID, bootstrap CIs; buckets in the returned evaluation's tables),
    beside its cost, and the paired difference to ``ablation.reference`` with its bootstrap 95 % CI.
    Variants without weights keep their row, with their status and no scores. Saved as tables/04b_peft_ablation.csv.
    ``scored``: notebook 05's evaluation, whose scores of the reference (and the real images' Inception features)
    are reused while its prediction files are unchanged (``evaluate_all(scored=...)``)."""
    from helpers.course.metrics import pixel_scores
    from helpers.study.evaluation.evaluate import evaluate_all, paired_difference

    ref = cfg.ablation.reference
    rows = status(cfg, root, device)
    trained = [r["method"] for r in rows if r["status"] == "trained"]
    ev = evaluate_all(cfg, root, [ref, *trained], device, scores_fn or pixel_scores, save=False, scored=scored)
    summary = ev.summary.set_index("method")
    n_ref = summary["n"].get(ref) if "n" in summary else None
    summary = reference_on_variant_images(summary, ev.per_image, ref, trained, cfg)
    ref_note = (f"scored on the variants' {summary.loc[ref, 'n']} test images (of {n_ref}); FID / KID left out"
                if n_ref is not None and summary["n"].get(ref) != n_ref else "")
    metrics = ("psnr_hole", "ssim_hole", "lpips", "fid", "kid")
    ref_meta_path = paths(cfg, root).predictions(ref) / "meta.json"
    ref_meta = load_json(ref_meta_path) if ref_meta_path.is_file() else {}
    ref_file = paths(cfg, root).root / ref_meta.get("lora_weights", "")
    if ref_meta.get("lora_weights") and ref_file.is_file():
        ref_meta["adapter_bytes"] = ref_file.stat().st_size
    if ref_meta.get("train_steps"):
        ref_meta["step_seconds"] = ref_meta["train_seconds"] / ref_meta["train_steps"]
    out = []
    for r in [{"variant": f"reference ({ref})", "method": ref, "status": "trained", "meta": ref_meta,
               "note": ref_note}] + rows:
        m, meta = r["method"], r.get("meta") or {}
        row = {"variant": r["variant"], "method": m, "status": r["status"], "note": r.get("note", ""),
               "adapter": (meta.get("variant") or {}).get("method", "lora" if m == ref else None),
               "trainable_params": meta.get("trainable_params"), "adapter_bytes": meta.get("adapter_bytes"),
               "step_seconds": meta.get("step_seconds"), "train_peak_memory_bytes": meta.get("train_peak_memory_bytes")}
        if m in summary.index and summary.loc[m].get("status") in ("ok", "partial"):
            s = summary.loc[m]
            row["n"] = int(s["n"])
            for k in metrics:
                row[k] = s.get(k)
                if f"{k}_lo" in s:
                    row[f"{k}_lo"], row[f"{k}_hi"] = s[f"{k}_lo"], s[f"{k}_hi"]
            for k in ("psnr_hole", "lpips"):
                if m != ref and ref in set(ev.per_image["method"]) and ev.per_image[k].notna().any():
                    d, lo, hi, _ = paired_difference(ev.per_image, m, ref, k, cfg.eval.bootstrap_samples, cfg.seed)
                    row[f"{k}_vs_ref"], row[f"{k}_vs_ref_lo"], row[f"{k}_vs_ref_hi"] = d, lo, hi
        out.append(row)
    table = pd.DataFrame(out).convert_dtypes()
    table.to_csv(paths(cfg, root).tables / TABLE, index=False)
    ev.by_bucket.to_csv(paths(cfg, root).tables / "04b_peft_by_bucket.csv", index=False)
    return table


def published_size_params(cfg: Config) -> pd.DataFrame:
    """Trainable parameters of every variant on SD 1.5 inpainting's real U-Net (its published config),
    built on the meta device: no memory, no weights, a few seconds. QLoRA's adapter is LoRA's (its
    base is quantized, not its adapter)."""
    import copy
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from helpers.study.models.sd_pipeline import published_configs

    rows, frozen = [], torch.nn.Linear(1, 1)
    with torch.device("meta"):
        base = UNet2DConditionModel(**published_configs()["unet"])
    for v in variants(cfg):
        unet = copy.deepcopy(base)
        attach_adapter(SimpleNamespace(unet=unet, vae=frozen, text_encoder=frozen),
                       {k: x for k, x in v.items() if k != "quantize"})
        trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
        total = sum(p.numel() for p in unet.parameters() if not p.requires_grad)
        rows.append({"variant": v["name"], "adapter": v["method"], "trainable_params": trainable,
                     "fraction_of_unet": trainable / total})
    return pd.DataFrame(rows)


def load_table(cfg: Config, root: Path | None = None) -> pd.DataFrame | None:
    """The ablation table notebook 05 saved (tables/04b_peft_ablation.csv), None when it has not run."""
    path = paths(cfg, root).tables / TABLE
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"variant": str, "method": str, "status": str}).convert_dtypes()
