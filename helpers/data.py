"""Data preparation: sources -> square RGB images -> deterministic split -> frozen test masks.

Layout written under ``paths(cfg).data`` (data/<preset>/, ignored by git)::

    images/{train,val,test}/<name>.png   8-bit RGB, cfg.data.image_size square
    test_masks/<name>.png                255 = hole; made once, reused by every method
    index.json                           splits, per-test-image mask kind and hole fraction,
                                         the source and the counts of skipped/converted files

Sources (``cfg.data.source``): ``bundled`` (random crops of the photos that scikit-image and
matplotlib ship: offline), ``folder`` (any images under ``cfg.data.folder``) and ``hub`` (a
datasets-hub id, e.g. CelebA-HQ for ``full``). Taught in notebook 01.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from . import masks as M
from .common import load_json, load_png, load_pngs, parallel_map, paths, png_workers, progress, save_json, save_mask_png, save_png
from .config import Config

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}
SPLITS = ("train", "val", "test")


class BadImageError(ValueError):
    """An input file that cannot be used as an image; the message names the file and why."""


@dataclass
class Report:
    """What happened to the inputs: counts of kept, converted and skipped files, with reasons."""
    kept: int = 0
    converted: Counter = field(default_factory=Counter)   # e.g. {"grayscale->RGB": 3}
    skipped: Counter = field(default_factory=Counter)     # e.g. {"unreadable": 1}
    examples: dict = field(default_factory=dict)          # reason -> first file seen

    def note(self, table: Counter, reason: str, name: str) -> None:
        table[reason] += 1
        self.examples.setdefault(reason, name)

    def summary(self) -> str:
        parts = [f"kept {self.kept}"]
        parts += [f"converted {n} ({r})" for r, n in self.converted.items()]
        parts += [f"skipped {n} ({r}, e.g. {self.examples[r]})" for r, n in self.skipped.items()]
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"kept": self.kept, "converted": dict(self.converted), "skipped": dict(self.skipped),
                "examples": self.examples}


# ---------------------------------------------------------------- reading any image as RGB uint8
def to_rgb_uint8(img: Image.Image, name: str = "image", report: Report | None = None) -> np.ndarray:
    """Any PIL image -> uint8 HxWx3, converting explicitly (and counting) what is not 8-bit RGB.

    * grayscale (L, 1-bit, I, I;16, F) -> replicated to 3 channels; 16-bit values scaled by 255/65535
    * RGBA / LA / palette with transparency -> composited over white (the usual web convention)
    * CMYK, YCbCr, other palettes -> RGB through PIL
    """
    def converted(reason: str) -> None:
        if report is not None:
            report.note(report.converted, reason, name)

    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
        arr = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        converted(f"{'16-bit' if peak > 255 else 'integer'} grayscale->RGB")
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("L", "1"):
        converted("grayscale->RGB")
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        converted("alpha composited over white")
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    converted(f"{mode}->RGB")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: Path, report: Report | None = None) -> np.ndarray:
    """Read a file as uint8 HxWx3. Raises :class:`BadImageError` for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return to_rgb_uint8(im, str(path), report)
    except BadImageError:
        raise
    except Exception as e:  # PIL raises many types for broken files
        raise BadImageError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from e


def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (area-averaging when shrinking), then centre-crop square."""
    h, w = img.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    pil = Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC if s > 1 else Image.Resampling.LANCZOS)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(pil, dtype=np.uint8)[top:top + size, left:left + size].copy()


# ---------------------------------------------------------------- sources
def bundled_photos() -> list[tuple[str, np.ndarray]]:
    """The colour photos that ship inside scikit-image and matplotlib (no network needed)."""
    import matplotlib.cbook
    import skimage.data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "cat",
                 "hubble_deep_field", "retina"):
        try:
            out.append((name, to_rgb_uint8(Image.fromarray(getattr(skimage.data, name)()))))
        except Exception as e:  # a data file missing from a slim install: say so, keep going
            log.warning("bundled photo %s unavailable: %s", name, e)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        out.append(("grace_hopper", to_rgb_uint8(Image.open(f))))
    if not out:
        raise RuntimeError("no bundled photo could be loaded: is scikit-image installed with its data?")
    return out


def bundled_crops(n: int, size: int, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """``n`` random square crops (random photo, side 35-100% of the short side), resized to ``size``."""
    photos = bundled_photos()
    rng = np.random.default_rng(seed)
    for i in range(n):
        pname, img = photos[int(rng.integers(len(photos)))]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[top:top + side, left:left + side]
        yield f"{pname}_{i:04d}", resize_center_crop(crop, size)


def folder_images(folder: Path, size: int, report: Report, limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Every image under ``folder`` (recursively, sorted), bad files skipped and counted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    seen = 0
    for p in files:
        if limit is not None and seen >= limit:
            break
        try:
            img = read_image(p, report)
        except BadImageError as e:
            log.warning("skipping %s", e)
            report.note(report.skipped, "unreadable or corrupt", str(p))
            continue
        if min(img.shape[:2]) < 8:
            report.note(report.skipped, "smaller than 8 px", str(p))
            continue
        seen += 1
        report.kept += 1
        stem = p.relative_to(folder).with_suffix("").as_posix().replace("/", "__")
        yield stem, resize_center_crop(img, size)


def hub_images(hub_id: str, split: str, key: str, size: int, cache: Path, report: Report,
               limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Images of a datasets-hub dataset (downloaded once into data/cache/)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is in requirements.txt
        raise ImportError("data.source = hub needs the `datasets` package (pip install datasets)") from e
    try:
        ds = datasets.load_dataset(hub_id, split=split, cache_dir=str(cache / "datasets"))
    except Exception as e:
        raise RuntimeError(
            f"could not load dataset {hub_id!r} (split {split!r}) from the Hugging Face hub: {e}\n"
            f"It needs internet access once (it is then cached in {cache / 'datasets'}). Offline, "
            "download the images elsewhere and use data.source: folder with data.folder: <path>.") from e
    if key not in ds.column_names:
        raise KeyError(f"dataset {hub_id!r} has no column {key!r} (columns: {ds.column_names}); "
                       "set data.hub_image_key")
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        try:
            img = to_rgb_uint8(ds[i][key], f"{hub_id}[{i}]", report)
        except Exception as e:
            report.note(report.skipped, f"unreadable ({type(e).__name__})", f"{hub_id}[{i}]")
            continue
        report.kept += 1
        yield f"{i:06d}", resize_center_crop(img, size)


# ---------------------------------------------------------------- split + masks
def split_names(names: list[str], fractions: dict, seed: int) -> dict[str, list[str]]:
    """Deterministic split: shuffle sorted names with ``seed`` and cut by fractions (test gets >= 1)."""
    names = sorted(names)
    if len(names) < 3:
        raise ValueError(f"need at least 3 images to split into train/val/test, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    total = sum(fractions[s] for s in SPLITS)
    n_test = max(1, round(len(names) * fractions["test"] / total))
    n_val = max(1, round(len(names) * fractions["val"] / total))
    shuffled = [names[i] for i in order]
    return {"test": sorted(shuffled[:n_test]), "val": sorted(shuffled[n_test:n_test + n_val]),
            "train": sorted(shuffled[n_test + n_val:])}


def _fingerprint(cfg: Config) -> str:
    """Hash of everything that determines the prepared data: a change re-prepares it."""
    keys = {"seed": cfg.seed, "data": cfg.data, "mask_generator": M.GENERATOR_VERSION}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_dataset(cfg: Config, force: bool = False, root: Path | None = None) -> dict:
    """Build data/<preset>/ from ``cfg.data`` (idempotent: reuses a matching earlier run).

    Returns the index (also saved as index.json): splits, test-mask metadata, input report.
    """
    P = paths(cfg, root)
    index_path = P.data / "index.json"
    fp = _fingerprint(cfg)
    if index_path.is_file() and not force:
        index = load_json(index_path)
        if index.get("fingerprint") == fp:
            return index
    d, report = cfg.data, Report()
    # 1. images from the source, resized/cropped to the preset's square size
    if d.source == "bundled":
        items = bundled_crops(d.num_images, d.image_size, cfg.seed)
    elif d.source == "folder":
        items = folder_images(Path(d.folder or ""), d.image_size, report, d.num_images)
    elif d.source == "hub":
        items = hub_images(d.hub_id, d.hub_split, d.hub_image_key, d.image_size, P.cache, report, d.num_images)
    else:
        raise ValueError(f"data.source must be bundled, folder or hub, got {d.source!r}")
    # images go to disk as they are read (a 30k-image set does not fit in memory); an earlier,
    # different preparation is removed first so no stale file survives
    for old in ("images", "test_masks"):
        shutil.rmtree(P.data / old, ignore_errors=True)
    staging = P.data / "images" / "_staging"
    names = []
    for name, img in progress(items, desc=f"reading {d.source} images", total=d.num_images):
        save_png(img, staging / f"{name}.png")
        names.append(name)
    report.kept = len(names)
    # 2. deterministic split by seed, test set capped
    splits = split_names(names, d.split, cfg.seed)
    cap = {"test": d.max_test_images, "val": d.max_val_images}
    for s, limit in cap.items():
        if limit is not None and len(splits[s]) > limit:
            splits["train"] = sorted(splits["train"] + splits[s][limit:])
            splits[s] = splits[s][:limit]
    for s in SPLITS:
        (P.data / "images" / s).mkdir(parents=True, exist_ok=True)
        for name in splits[s]:
            os.replace(staging / f"{name}.png", P.data / "images" / s / f"{name}.png")
    staging.rmdir()
    # 3. frozen test masks: kinds cycled so every kind is represented, one generator per image
    test_masks = {}
    kinds = list(d.masks.kinds)
    for i, name in enumerate(splits["test"]):
        rng = np.random.default_rng([cfg.seed, 1, i])
        kind = kinds[i % len(kinds)]
        m = M.generate_mask(d.image_size, kind, rng, d.masks.min_hole, d.masks.max_hole)
        save_mask_png(m, P.data / "test_masks" / f"{name}.png")
        test_masks[name] = {"kind": kind, "hole_fraction": M.hole_fraction(m)}
    index = {"fingerprint": fp, "preset": cfg.preset, "source": d.source, "image_size": d.image_size,
             "splits": splits, "test_masks": test_masks, "inputs": report.to_dict()}
    save_json(index, index_path)
    log.info("prepared %s: %s", P.data, report.summary())
    return index


def load_index(cfg: Config, root: Path | None = None) -> dict:
    path = paths(cfg, root).data / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 01 (data preparation) for preset "
                                f"{cfg.preset!r} first, or helpers.data.prepare_dataset(cfg)")
    return load_json(path)


def load_mask_file(path: Path, image_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Read and validate a mask PNG -> float (1, H, W) in {0, 1}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    with Image.open(path) as im:
        arr = np.asarray(im)
    return torch.from_numpy(M.validate_mask(arr, image_shape, name=str(path)))[None]


# ---------------------------------------------------------------- datasets for training and testing
class InpaintDataset(torch.utils.data.Dataset):
    """Images of one split with masks: random (train/val, seeded by (seed, epoch, index)) or frozen (test).

    Items are dicts: ``image`` (3, H, W) in [-1, 1], ``mask`` (1, H, W) in {0, 1}, ``name``, ``kind``.
    Call :meth:`set_epoch` to draw new training masks each epoch reproducibly.
    """

    def __init__(self, cfg: Config, split: str, root: Path | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.cfg, self.split, self.P = cfg, split, paths(cfg, root)
        self.index = load_index(cfg, root)
        self.names = list(self.index["splits"][split])
        self.epoch = 0
        if not self.names:
            raise ValueError(f"split {split!r} of preset {cfg.preset!r} is empty")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, i: int) -> Path:
        return self.P.data / "images" / self.split / f"{self.names[i]}.png"

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        image = load_png(self.image_path(i))
        if self.split == "test":
            mask = load_mask_file(self.P.data / "test_masks" / f"{name}.png", tuple(image.shape[1:]))
            kind = self.index["test_masks"][name]["kind"]
        else:
            m = self.cfg.data.masks
            rng = np.random.default_rng([self.cfg.seed, 2 if self.split == "train" else 3, self.epoch, i])
            arr, kind = M.random_mask(image.shape[-1], rng, m.kinds, m.min_hole, m.max_hole)
            mask = torch.from_numpy(arr)[None]
        return {"image": image, "mask": mask, "name": name, "kind": kind}


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([x["image"] for x in items]), "mask": torch.stack([x["mask"] for x in items]),
            "name": [x["name"] for x in items], "kind": [x["kind"] for x in items]}


def load_test_set(cfg: Config, root: Path | None = None) -> dict:
    """The frozen test set as tensors: images (N,3,H,W), masks (N,1,H,W), names, kinds, hole fractions."""
    ds = InpaintDataset(cfg, "test", root)
    # image + mask PNGs, decoded in parallel where the images are large enough to gain from it
    workers = png_workers(ds.image_path(0)) if len(ds) else 1
    batch = collate(parallel_map(ds.__getitem__, range(len(ds)), workers))
    batch["hole_fraction"] = [ds.index["test_masks"][n]["hole_fraction"] for n in batch["name"]]
    return batch


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x_masked = x * (1 - mask): hole pixels set to 0 (mid-grey in [-1, 1])."""
    return image * (1 - mask)


def composite(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste the known pixels back: mask * pred + (1 - mask) * image."""
    return mask * pred + (1 - mask) * image


# ---------------------------------------------------------------- predictions shared by all methods
METHODS = {  # method id -> label used in every table and figure
    "ddpm_finetuned": "DDPM fine-tuned (7-ch U-Net)",
    "ddpm_repaint": "DDPM RePaint (training-free)",
    "sd_zeroshot": "SD 1.5 inpainting (zero-shot)",
    "sd_lora": "SD 1.5 inpainting + LoRA",
    "telea": "OpenCV Telea (classical)",
}
SHORT_LABELS = {  # method id -> short human label for slides, chart axes and legends
    "ddpm_finetuned": "DDPM",
    "ddpm_repaint": "RePaint",
    "sd_zeroshot": "SD zero-shot",
    "sd_lora": "SD + LoRA",
    "telea": "Telea",
}


def write_predictions(cfg: Config, method: str, names: Iterable[str], images: torch.Tensor | list,
                      meta: dict | None = None, root: Path | None = None) -> Path:
    """Save a method's test-set predictions as PNG (lossless: JPEG would change FID) + meta.json.

    ``images`` are (N, 3, H, W) in [-1, 1] at the data resolution, known pixels already composited.
    ``meta`` records the weights used and runtime (seconds_per_image, images_per_s,
    peak_memory_bytes, trainable_params...). Existing meta keys are kept unless overwritten.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    out = paths(cfg, root).predictions(method)
    names = list(names)
    for name, img in zip(names, images):
        save_png(img, out / f"{name}.png")
    meta_path = out / "meta.json"
    merged = load_json(meta_path) if meta_path.is_file() else {}
    merged.update({"method": method, "label": METHODS[method], "preset": cfg.preset,
                   "resolution": cfg.data.image_size, **(meta or {})})
    merged["n_images"] = len(list(out.glob("*.png")))
    save_json(merged, meta_path)
    return out


def read_predictions(cfg: Config, method: str, names: Iterable[str], root: Path | None = None) -> tuple[torch.Tensor, dict]:
    """Load a method's predictions for ``names`` -> ((N, 3, H, W), meta). Missing files raise
    ``FileNotFoundError`` naming the method, how many are missing and which notebook writes them."""
    out = paths(cfg, root).predictions(method)
    names = list(names)
    missing = [n for n in names if not (out / f"{n}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"method {method!r}: {len(missing)} of {len(names)} prediction files missing in "
                                f"{out} (e.g. {missing[0]}.png); run the notebook that produces them")
    meta = load_json(out / "meta.json") if (out / "meta.json").is_file() else {"method": method}
    return load_pngs([out / f"{n}.png" for n in names]), meta


def demo_bad_inputs(folder: Path) -> Path:
    """Write one file of each troublesome kind into ``folder`` (notebook 01 and the tests):
    good RGB, grayscale, RGBA, 16-bit grayscale, a corrupt JPEG and an empty file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "good_rgb.png")
    Image.fromarray(rgb[..., 0]).save(folder / "grayscale.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257), mode=None).save(folder / "gray16.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    (folder / "empty.png").write_bytes(b"")
    return folder
