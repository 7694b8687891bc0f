"""Data preparation: sources -> square RGB images -> deterministic split -> frozen test masks.

Layout written under ``paths(cfg).data`` (data/<preset>/, ignored by git)::

    images/{train,val,test}/<name>.png   8-bit RGB, cfg.data.image_size square
    test_masks/<name>.png                255 = hole; made once, reused by every method
    input_files.json                     every input folder's files (path, size, mtime_ns) when prepared
    index.json                           splits, per-test-image mask kind and hole fraction,
                                         the source and the counts of skipped/converted files

Sources (``cfg.data.source``): ``bundled`` (random crops of the photos that scikit-image and
matplotlib ship: offline), ``folder`` (any images under ``cfg.data.folder``) and ``hub`` (a
datasets-hub id, e.g. CelebA-HQ for ``full``). Taught in notebook 01.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from helpers.course.ddpm_inpainting import masked_image  # noqa: F401  (x * (1 - m), taught in 03)
from helpers.course.masks import GENERATOR_VERSION, generate_mask
from helpers.study.config import Config
from helpers.study.files import (
    load_json,
    load_png,
    load_pngs,
    parallel_map,
    paths,
    png_workers,
    save_json,
    save_mask_png,
    save_png,
    shown_path,
    swap_in,
)
from helpers.study.data.masks import hole_fraction, random_mask, validate_mask
from helpers.study.methods import method_label
from helpers.study.runtime import progress

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}


SPLITS = ("train", "val", "test")


HUB_TIMEOUT_S = 3.0   # one connection attempt decides "no hub" for the whole process


class BadImageError(ValueError):
    """An input file that cannot be used as an image; the message names the file and why."""


@dataclass
class Report:
    """What happened to every input file, by outcome: each file is either kept or skipped (with the
    reason); a kept file may also have been converted (and how), upscaled, or centre-cropped (with
    the fraction of its area kept). ``files == kept + sum(skipped.values())`` always."""
    files: int = 0
    kept: int = 0
    converted: Counter = field(default_factory=Counter)   # e.g. {"grayscale->RGB": 3}
    skipped: Counter = field(default_factory=Counter)     # e.g. {"unreadable or corrupt": 1}
    upscaled: int = 0                                     # short side below the prepared size
    cropped: int = 0                                      # centre crop dropped part of the image
    min_kept_fraction: float = 1.0                        # smallest area fraction a crop kept
    sizes: list = field(default_factory=list)             # short side of every kept input (px)
    examples: dict = field(default_factory=dict)          # reason -> first file seen

    def note(self, table: Counter, reason: str, name: str) -> None:
        table[reason] += 1
        self.examples.setdefault(reason, name)

    def skip(self, reason: str, name: str) -> None:
        self.files += 1
        self.note(self.skipped, reason, name)

    def summary(self) -> str:
        return inputs_summary(self.to_dict())

    def to_dict(self) -> dict:
        sizes = sorted(self.sizes)
        return {"files": self.files, "kept": self.kept, "converted": dict(self.converted),
                "upscaled": self.upscaled, "cropped": self.cropped, "min_kept_fraction": self.min_kept_fraction,
                "skipped": dict(self.skipped), "examples": self.examples,
                "source_short_side": ({"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]}
                                      if sizes else None)}


def inputs_summary(r: dict) -> str:
    """One line from an input report (:meth:`Report.to_dict`, saved as index.json's ``inputs``)."""
    ex = r.get("examples", {})
    parts = [f"{r['files']} inputs: kept {r['kept']}"]
    parts += [f"converted {n} ({why})" for why, n in r["converted"].items()]
    if r["upscaled"]:
        parts.append(f"upscaled {r['upscaled']} (e.g. {ex.get('upscaled')})")
    if r["cropped"]:
        parts.append(f"centre-cropped {r['cropped']} (smallest kept fraction {r['min_kept_fraction']:.0%})")
    parts += [f"skipped {n} ({why}, e.g. {ex.get(why)})" for why, n in r["skipped"].items()]
    return ", ".join(parts)


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
    shown = shown_path(path)
    if not path.is_file():
        raise BadImageError(f"{shown}: file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                raw = str(im.tile[0].args) if im.tile else ""
                im.load()
                if im.mode in ("RGB", "RGBA") and ";16" in raw and report is not None:
                    # PIL reads 16-bit-per-channel colour PNGs as 8-bit, keeping the high byte
                    report.note(report.converted, f"{16 * len(im.mode)}-bit {im.mode}->8-bit (high byte)", shown)
                return to_rgb_uint8(im, shown, report)
    except BadImageError:
        raise
    except Exception as e:  # PIL raises many types for broken files
        why = str(e).replace(str(path), shown)
        raise BadImageError(f"{shown}: cannot be read as an image ({type(e).__name__}: {why})") from e


def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (area-averaging when shrinking), then centre-crop square."""
    h, w = img.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    pil = Image.fromarray(img).resize((nw, nh), Image.Resampling.BICUBIC if s > 1 else Image.Resampling.LANCZOS)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(pil, dtype=np.uint8)[top:top + size, left:left + size].copy()


def admit(img: np.ndarray, name: str, size: int, report: Report, min_size: int = 8,
          min_kept_fraction: float = 0.0) -> np.ndarray | None:
    """Resize + centre-crop one input to ``size``, counting what that does, or refuse it (None).

    Refused (and counted, with the reason): a short side below ``min_size`` px, or a centre crop
    that would keep less than ``min_kept_fraction`` of the image's area. Counted: upscaled (short
    side below ``size``), centre-cropped (with the fraction of the area kept)."""
    h, w = img.shape[:2]
    kept_fraction = min(h, w) / max(h, w)          # the centre crop keeps a short x short square
    report.files += 1
    if min(h, w) < min_size:
        report.note(report.skipped, f"smaller than data.min_size ({min_size} px)", f"{name} ({w}x{h})")
        return None
    if kept_fraction < min_kept_fraction:
        report.note(report.skipped, f"centre crop would keep under data.min_kept_fraction ({min_kept_fraction:g})",
                    f"{name} ({w}x{h}, {kept_fraction:.0%} kept)")
        return None
    report.kept += 1
    report.sizes.append(min(h, w))
    if min(h, w) < size:
        report.upscaled += 1
        report.examples.setdefault("upscaled", f"{name} ({w}x{h} -> {size})")
    if kept_fraction < 1.0:
        report.cropped += 1
        report.min_kept_fraction = min(report.min_kept_fraction, kept_fraction)
    return resize_center_crop(img, size)


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


def bundled_crops(n: int, size: int, seed: int, report: Report | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``n`` random square crops (random photo, side 35-100% of the short side), resized to ``size``."""
    report = report if report is not None else Report()
    photos = bundled_photos()
    rng = np.random.default_rng(seed)
    for i in range(n):
        pname, img = photos[int(rng.integers(len(photos)))]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[top:top + side, left:left + side]
        yield f"{pname}_{i:04d}", admit(crop, f"{pname}_{i:04d}", size, report)


def image_name(path: Path, folder: Path) -> str:
    """The name a file under ``folder`` is prepared as (``<name>.png``): its path without the extension,
    sub-folders joined with '__' (``a/b.jpg`` -> ``a__b``). Two files with one name are refused
    (:func:`check_unique_names`)."""
    return Path(path).relative_to(folder).with_suffix("").as_posix().replace("/", "__")


def image_files(folder: Path, every: Sequence[Path] | None = None) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted), by extension."""
    every = sorted(p for p in Path(folder).rglob("*") if p.is_file()) if every is None else every
    return [p for p in every if p.suffix.lower() in IMAGE_EXTENSIONS]


def folder_images(folder: Path, size: int, report: Report, limit: int | None = None, min_size: int = 8,
                  min_kept_fraction: float = 0.0) -> Iterator[tuple[str, np.ndarray]]:
    """Every image under ``folder`` (recursively, sorted); every other file, bad file or refused
    image is counted in ``report`` with its reason (see :func:`admit`)."""
    if folder is None or str(folder) in ("", "."):
        raise ValueError("data.folder is not set: with data.source: folder, set data.folder to the folder "
                         "holding your images (e.g. --set data.folder=/path/to/images)")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.folder {folder} does not exist or is not a folder")
    every = sorted(p for p in folder.rglob("*") if p.is_file())
    files = image_files(folder, every)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    for p in every:
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            report.skip(f"not an image file ({p.suffix.lower() or 'no extension'})", shown_path(p))
    seen = 0
    for p in files:
        if limit is not None and seen >= limit:
            report.skip("beyond data.num_images", shown_path(p))
            continue
        try:
            img = read_image(p, report)
        except BadImageError as e:
            log.warning("skipping %s", e)
            report.skip("unreadable or corrupt", shown_path(p))
            continue
        out = admit(img, shown_path(p), size, report, min_size, min_kept_fraction)
        if out is None:
            continue
        seen += 1
        yield image_name(p, folder), out


@functools.cache
def hub_unreachable_reason() -> str | None:
    """None when the Hugging Face hub can be reached, else why not. Decided once per process:
    ``HF_HUB_OFFLINE`` set -> offline; otherwise one TCP connection to the hub's endpoint
    (``HF_ENDPOINT``) within :data:`HUB_TIMEOUT_S` seconds, name resolution included."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
            result.append(None)
        except OSError as e:
            result.append(f"{host}:{port} cannot be reached ({type(e).__name__}: {e})")

    t = threading.Thread(target=attempt, daemon=True)   # a thread: name resolution has no timeout of its own
    t.start()
    t.join(HUB_TIMEOUT_S + 0.5)
    return result[0] if result else f"{host}:{port} did not answer within {HUB_TIMEOUT_S:.0f} s"


def hub_images(hub_id: str, split: str, key: str, size: int, cache: Path, report: Report,
               limit: int | None = None, min_size: int = 8, min_kept_fraction: float = 0.0,
               prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Images of a datasets-hub dataset (downloaded once into data/cache/), or of a local data set
    folder in a format ``datasets.load_dataset`` reads (parquet files, an imagefolder)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is in requirements.txt
        raise ImportError("data.source = hub needs the `datasets` package (pip install datasets)") from e
    offline = None if Path(hub_id).expanduser().exists() else hub_unreachable_reason()
    if offline and not any((cache / "datasets").glob(f"{hub_id.replace('/', '___')}*")):
        raise RuntimeError(
            f"could not load dataset {hub_id!r} (split {split!r}): the Hugging Face hub is not reachable "
            f"({offline}) and it is not in the cache {cache / 'datasets'}.\nIt needs internet access once. "
            "Offline, download the images elsewhere and use data.source: folder with data.folder: <path>.")
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
    seen = 0
    for i in range(len(ds)):
        name = f"{prefix}{i:06d}"
        if limit is not None and seen >= limit:
            break
        try:
            img = to_rgb_uint8(ds[i][key], f"{hub_id}[{split}][{i}]", report)
        except Exception as e:
            report.skip(f"unreadable ({type(e).__name__})", f"{hub_id}[{split}][{i}]")
            continue
        out = admit(img, f"{hub_id}[{split}][{i}]", size, report, min_size, min_kept_fraction)
        if out is not None:
            seen += 1
            yield name, out


# ---------------------------------------------------------------- split + masks
def split_names(names: list[str], fractions: dict, seed: int,
                fixed_test: list[str] | None = None) -> dict[str, list[str]]:
    """Deterministic split: shuffle sorted names with ``seed`` and cut by fractions (test gets >= 1).

    With ``fixed_test`` (a source's own held-out split, or the images the user brought masks for)
    that is the test set, and ``names`` are cut into train and val only."""
    names = sorted(names)
    if len(names) < (2 if fixed_test else 3):
        raise ValueError(f"need at least 3 images to split into train/val/test, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    if fixed_test:
        n_val = max(1, round(len(names) * fractions["val"] / (fractions["train"] + fractions["val"])))
        return {"test": sorted(fixed_test), "val": sorted(shuffled[:n_val]), "train": sorted(shuffled[n_val:])}
    total = sum(fractions[s] for s in SPLITS)
    n_test = max(1, round(len(names) * fractions["test"] / total))
    n_val = max(1, round(len(names) * fractions["val"] / total))
    return {"test": sorted(shuffled[:n_test]), "val": sorted(shuffled[n_test:n_test + n_val]),
            "train": sorted(shuffled[n_test + n_val:])}


def _fingerprint(cfg: Config, input_files: dict | None = None) -> str:
    """Hash of everything that determines the prepared data: a change re-prepares it. That is the
    settings (seed, ``data``, the mask generator's version) and, for every folder read
    (``input_files``, from :func:`input_files`), each file's relative path, size and modification
    time (mtime_ns): a cheap ``stat`` per file, no content is read. The bundled and hub sources are
    fingerprinted by their settings only (the hub's data sets are cached by ``datasets``)."""
    keys = {"seed": cfg.seed, "data": cfg.data, "mask_generator": GENERATOR_VERSION}
    if input_files:
        keys["input_files"] = input_files
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_folders(cfg: Config) -> dict[str, Path]:
    """The folders the prepared data is read from, by setting: ``data.folder`` (with data.source:
    folder), ``data.test_source.folder`` and ``data.test_masks_folder``, where set."""
    d, out = cfg.data, {}
    if d.source == "folder" and d.get("folder"):
        out["data.folder"] = Path(d.folder)
    ts = d.get("test_source")
    if isinstance(ts, dict) and ts.get("folder"):
        out["data.test_source"] = Path(ts["folder"]).expanduser()
    if d.get("test_masks_folder"):
        out["data.test_masks_folder"] = Path(d.test_masks_folder).expanduser()
    return out


def input_files(cfg: Config) -> dict[str, dict[str, list[int]]]:
    """Every file under each of :func:`input_folders` (recursively, non-images too: the input report
    counts them) as setting -> {relative path: [size in bytes, mtime_ns]}. A folder that does not
    exist lists nothing (reading it then fails and says so)."""
    out = {}
    for key, folder in input_folders(cfg).items():
        files = {}
        if folder.is_dir():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    st = p.stat()
                    files[p.relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
        out[key] = files
    return out


def input_changes(before: dict, now: dict) -> str:
    """What changed between two :func:`input_files` listings, per folder, e.g.
    ``data.folder changed: +3 files, -1 file, 2 rewritten (size or mtime)``; "" when nothing did."""
    parts = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key) or {}, now.get(key) or {}
        added, removed = len(b.keys() - a.keys()), len(a.keys() - b.keys())
        rewritten = sum(a[f] != b[f] for f in a.keys() & b.keys())
        count = {n: f"{n} file{'s' if n != 1 else ''}" for n in (added, removed)}
        bits = ([f"+{count[added]}"] if added else []) + ([f"-{count[removed]}"] if removed else []) \
            + ([f"{rewritten} rewritten (size or mtime)"] if rewritten else [])
        if bits:
            parts.append(f"{key} changed: {', '.join(bits)}")
    return "; ".join(parts)


def check_unique_names(cfg: Config) -> None:
    """Refuse, before anything is staged, two input files that would be prepared under one name
    (:func:`image_name`: ``twin.png`` and ``twin.jpg``; ``a/b.png`` and ``a__b.png``; a test-source
    file ``x.png`` and a training file ``test_x.png``), or two masks for one name. Raises
    ``ValueError`` naming the name and its files, and how to fix it."""
    names: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    for key, folder in input_folders(cfg).items():
        if not folder.is_dir():
            continue                                    # reading it says what is wrong
        if key == "data.test_masks_folder":
            for p in sorted(folder.rglob("*.[pP][nN][gG]")):
                if p.is_file():
                    masks.setdefault(image_name(p, folder), []).append(p)
            continue
        prefix = "test_" if key == "data.test_source" else ""
        for p in image_files(folder):
            names.setdefault(prefix + image_name(p, folder), []).append(p)
    for what, found in (("image", names), ("mask", masks)):
        twins = {n: ps for n, ps in found.items() if len(ps) > 1}
        if twins:
            listed = "; ".join(f"{n!r}: {' and '.join(shown_path(p) for p in ps)}"
                               for n, ps in sorted(twins.items())[:5])
            raise ValueError(
                f"{len(twins)} {what} name(s) used by more than one file ({listed}"
                f"{'; ...' if len(twins) > 5 else ''}). Every {what} is prepared as <name>.png (its path without "
                "the extension, sub-folders joined with '__'), so names must be unique: rename one file of each "
                "pair (e.g. twin.jpg -> twin_2.jpg) and prepare again. Nothing was changed.")


def _complete(folder: Path, index: dict) -> bool:
    """Every file the index names is on disk (images of every split, the frozen test masks)."""
    return (all((folder / "images" / s / f"{n}.png").is_file() for s in SPLITS for n in index["splits"][s])
            and all((folder / "test_masks" / f"{n}.png").is_file() for n in index["splits"]["test"]))


def _items(cfg: Config, P, report: Report, split: str | None = None, prefix: str = "", limit=None):
    """The configured source's images as (name, uint8 HxWx3 at data.image_size), counted in ``report``,
    and how many there will be at most (the progress bar's total: the files found, not the cap)."""
    d = cfg.data
    admit_kw = {"min_size": d.get("min_size", 8), "min_kept_fraction": d.get("min_kept_fraction", 0.0)}
    if d.source == "bundled":
        return bundled_crops(d.num_images, d.image_size, cfg.seed, report), d.num_images
    if d.source == "folder":
        if not d.get("folder"):
            raise ValueError("data.folder is not set: with data.source: folder, set data.folder to the folder "
                             "holding your images (e.g. --set data.folder=/path/to/images)")
        items = folder_images(Path(d.folder), d.image_size, report, d.num_images, **admit_kw)
        found = len(image_files(d.folder)) if Path(d.folder).is_dir() else 0
        return items, found if d.num_images is None else min(found, d.num_images)
    if d.source == "hub":
        if not d.get("hub_id"):
            raise ValueError("data.hub_id is not set: with data.source: hub, set data.hub_id to a datasets-hub id "
                             "or a local data set folder")
        n = d.num_images if limit is None else limit
        return hub_images(d.hub_id, split or d.hub_split, d.hub_image_key, d.image_size, P.cache, report,
                          n, prefix=prefix, **admit_kw), n
    raise ValueError(f"data.source must be bundled, folder or hub, got {d.source!r}")


def _test_source(cfg: Config, P, report: Report) -> tuple[Iterator | None, str | None]:
    """``data.test_source``: test images from a source of their own, outside the training data (e.g.
    faces that ``google/ddpm-celebahq-256`` never saw, since it was trained on CelebA-HQ). ``null``:
    none (the test set is data.hub_test_split or a seeded cut, as before); ``{folder: PATH}``: every
    image under PATH; ``{hub_id: ID, split: NAME}`` (optional ``image_key``): a split of a datasets-hub
    set or a local data set folder. Read with the same size and admission rules as the training
    images, capped at data.max_test_images, named ``test_<name>``; masks are generated as for any
    test set (or read from data.test_masks_folder). Returns (items, description) or (None, None)."""
    d, ts = cfg.data, cfg.data.get("test_source")
    if not ts:
        return None, None
    admit_kw = {"min_size": d.get("min_size", 8), "min_kept_fraction": d.get("min_kept_fraction", 0.0)}
    if not isinstance(ts, dict) or bool(ts.get("folder")) == bool(ts.get("hub_id")):
        raise ValueError("data.test_source must be null, {folder: PATH} or {hub_id: ID, split: NAME}, "
                         f"got {ts!r}")
    if ts.get("folder"):
        items = ((f"test_{n}", img) for n, img in folder_images(Path(ts["folder"]).expanduser(), d.image_size, report,
                                                               d.max_test_images, **admit_kw))
        return items, f"the folder {ts['folder']} (data.test_source, outside the training images)"
    split = ts.get("split") or "test"
    items = hub_images(ts["hub_id"], split, ts.get("image_key") or d.hub_image_key, d.image_size, P.cache, report,
                       d.max_test_images, prefix="test_", **admit_kw)
    return items, f"{ts['hub_id']} split {split!r} (data.test_source, outside the training images)"


def _user_masks(folder: Path, size: int) -> dict[str, Path]:
    """data.test_masks_folder: PNG masks by name (sub-folders joined with '__', as image names are)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"data.test_masks_folder {folder} does not exist or is not a folder")
    found = {image_name(p, folder): p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() == ".png"}
    if not found:
        raise FileNotFoundError(f"data.test_masks_folder {folder} holds no .png mask "
                                f"({size}x{size}, white = hole, matched to images by file name)")
    return found


def resolution_note(cfg: Config, index: dict) -> dict:
    """At which size each method sees the data and each metric is computed, in plain words (slides)."""
    size, sd = index["image_size"], cfg.sd.resolution
    src = (index.get("inputs") or {}).get("source_short_side")
    src_txt = (f"source images' short side {src['min']}-{src['max']} px (median {src['median']})"
               if src else "source sizes unknown")
    sd_txt = (f"SD 1.5 works at {sd} px: it saw the {size} px prepared images upsampled to {sd} px "
              f"(bicubic) and its outputs were downsampled back to {size} px"
              if sd > size else f"SD 1.5 works at {sd} px, the prepared size or less")
    return {"prepared_px": size, "metrics_px": size, "sd_px": sd, "sd_upsampled": sd > size,
            "source_short_side": src,
            "text": (f"Images prepared at {size} px ({src_txt}); every metric of every method is computed at "
                     f"{size} px. The DDPM works at {size} px. {sd_txt}.")}


def _read_sources(cfg: Config, P, report: Report, stage: Path, held_out: str | None,
                  test_items=None) -> tuple[list[str], list[str]]:
    """Stage 1: the source's images (and its own test split, or ``data.test_source``'s images), resized and
    cropped to the preset's square size, written to ``stage/images/_all`` as they are read.
    Returns (names, held-out test names)."""
    d = cfg.data
    names, fixed_test = [], []
    sources = [(*_items(cfg, P, report), names)]
    if held_out:
        sources.append((*_items(cfg, P, report, split=held_out, prefix=f"{held_out}_", limit=d.max_test_images),
                        fixed_test))
    if test_items is not None:          # data.test_source: the test images come from there
        sources.append((test_items, None, fixed_test))
    for items, total, out in sources:
        for name, img in progress(items, desc=f"reading {d.source} images", total=total):
            save_png(img, stage / "images" / "_all" / f"{name}.png")
            out.append(name)
    return names, fixed_test


def _make_splits(cfg: Config, names: list[str], fixed_test: list[str], user_masks: dict | None,
                 stage: Path) -> dict[str, list[str]]:
    """Stage 2: a deterministic split by seed, capped; the test set is the source's held-out split,
    the images the user brought masks for, or a seeded cut. The staged images move to their split."""
    d = cfg.data
    if user_masks is not None:
        pool = fixed_test or names
        fixed_test = sorted(set(pool) & set(user_masks))
        if not fixed_test:
            raise ValueError(f"no mask in data.test_masks_folder matches an image name (masks e.g. "
                             f"{sorted(user_masks)[:3]}, images e.g. {sorted(pool)[:3]})")
        names = [n for n in names if n not in set(fixed_test)]
    splits = split_names(names, d.split, cfg.seed, fixed_test=fixed_test or None)
    for s, limit in {"test": d.max_test_images, "val": d.max_val_images}.items():
        if limit is not None and len(splits[s]) > limit:
            splits["train"] = sorted(splits["train"] + splits[s][limit:])
            splits[s] = splits[s][:limit]
    for s in SPLITS:
        (stage / "images" / s).mkdir(parents=True, exist_ok=True)
        for name in splits[s]:
            os.replace(stage / "images" / "_all" / f"{name}.png", stage / "images" / s / f"{name}.png")
    shutil.rmtree(stage / "images" / "_all", ignore_errors=True)   # held-out images beyond the cap
    return splits


def _freeze_test_masks(cfg: Config, test_names: list[str], user_masks: dict | None, stage: Path) -> dict:
    """Stage 3: the frozen test masks: the user's (validated like ours), or kinds cycled so every kind
    is represented, one generator per image. Returns name -> {kind, hole_fraction}."""
    d = cfg.data
    test_masks, kinds = {}, list(d.masks.kinds)
    for i, name in enumerate(test_names):
        if user_masks is not None:
            kind = "user"
            m = load_mask_file(user_masks[name], (d.image_size, d.image_size))[0].numpy()
        else:
            rng = np.random.default_rng([cfg.seed, 1, i])
            kind = kinds[i % len(kinds)]
            m = generate_mask(d.image_size, kind, rng, d.masks.min_hole, d.masks.max_hole)
        save_mask_png(m, stage / "test_masks" / f"{name}.png")
        test_masks[name] = {"kind": kind, "hole_fraction": hole_fraction(m)}
    return test_masks


def _reusable_index(P, fp: str, settings_fp: str, files: dict, force: bool) -> tuple[dict | None, str]:
    """(the prepared index, "") when it can be reused as it is; else (None, why it is prepared again)."""
    index_path, files_path = P.data / "index.json", P.data / "input_files.json"
    if force or not index_path.is_file():
        return None, "forced" if force else "no prepared data set yet"
    index = load_json(index_path)
    if index.get("fingerprint") == fp and _complete(P.data, index):
        counted = ", ".join(f"{len(v)} files in {k}" for k, v in files.items())
        log.info("reusing %s: same settings%s", P.relative(P.data), f" and same {counted}" if files else "")
        return index, ""
    if index.get("fingerprint") == fp:
        return None, "files of the prepared set are missing"
    # say what changed, where the earlier run wrote its inputs down
    before = load_json(files_path) if files_path.is_file() else {}
    changes = ([] if before.get("settings") in (settings_fp, None) else ["settings changed"]) \
        + ([input_changes(before["files"], files)] if "files" in before else [])
    return None, "; ".join(c for c in changes if c) or "settings or input files changed"


def prepare_dataset(cfg: Config, force: bool = False, root: Path | None = None) -> dict:
    """Build data/<preset>/ from ``cfg.data`` (idempotent: reuses a matching earlier run).

    A prepared set is reused only with the same settings and, for a folder source (and
    data.test_source / data.test_masks_folder folders), the same files: a file added, removed or
    rewritten (its size or mtime changed) prepares the set again, so the input report always
    describes the folders as they are (see :func:`_fingerprint`). The log says which and why
    ("same settings and same 12 files in data.folder"; "data.folder changed: +3 files"). Two input
    files with one name (``twin.png``, ``twin.jpg``) are refused by name before anything is staged.

    Nothing is lost on a failure: the new data set is built in a staging folder beside the live
    one and swapped in only after it is complete, index.json last. A reader that fails midway (a
    missing folder, the hub offline, a crash) leaves the previous data set as it was; an index
    whose files are not all on disk is never reused. Returns the index (also saved as index.json):
    splits, test-mask metadata, the input report and the resolution note.
    """
    P = paths(cfg, root)
    files = input_files(cfg)
    fp, settings_fp = _fingerprint(cfg, files), _fingerprint(cfg)
    index, why = _reusable_index(P, fp, settings_fp, files, force)
    if index is not None:
        return index
    log.info("preparing %s: %s", P.relative(P.data), why)
    check_unique_names(cfg)                 # before anything is staged: two files, one name
    d, report = cfg.data, Report()
    user_masks = _user_masks(d.test_masks_folder, d.image_size) if d.get("test_masks_folder") else None
    test_items, test_desc = _test_source(cfg, P, report)
    held_out = d.get("hub_test_split") if d.source == "hub" and test_items is None else None
    # 0. a fresh staging folder (a crashed earlier attempt's is removed)
    stage = P.data / ".staging"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        # 1. images from the source; 2. splits; 3. frozen test masks; the index
        names, fixed_test = _read_sources(cfg, P, report, stage, held_out, test_items)
        splits = _make_splits(cfg, names, fixed_test, user_masks, stage)
        test_masks = _freeze_test_masks(cfg, splits["test"], user_masks, stage)
        index = {"fingerprint": fp, "preset": cfg.preset, "source": d.source, "image_size": d.image_size,
                 "test_split": (test_desc if test_desc else
                                f"{d.hub_id} split {held_out!r} (the source's own held-out split)" if held_out
                                else f"a seeded cut of the {d.source} images"),
                 "test_masks_from": (str(d.test_masks_folder) if user_masks is not None
                                     else "generated (data.masks.kinds)"),
                 "splits": splits, "test_masks": test_masks, "inputs": report.to_dict()}
        index["resolution"] = resolution_note(cfg, index)
        save_json({"settings": settings_fp, "files": files}, stage / "input_files.json")
        save_json(index, stage / "index.json")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)   # the live data set was never touched
        raise
    # 4. swap in, index last
    swap_in(stage, P.data, ["images", "test_masks", "input_files.json", "index.json"])
    log.info("prepared %s: %s", P.relative(P.data), report.summary())
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
    return torch.from_numpy(validate_mask(arr, image_shape, name=str(path)))[None]


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
            arr, kind = random_mask(image.shape[-1], rng, m.kinds, m.min_hole, m.max_hole)
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


def composite(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste the known pixels back: mask * pred + (1 - mask) * image."""
    return mask * pred + (1 - mask) * image


# ---------------------------------------------------------------- predictions shared by all methods
def write_predictions(cfg: Config, method: str, names: Iterable[str], images: torch.Tensor | list,
                      meta: dict | None = None, root: Path | None = None) -> Path:
    """Save a method's test-set predictions as PNG (lossless: JPEG would change FID) + meta.json.

    ``images`` are (N, 3, H, W) in [-1, 1] at the data resolution, known pixels already composited.
    ``meta`` records the weights used and runtime (seconds_per_image, images_per_s,
    peak_memory_bytes, trainable_params...). Existing meta keys are kept unless overwritten.
    """
    label = method_label(method)             # ValueError for an unknown method
    out = paths(cfg, root).predictions(method)
    names = list(names)
    for name, img in zip(names, images):
        save_png(img, out / f"{name}.png")
    meta_path = out / "meta.json"
    merged = load_json(meta_path) if meta_path.is_file() else {}
    merged.update({"method": method, "label": label, "preset": cfg.preset,
                   "resolution": cfg.data.image_size, **(meta or {})})
    merged["n_images"] = len(list(out.glob("*.png")))
    save_json(merged, meta_path)
    return out


def read_predictions(cfg: Config, method: str, names: Iterable[str],
                     root: Path | None = None) -> tuple[torch.Tensor, dict]:
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


def read_meta(cfg: Config, method: str, root: Path | None = None) -> dict:
    """The meta.json of a method's predictions ({} when it has none): the weights, settings and sizes
    of the model that actually ran (e.g. ``latent_px`` of the SD methods)."""
    path = paths(cfg, root).predictions(method) / "meta.json"
    return load_json(path) if path.is_file() else {}


def demo_bad_inputs(folder: Path) -> Path:
    """Write one file of each troublesome kind into ``folder`` (notebook 01 and the tests):
    good RGB, grayscale, RGBA, 16-bit grayscale, 48-bit RGB, a 10x10 thumbnail, a 2000x100 strip,
    a corrupt JPEG, an empty file and a text file."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "good_rgb.png")
    Image.fromarray(rgb[..., 0]).save(folder / "grayscale.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257), mode=None).save(folder / "gray16.png")
    cv2.imwrite(str(folder / "rgb48.png"), rgb.astype(np.uint16) * 257)        # 16 bits per channel
    Image.fromarray(rgb[:10, :10]).save(folder / "thumbnail_10x10.png")
    Image.fromarray(np.tile(rgb[:, :, :], (3, 42, 1))[:100, :2000]).save(folder / "strip_2000x100.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg"
                                         + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder
