"""Captions for Stable Diffusion prompts: BLIP when its weights can be had, else a stated fallback.

Captions are cached in data/<preset>/captions.json as::

    {"model", "status", "fallback": bool, "captions": {name: text}, "sources": {name: "blip" | "fallback"},
     "key": {"data", "fallback_prompt", "max_new_tokens"}}

so the captioner runs once per prepared data set and caption settings, and every caption says where it came
from. A cache of fallback
captions is not final: the next call tries BLIP again when it has become available (a local
folder, the hub reachable, or the weights in the cache). Whether the hub can be reached is
decided once per process (``HF_HUB_OFFLINE=1`` is honoured; otherwise one short connection
attempt), so an offline run fails in seconds with the reason instead of minutes of retries.
The full preset refuses to train LoRA on fallback captions unless
``captions.allow_fallback_for_lora`` is true. Taught in notebook 01; used by notebook 04.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from helpers.study.config import Config
from helpers.study.data.sources import digit_caption, hub_unreachable_reason
from helpers.study.data.splits import SPLITS, load_index
from helpers.study.files import load_json, load_png, paths, save_json, to_uint8
from helpers.study.runtime import get_device, progress

log = logging.getLogger(__name__)


class CaptionsError(RuntimeError):
    """Captions unusable for what was asked (fallback captions for LoRA training)."""


def _is_local(model_id: str) -> bool:
    return Path(model_id).expanduser().is_dir()


def load_blip(model_id: str, cache_dir: Path, device: torch.device):
    """BLIP captioning processor + model from a hub id or local folder. Raises with a how-to if absent.

    Without the hub (see :func:`hub_unreachable_reason`) only the local cache is tried, so the
    failure comes at once instead of after the download retries."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    offline = None if _is_local(model_id) else hub_unreachable_reason()
    kw = {"cache_dir": str(cache_dir), **({"local_files_only": True} if offline else {})}
    try:
        processor = BlipProcessor.from_pretrained(model_id, **kw)
        model = BlipForConditionalGeneration.from_pretrained(model_id, **kw).to(device).eval()
    except Exception as e:
        where = (f"the Hugging Face hub is not reachable ({offline}) and it is not in the cache {cache_dir}"
                 if offline else f"{type(e).__name__}: {e}")
        raise RuntimeError(
            f"BLIP captioner {model_id!r} could not be loaded: {where}. It needs internet access once to "
            f"the Hugging Face hub (then cached in {cache_dir}), or a local folder saved with "
            "save_pretrained given as captions.model_id.") from e
    return processor, model


def blip_available(model_id: str | None, cache_dir: Path) -> bool:
    """Worth trying BLIP now? A local folder, a reachable hub, or the model already in the cache."""
    if not model_id:
        return False
    if _is_local(model_id) or hub_unreachable_reason() is None:
        return True
    return any(Path(cache_dir).glob(f"models--{model_id.replace('/', '--')}/snapshots/*/config.json"))


@torch.no_grad()
def blip_captions(processor, model, images: dict[str, torch.Tensor], batch_size: int, max_new_tokens: int,
                  device: torch.device) -> dict[str, str]:
    """Caption each image (tensors in [-1, 1]) with greedy decoding."""
    names, out = list(images), {}
    for start in progress(range(0, len(names), batch_size), desc="BLIP captions"):
        chunk = names[start:start + batch_size]
        pixels = [to_uint8(images[n]) for n in chunk]
        inputs = processor(images=pixels, return_tensors="pt").to(device)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
        for n, text in zip(chunk, processor.batch_decode(ids, skip_special_tokens=True)):
            out[n] = text.strip()
    return out


def cache_key(cfg: Config, index: dict) -> dict:
    """What the cached captions were made from besides the model: the prepared data by content (index.json's
    fingerprint: images re-prepared under the same names are captioned again) and the settings that shape the
    text (an edited fallback prompt or token budget is not discarded)."""
    c = cfg.captions
    return {"data": index.get("fingerprint"), "fallback_prompt": c.fallback_prompt,
            "max_new_tokens": c.max_new_tokens}


def _usable_cache(cached: dict, names: dict, cfg: Config, cache_dir: Path, key: dict) -> bool:
    """A cache is reused when it covers exactly these images with this model, from the same data and caption
    settings (:func:`cache_key`), and is not a fallback that BLIP could now replace."""
    model = "labels" if cfg.captions.get("from_labels") else cfg.captions.model_id
    if set(cached.get("captions", {})) != set(names) or cached.get("model") != model:
        return False
    if cached.get("key") != key:
        changed = [k for k in key if (cached.get("key") or {}).get(k) != key[k]]
        log.info("captions cached from other %s: captioning again", " and ".join(changed))
        return False
    if "sources" not in cached:                      # written before captions recorded their origin
        return False
    if cached.get("fallback") and blip_available(cfg.captions.model_id, cache_dir):
        log.info("cached captions are fallbacks and BLIP %s is available now: captioning again",
                 cfg.captions.model_id)
        return False
    return True


def make_captions(cfg: Config, force: bool = False, root: Path | None = None) -> dict:
    """Caption every prepared image once; returns and caches {"model", "status", "fallback",
    "captions", "sources"} (see the module docstring)."""
    P = paths(cfg, root)
    cache = P.data / "captions.json"
    hub_cache = P.cache / "hub"
    index = load_index(cfg, root)
    names = {n: s for s in SPLITS for n in index["splits"][s]}
    key = cache_key(cfg, index)
    if cache.is_file() and not force:
        cached = load_json(cache)
        if _usable_cache(cached, names, cfg, hub_cache, key):
            return cached
    c = cfg.captions
    status, captions = None, {}
    if c.get("from_labels"):
        # the mini preset: the digits' labels say what BLIP would ("a handwritten seven")
        if "labels" not in index:
            raise ValueError("captions.from_labels is true but the prepared data has no labels: it needs "
                             "data.source: digits")
        captions = {n: digit_caption(index["labels"][n]) for n in names}
        result = {"model": "labels", "status": "from the digits' labels (in place of BLIP)", "fallback": False,
                  "captions": captions, "sources": dict.fromkeys(captions, "label"), "key": key}
        save_json(result, cache)
        return result
    if c.model_id:
        device = get_device(cfg)
        try:
            processor, model = load_blip(c.model_id, hub_cache, device)
            images = {n: load_png(P.data / "images" / s / f"{n}.png") for n, s in names.items()}
            captions = blip_captions(processor, model, images, c.batch_size, c.max_new_tokens, device)
            status = f"generated by {c.model_id}"
        except RuntimeError as e:
            status = f"BLIP unavailable, fixed fallback prompt {c.fallback_prompt!r} used for every image: {e}"
            log.warning(status)
    else:
        status = (f"no captioner configured (captions.model_id is null): fixed fallback prompt "
                  f"{c.fallback_prompt!r} used for every image")
    sources = {n: "blip" for n in captions}
    for n in names:
        if n not in captions:
            captions[n], sources[n] = c.fallback_prompt, "fallback"
    result = {"model": c.model_id, "status": status, "fallback": "fallback" in sources.values(),
              "captions": captions, "sources": sources, "key": key}
    save_json(result, cache)
    return result


def describe(caps: dict) -> str:
    """One line for the report: which captions were used."""
    n = len(caps["captions"])
    n_fallback = sum(1 for s in caps.get("sources", {}).values() if s == "fallback")
    if caps.get("model") == "labels":
        return f"captions from the digits' labels (e.g. {next(iter(caps['captions'].values()))!r}) for all {n} images"
    if not caps.get("fallback"):
        return f"BLIP captions ({caps['model']}) for all {n} images"
    prompt = next((t for k, t in caps["captions"].items() if caps["sources"].get(k) == "fallback"), "?")
    return f"fixed fallback prompt {prompt!r} for {n_fallback} of {n} images (no BLIP captions)"


def check_captions_for_lora(cfg: Config, caps: dict) -> None:
    """Refuse to train LoRA on fallback captions unless ``captions.allow_fallback_for_lora``."""
    if caps.get("fallback") and not cfg.captions.get("allow_fallback_for_lora", False):
        raise CaptionsError(
            f"LoRA training refused: the captions are fallbacks ({describe(caps)}); {caps['status']}\n"
            "Make BLIP available (internet access once, or captions.model_id set to a local folder) and "
            "run notebook 01 again, or set captions.allow_fallback_for_lora: true to train on the fixed prompt.")
