"""Reading inputs: any image file as square RGB uint8 (conversions, crops and skips counted in a
:class:`Report`), and the three sources of ``cfg.data.source``: ``bundled`` (random crops of the photos
that scikit-image and matplotlib ship: offline), ``digits`` (scikit-learn's handwritten digits, the
``mini`` preset's real small problem: offline, labelled), ``folder`` (any images under ``cfg.data.folder``)
and ``hub`` (a datasets-hub id, e.g. CelebA-HQ for ``full``). Taught in notebook 01; :mod:`.splits` turns
them into the prepared data set."""
from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from helpers.study.files import shown_path

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}


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


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_DOMAINS = ("source", "target")
DIGIT_HALVES_SEED = 20260101       # the cut into the two halves never changes with the preset's seed


def digit_label(name: str) -> int:
    """The label of a prepared digit, from its name ``digit_<index>_<label>`` (also ``test_...``)."""
    tail = name.rsplit("_", 1)[-1]
    if not (name.split("_")[-3:-2] and tail.isdigit() and len(tail) == 1):
        raise ValueError(f"{name!r} is not a digit's name (digit_<index>_<label>)")
    return int(tail)


def digit_caption(label: int) -> str:
    """The caption of a digit, in place of BLIP's: ``a handwritten seven``."""
    return f"a handwritten {DIGIT_WORDS[int(label)]}"


def bold(img: np.ndarray) -> np.ndarray:
    """Strokes made bold: a 3x3 grey dilation (each pixel takes the brightest of its 8 neighbours and itself)
    of an (H, W) image or of each of an (N, H, W, 1) stack."""
    from scipy.ndimage import grey_dilation

    return grey_dilation(img, size=(3, 3) if img.ndim == 2 else (1, 3, 3, 1))


def digit_images(domain: str, size: int, report: Report | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """scikit-learn's 1,797 handwritten digits (8x8 px, 17 grey levels, bundled: no download) as RGB uint8
    at ``size`` (bilinear), white ink on black, named ``digit_<index>_<label>``.

    They are cut once (a fixed seed, whatever the preset's) into two halves of all ten classes, the way a
    pretrained model's data and a study's data differ: ``source`` is one half as written (what the mini
    preset's pretrained stand-ins were trained on), ``target`` the other half drawn **bold**
    (:func:`bold`, at twice the size, then averaged down): a style the stand-ins never saw, as CelebA-HQ's faces are a style on which SD 1.5 was
    not fine-tuned."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    if domain not in DIGIT_DOMAINS:
        raise ValueError(f"data.digits_domain must be one of {DIGIT_DOMAINS}, got {domain!r}")
    report = report if report is not None else Report()
    raw = load_digits()
    order = np.random.default_rng(DIGIT_HALVES_SEED).permutation(len(raw.images))
    half = np.sort(order[: len(order) // 2] if domain == "source" else order[len(order) // 2:])
    x = torch.tensor(raw.images[half], dtype=torch.float32)[:, None] / 16.0            # 0..16 -> [0, 1]
    if domain == "target":          # bold: a 3x3 dilation drawn at twice the size, then averaged down
        x = F.interpolate(x, size=(2 * size, 2 * size), mode="bilinear", align_corners=False).clamp(0, 1)
        x = F.avg_pool2d(torch.from_numpy(bold(x[:, 0].numpy()[..., None])[..., 0])[:, None], 2)
    else:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    for i, img in zip(half, (x[:, 0].numpy() * 255).round().astype(np.uint8)):
        report.files += 1
        report.kept += 1
        report.sizes.append(8)
        if size > 8:
            report.upscaled += 1
        yield f"digit_{i:04d}_{raw.target[i]}", np.repeat(img[:, :, None], 3, axis=2)


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
