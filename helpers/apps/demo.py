"""The live demo: an interactive inpainting app and the blind human preference study, one Gradio app.

    make demo [PRESET=smoke|full] [PORT=7860]
    python -m helpers.apps.demo_ui --preset smoke|full [--port N]

It serves on 127.0.0.1 only and makes no network call: Gradio's analytics and version check are
off, the Hugging Face libraries run offline (weights come from disk or the local cache only), and
the page uses system fonts. Notebook 07 opens the same app inline; ``make report`` never starts it.

* Tab **Inpaint**: a test image (with its frozen mask) or an upload (read, converted and
  resized/cropped exactly as the data step does: :func:`helpers.data.read_image`,
  :func:`helpers.data.resize_center_crop`), a hole painted with the brush or generated (box / thin /
  medium / thick, seeded), one or several methods, steps, guidance, seed and prompt; Run shows
  the masked input, each completion with its time, and the ground truth.
* Tab **Which looks real?**: the blind two-alternative test of :mod:`helpers.report.preference` on the
  test-set completions the series saved; votes go to ``reports/<preset>/human_eval.sqlite``.

The methods, how their status is found, how they load and sample, are their records in
:mod:`helpers.study.methods`. Models are what the series saved under ``reports/<preset>/models``
plus the preset's pretrained ids; a method whose weights are missing is listed as disabled with
the reason and the command that produces them. Each model loads once, on first use, onto the GPU
when there is one. Every trained variant of notebook 04's PEFT ablation is a method too
(``<name> (PEFT)``, unchecked at start; one variant in memory at a time); the vote tab shows the
methods whose record votes (the study's five).

This module is what the app does (offline serving, models, samplers, images in and out, the handlers of
:class:`Demo`); the Gradio app itself, its server and the command line are :mod:`helpers.apps.demo_ui`.
"""
from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from helpers.apps.votes import PairScheduler, Trial
from helpers.course.masks import KINDS, generate_mask
from helpers.study import method_functions
from helpers.study import methods as registry
from helpers.study.config import Config
from helpers.study.data.dataset import composite, masked_image
from helpers.study.data.sources import BadImageError, Report, read_image, resize_center_crop
from helpers.study.data.splits import load_index, load_mask_file
from helpers.study.files import load_json, paths, to_tensor, to_uint8
from helpers.study.methods import ABLATION_PREFIX, MethodStatus, short_label
from helpers.study.runtime import get_device
from helpers.study.votes import GROUND_TRUTH, VoteStore, db_path

# no telemetry, no version check, no hub call: set only while the app is served (serving_offline)
GRADIO_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_RUN_HISTORY": "False", "DO_NOT_TRACK": "1"}


HF_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


MASK_CHOICES = ("test mask", "brush (paint it)", "box", "thin", "medium", "thick")


DISPLAY_SIDE = 512          # the editor shows small images enlarged (nearest) to about this side


HOLE_COVER = 1 / 3          # a pixel is a hole when the strokes cover at least this much of it


CSS = (".pixelated img, .pixelated canvas {image-rendering: pixelated;}\n"     # small images stay crisp
       ".enlarged img {width: 100% !important; height: 100% !important; object-fit: contain;}")


_HF_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("huggingface_hub.constants", "HF_HUB_DISABLE_TELEMETRY"),
             ("diffusers.utils.hub_utils", "HF_HUB_OFFLINE"), ("diffusers.utils.hub_utils", "HF_HUB_DISABLE_TELEMETRY"))


def _hf_modules() -> list:
    import importlib

    out = []
    for name, flag in _HF_FLAGS:
        try:
            out.append((importlib.import_module(name), flag))
        except ImportError:
            pass
    return out


@contextmanager
def serving_offline():
    """Around the serving call only: Gradio without telemetry or version check, the Hugging Face
    libraries offline (no hub call, no telemetry; weights from disk or the local cache only). Their
    flags are read once at import, so the imported modules are switched too. Everything is restored
    afterwards: importing this module changes nothing."""
    saved_env = {k: os.environ.get(k) for k in {**GRADIO_ENV, **HF_ENV}}
    os.environ.update({**GRADIO_ENV, **HF_ENV})
    try:
        with hf_offline():
            yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def hf_offline():
    """The Hugging Face libraries' offline flags for one block (loading weights on first use, serving):
    restored afterwards."""
    saved = [(mod, flag, getattr(mod, flag)) for mod, flag in _hf_modules() if hasattr(mod, flag)]
    for mod, flag, _ in saved:
        setattr(mod, flag, True)
    try:
        yield
    finally:
        for mod, flag, value in saved:
            setattr(mod, flag, value)


# ---------------------------------------------------------------- which methods can run
def method_status(cfg: Config, root: Path | None = None) -> dict[str, MethodStatus]:
    """Which methods can run with what is on disk (the study's methods of :mod:`helpers.study.methods`,
    then the preset's PEFT variants), and for the others why not and what to run. Looks at files
    only: nothing is loaded or downloaded."""
    P = paths(cfg, root)
    return {m.id: method_functions.status(cfg, P, m.id) for m in registry.all_methods(cfg)}


class MethodUnavailable(RuntimeError):
    """A method whose weights are missing; the message says which and how to produce them."""


# ---------------------------------------------------------------- models, loaded once
class Models:
    """The methods' models, each loaded on first use and kept (on the GPU when there is one)."""

    def __init__(self, cfg: Config, root: Path | None = None):
        self.cfg, self.root, self.P = cfg, root, paths(cfg, root)
        self.device = get_device(cfg)
        self.status = method_status(cfg, root)
        self._loaded: dict = {}
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()      # one model run at a time: they share one device

    def available(self) -> list[str]:
        return [m for m, s in self.status.items() if s.available]

    def loaded(self) -> dict:
        """The models loaded so far: method id -> model (a copy of the table; the models themselves)."""
        return dict(self._loaded)

    def get(self, method: str):
        with self._load_lock:
            if method not in self._loaded:
                st = self.status.get(method)
                if st is None:
                    raise MethodUnavailable(f"unknown method {method!r}: this preset has {list(self.status)}.")
                if not st.available:
                    raise MethodUnavailable(st.message())
                if method.startswith(ABLATION_PREFIX):     # one PEFT variant in memory at a time: each holds an SD
                    self._evict(ABLATION_PREFIX)
                with serving_offline():          # weights from disk or the local cache only
                    self._loaded[method] = self._load(method)
            return self._loaded[method]

    def _evict(self, prefix: str) -> None:
        """Drop the loaded models whose method starts with ``prefix`` (and free their memory)."""
        from helpers.study.runtime import release_memory

        for m in [m for m in self._loaded if m.startswith(prefix)]:
            del self._loaded[m]
        release_memory(self.device)

    def _load(self, method: str):
        return method_functions.load(self.cfg, self.P, self.device, self.root, method)

    def sampler(self, method: str, steps: int, guidance: float, prompt: str):
        """fn(images, masks, seeds, names) of the study (the method's record in helpers.study.methods)
        for one method, with this request's steps, guidance and prompt in place of the preset's."""
        model = self.get(method)
        return method_functions.sampler(self.cfg, method, model, self.device, steps, guidance, prompt)

    @torch.no_grad()
    def complete(self, method: str, image: torch.Tensor, mask: torch.Tensor, seed: int, steps: int,
                 guidance: float, prompt: str) -> torch.Tensor:
        """One completion: image (3, H, W) in [-1, 1], mask (1, H, W) {0, 1} -> (3, H, W) in [-1, 1] on
        the CPU, the known pixels exactly those of ``image``."""
        x, m = image[None].float(), mask[None].float()
        fn = self.sampler(method, steps, guidance, prompt)
        with self._run_lock, serving_offline():
            out = fn(x, m, [seed], ["upload"])
        # x_hat = m * pred + (1 - m) * x: the known pixels exactly, whatever the method did
        return composite(out.detach().float().cpu(), x, m)[0]


# ---------------------------------------------------------------- images in, images out
def read_upload(path: str | Path, size: int, grey: bool = False) -> tuple[np.ndarray, str]:
    """An uploaded file -> uint8 (size, size, 3), as the data step reads its inputs: any format and
    mode converted to 8-bit RGB (:func:`helpers.data.read_image`), then the short side resized and
    centre-cropped (:func:`helpers.data.resize_center_crop`). ``grey`` (models trained on digits: the mini
    preset): converted to grey (ITU-R 601 luma) and, when the picture is mostly light (dark ink on paper),
    inverted to white ink on black as the digits are. Raises BadImageError with a message."""
    report = Report()
    img = read_image(Path(path), report)
    if min(img.shape[:2]) < 8:
        raise BadImageError(f"{Path(path).name}: {img.shape[1]}x{img.shape[0]} px is smaller than 8 px")
    notes = [f"{r}" for r in report.converted]
    notes.append(f"{img.shape[1]}x{img.shape[0]} -> {size}x{size} (short side resized, centre crop)")
    out = resize_center_crop(img, size)
    if grey:
        # Y = 0.299 R + 0.587 G + 0.114 B
        y = (out.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().clip(0, 255)
        notes.append("converted to grey, the models' input (they were trained on grey digits)")
        if y.mean() > 127.5:
            y = 255 - y
            notes.append("inverted to light ink on a dark ground, as the digits are")
        out = np.repeat(y.astype(np.uint8)[:, :, None], 3, axis=2)
    return out, "; ".join(notes)


def display_factor(size: int) -> int:
    """Integer enlargement that shows a ``size`` image at about DISPLAY_SIDE pixels in the editor."""
    return max(1, math.ceil(DISPLAY_SIDE / size))


def enlarge(arr: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (every pixel becomes a factor x factor block)."""
    return np.repeat(np.repeat(arr, factor, axis=0), factor, axis=1)


def mask_layer(mask: np.ndarray, factor: int) -> np.ndarray:
    """A {0, 1} mask as an RGBA editor layer (opaque magenta where the hole is), enlarged."""
    m = enlarge((mask > 0.5).astype(np.uint8), factor)
    layer = np.zeros((*m.shape, 4), np.uint8)
    layer[m == 1] = (255, 0, 255, 255)
    return layer


def editor_value(image: np.ndarray, mask: np.ndarray | None) -> dict:
    """What the ImageEditor shows: the image enlarged as background, the hole (if any) as a layer."""
    f = display_factor(image.shape[0])
    bg = enlarge(image, f)
    layers = [mask_layer(mask, f)] if mask is not None else []
    return {"background": bg, "layers": layers, "composite": None}


def mask_from_editor(value: dict | None, size: int) -> np.ndarray | None:
    """The painted hole at the image's size: the union of the layers' strokes (alpha > 0), each
    pixel a hole when strokes cover at least HOLE_COVER of it. None when nothing is painted."""
    import cv2

    layers = [np.asarray(layer) for layer in ((value or {}).get("layers") or []) if layer is not None]
    painted = None
    for arr in layers:
        a = arr[..., 3] > 0 if arr.ndim == 3 and arr.shape[2] == 4 else (arr.reshape(*arr.shape[:2], -1).max(-1) > 0)
        painted = a if painted is None or painted.shape != a.shape else (painted | a)
    if painted is None or not painted.any():
        return None
    cover = cv2.resize(painted.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (cover >= HOLE_COVER).astype(np.float32)


# ---------------------------------------------------------------- the app's functions (no server needed)
class Demo:
    """The app's state and its event handlers, callable without a server (the tests do)."""

    def __init__(self, cfg: Config, root: Path | None = None):
        self.cfg, self.root, self.P = cfg, root, paths(cfg, root)
        self.size = int(cfg.data.image_size)
        self.models = Models(cfg, root)
        self.test_names, self.kinds = self._test_set()
        captions = self.P.data / "captions.json"
        self.captions = load_json(captions)["captions"] if captions.is_file() else {}
        self.store = VoteStore(db_path(cfg, root))
        self.scheduler = PairScheduler(self._candidates(), self.store)

    # -- test set and saved completions
    def _test_set(self) -> tuple[list[str], dict]:
        try:
            index = load_index(self.cfg, self.root)
        except FileNotFoundError:
            return [], {}
        return list(index["splits"]["test"]), {n: v["kind"] for n, v in index["test_masks"].items()}

    def _test_image(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        img = read_image(self.P.data / "images" / "test" / f"{name}.png")
        mask = load_mask_file(self.P.data / "test_masks" / f"{name}.png", img.shape[:2])[0].numpy()
        return img, mask

    def _candidates(self) -> dict[str, list[str]]:
        """Test image -> the methods with a saved completion of it, and the ground truth."""
        out = {}
        for name in self.test_names:
            have = [m for m in registry.voting() if (self.P.predictions(m) / f"{name}.png").is_file()]
            out[name] = have + [GROUND_TRUTH]
        return out

    def prompt_for(self, name: str | None) -> str:
        return self.captions.get(name, self.cfg.captions.fallback_prompt) if name else self.cfg.captions.fallback_prompt

    def status_markdown(self) -> str:
        from helpers.study.models.peft_variants import NOT_TRAINED

        st = self.models.status
        lines = [f"**Preset `{self.cfg.preset}`**, images {self.size}x{self.size}, device `{self.models.device}`."]
        if self.cfg.preset == "smoke":
            lines.append("Smoke preset: tiny random models barely trained; the completions are noise and prove "
                         "only that every method runs.")
        if self.cfg.preset == "mini":
            lines.append("Mini preset: the study at toy scale on digits; every model was trained on a CPU (notebooks "
                         f"02-04). An uploaded photo is converted to the models' input: grey, {self.size}x{self.size} "
                         "px, white ink on black as the digits are.")
        off = [s for m, s in st.items() if not s.available and not registry.is_variant(m)]
        if off:
            lines.append("**Disabled methods** (weights missing):")
            lines += [f"- {s.message()}" for s in off]
        on = [s.label for m, s in st.items() if s.available and registry.is_variant(m)]
        if on:
            lines.append(f"**PEFT ablation variants** (notebook 04's last section; unchecked at start): "
                         f"{', '.join(on)}.")
        by_reason: dict[str, list[str]] = {}
        for m, s in st.items():
            if not s.available and registry.is_variant(m):
                by_reason.setdefault(s.reason.rstrip("."), []).append(m[len(ABLATION_PREFIX):])
        for reason, names in by_reason.items():
            how = (f" Train them with `python -m helpers.study train peft --preset {self.cfg.preset} "
                   "[--variant NAME ...]` or notebook 04's last section." if reason == NOT_TRAINED else "")
            lines.append(f"- PEFT variants ({reason}): {', '.join(names)}.{how}")
        if not self.test_names:
            lines.append(f"No prepared test set in `{self.P.data}`: upload an image, or run `make report "
                         f"PRESET={self.cfg.preset}` (notebook 01) first.")
        return "\n".join(lines)

    # -- tab Inpaint
    def load_test_image(self, name: str):
        """(state, editor value, prompt, message) for a test image, its frozen mask in the editor."""
        if name not in self.test_names:
            return None, None, self.prompt_for(None), f"Unknown test image {name!r}."
        img, mask = self._test_image(name)
        state = {"image": img, "name": name, "test_mask": mask, "source": f"test image {name}"}
        return state, editor_value(img, mask), self.prompt_for(name), (
            f"Test image **{name}** with its frozen {self.kinds.get(name, '')} mask: paint more, or Run.")

    def load_upload(self, path: str | None):
        """(state, editor value, prompt, message) for an uploaded file; a bad file gives state None
        and a message saying why (never an exception)."""
        if not path:
            return None, None, self.prompt_for(None), "No file."
        try:
            img, note = read_upload(path, self.size, grey=self.cfg.data.source == "digits")
        except BadImageError as e:
            return None, None, self.prompt_for(None), f"**Refused:** {e}"
        state = {"image": img, "name": None, "test_mask": None, "source": f"upload {Path(path).name}"}
        return state, editor_value(img, None), self.prompt_for(None), (
            f"Uploaded **{Path(path).name}**: {note}. Paint the hole with the brush or make a mask.")

    def make_mask(self, state: dict | None, kind: str, seed: int):
        """(editor value, message): the chosen mask kind drawn into the editor (seeded)."""
        if not state:
            return None, "Pick a test image or upload one first."
        if kind == "test mask":
            if state.get("test_mask") is None:
                return editor_value(state["image"], None), "An upload has no test mask: paint one or pick a kind."
            return editor_value(state["image"], state["test_mask"]), "The frozen test mask."
        if kind not in KINDS:
            return editor_value(state["image"], None), "Paint the hole with the brush."
        m = self.cfg.data.masks
        mask = generate_mask(self.size, kind, np.random.default_rng(int(seed)), m.min_hole, m.max_hole)
        return editor_value(state["image"], mask), f"A {kind} mask (seed {int(seed)}, {mask.mean():.0%} of the image)."

    def method_ids(self, labels: Sequence[str]) -> list[str]:
        by_label = {short_label(m): m for m in self.models.status}
        return [by_label.get(x, x) for x in labels or []]

    def inpaint(self, state: dict | None, editor: dict | None, methods: Sequence[str], steps: int, guidance: float,
                seed: int, prompt: str, progress=None):
        """(masked input, [(completion, caption)], ground truth, timing table, message). ``methods``
        are ids or short labels. Never raises: problems come back as the message."""
        empty = (None, [], None, "")
        if not state:
            return (*empty, "Pick a test image or upload one first.")
        mask = mask_from_editor(editor, self.size)
        if mask is None:
            return (*empty, "No hole yet: paint over what should be filled, or press Make mask.")
        if mask.min() == 1:
            return (*empty, "Everything is hole: leave some known pixels to condition on.")
        methods = self.method_ids(methods)
        if not methods:
            return (*empty, "Choose at least one method.")
        image = to_tensor(state["image"])
        m = torch.from_numpy(mask)[None]
        gallery, rows, notes = [], [], []
        loaded_before = set(self.models.loaded())
        for i, method in enumerate(methods):
            if progress is not None:
                progress((i, len(methods)), desc=short_label(method))
            try:
                start = time.perf_counter()
                out = self.models.complete(method, image, m, int(seed), int(steps), float(guidance),
                                           prompt or "")
                seconds = time.perf_counter() - start
            except (MethodUnavailable, KeyError) as e:
                notes.append(f"{method}: {e}")
                continue
            except Exception as e:   # a failing method is reported; the others still run
                notes.append(f"{short_label(method)} failed: {type(e).__name__}: {e}")
                continue
            gallery.append((to_uint8(out), f"{short_label(method)} · {seconds:.2f} s"))
            rows.append(f"| {short_label(method)} | {seconds:.2f} |")
        table = "| method | seconds |\n|---|---|\n" + "\n".join(rows) if rows else ""
        loaded = [short_label(m) for m, model in self.models.loaded().items()
                  if m not in loaded_before and model is not None]          # Telea loads nothing
        msg = f"{state['source']}: hole {mask.mean():.0%} of the image, seed {int(seed)}, {int(steps)} steps"
        msg += (f"; the times of {', '.join(loaded)} include loading the weights (once)." if loaded else ".")
        msg += "".join(f"\n\n**{n}**" for n in notes)
        masked = to_uint8(masked_image(image, m))
        truth = state["image"] if state.get("name") else None
        return masked, gallery, truth, table, msg

    # -- tab Which looks real?
    def _completion(self, name: str, method: str, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if method == GROUND_TRUTH:
            return image
        pred = read_image(self.P.predictions(method) / f"{name}.png")
        # the evaluator's rule: the known pixels are the photo's, whatever the method saved
        return to_uint8(composite(to_tensor(pred), to_tensor(image), torch.from_numpy(mask)[None]))

    def next_trial(self, rater: str):
        """(trial, masked input, left, right, message) for this rater."""
        trial = self.scheduler.next(rater)
        if trial is None:
            return None, None, None, None, (
                f"No saved completions to compare in `{self.P.reports / 'predictions'}`: run `make report "
                f"PRESET={self.cfg.preset}` first.")
        img, mask = self._test_image(trial.image)
        masked = to_uint8(masked_image(to_tensor(img), torch.from_numpy(mask)[None]))   # x * (1 - m)
        left = self._completion(trial.image, trial.left, img, mask)
        right = self._completion(trial.image, trial.right, img, mask)
        return trial, masked, left, right, self._count_text(rater)

    def _count_text(self, rater: str) -> str:
        votes = self.store.votes()
        mine = int((votes["rater"] == rater).sum()) if len(votes) else 0
        return (f"Rater **{rater}**: {mine} vote(s) from you, {len(votes)} in all. "
                "Which completion looks like the real photo?")

    @staticmethod
    def rater_id(text: str | None) -> str:
        text = (text or "").strip()
        return text[:64] if text else f"rater-{uuid.uuid4().hex[:8]}"

    def start(self, rater_text: str | None):
        """(rater id, trial, masked, left, right, message)."""
        rater = self.rater_id(rater_text)
        return (rater, *self.next_trial(rater))

    def vote(self, choice: str, rater_text: str | None, trial: Trial | None):
        """Record the vote on the shown trial, then (rater id, next trial, masked, left, right, message)."""
        rater = self.rater_id(rater_text)
        if trial is not None:
            self.store.add(rater, trial.image, trial.left, trial.right, choice,
                           response_ms=1000 * (time.time() - trial.shown_at), trial_id=trial.trial_id)
            self.scheduler.answered(trial.trial_id)
        return (rater, *self.next_trial(rater))
