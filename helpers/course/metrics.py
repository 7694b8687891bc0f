"""PSNR and SSIM on the whole image and on the hole only, as notebook 05 teaches them.

Read top to bottom; the taught functions appear, as exact copies, in notebook 05's code cells (tag
``taught``). Both metrics run on 8-bit values (what the PNGs hold), so a score on a tensor equals
the score on its file, and both equal scikit-image's on the whole image (tests/test_metrics.py).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DATA_RANGE = 255.0   # metrics run on 8-bit values, as saved in the PNGs


# ---------------------------------------------------------------- 8-bit values
def to_levels(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8, or float in [-1, 1] -> float64 in {0, ..., 255} on the same device.

    Float images are mapped with (x + 1) * 127.5 and rounded, exactly as ``common.to_uint8`` saves
    them, so a metric on a tensor equals the metric on its PNG file.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float64)
    return ((x.to(torch.float64).clamp(-1, 1) + 1) * 127.5).round()


def check_pair(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (N, C, H, W)")
    if mask is not None and (mask.ndim != 4 or mask.shape[0] != pred.shape[0] or mask.shape[1] != 1
                             or mask.shape[2:] != pred.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} must be (N, 1, H, W) matching the images {tuple(pred.shape)}")


# ---------------------------------------------------------------- PSNR
def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, (N,) float64, in dB.

    Whole image (``mask=None``): the MSE averages over every pixel and channel, as scikit-image does.
    Hole only (``mask`` (N, 1, H, W), 1 = hole): the MSE averages over hole pixels (and channels)
    **only**. Over the whole image an error confined to a hole of fraction f has MSE_whole = f MSE_hole,
    which inflates the PSNR by -10 log10(f) dB (+10 dB for a 10 % hole).
    A perfect reconstruction gives +inf (as scikit-image); an empty hole gives NaN.
    """
    check_pair(pred, target, mask)
    return psnr_from_squared_error((to_levels(pred) - to_levels(target)) ** 2, hole_of(mask, pred.device))


def hole_of(mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """The mask as float64 {0, 1} on ``device`` (None stays None: the whole image)."""
    return None if mask is None else (mask.to(device, torch.float64) > 0.5).to(torch.float64)


def hole_mean(values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per image: sum over hole pixels and channels / (C * #hole)."""
    return (values * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * values.shape[1])


def psnr_from_squared_error(sq: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """PSNR per image from the squared errors of its 8-bit values: whole image (m None) or hole only."""
    # MSE over the whole image, or MSE_hole = sum_{hole, c} (a - b)^2 / (C * #hole)
    mse = sq.mean(dim=(1, 2, 3)) if m is None else hole_mean(sq, m)
    # PSNR = 10 log10(MAX^2 / MSE)
    return 10 * torch.log10(DATA_RANGE ** 2 / mse)


# ---------------------------------------------------------------- SSIM
def ssim_window(height: int, width: int, win_size: int = 7) -> int:
    """The window side: 7 (scikit-image's default), shrunk to the largest odd side that fits an
    image smaller than 7 px. Images under 3 px have no meaningful SSIM and raise ``ValueError``."""
    side = min(height, width, win_size)
    side -= 1 - side % 2               # largest odd number <= side
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    return side


def _symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad H and W by mirroring *including* the edge pixel (d c b a | a b c d), which is
    scipy.ndimage's ``reflect`` mode used by scikit-image's uniform filter."""
    h, w = x.shape[-2:]
    def index(n: int) -> torch.Tensor:
        return torch.from_numpy(np.pad(np.arange(n), pad, mode="symmetric")).to(x.device)
    return x.index_select(-2, index(h)).index_select(-1, index(w))


def ssim_map(pred: torch.Tensor, target: torch.Tensor, win_size: int = 7, K1: float = 0.01,
             K2: float = 0.03) -> torch.Tensor:
    """The local SSIM map (N, C, H, W), float64: scikit-image's ``full=True`` map per channel.

    Wang et al. 2004, with local means/variances from a uniform ``win_size`` window and the sample
    covariance (normalised by NP - 1). Borders use symmetric padding, as scikit-image does.
    """
    check_pair(pred, target, None)
    x, y = to_levels(pred), to_levels(target)
    win = ssim_window(*x.shape[-2:], win_size)
    pad = (win - 1) // 2
    n_px = win * win
    C1, C2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2

    def mean(z: torch.Tensor) -> torch.Tensor:      # uniform filter, same size as the input
        # separable: a win x 1 then a 1 x win box (2 win instead of win^2 additions per pixel)
        return F.avg_pool2d(F.avg_pool2d(_symmetric_pad(z, pad), (win, 1), stride=1), (1, win), stride=1)

    # mu_x, mu_y, then sample (co)variances: sigma_xy = NP/(NP-1) * (E[xy] - mu_x mu_y)
    ux, uy = mean(x), mean(y)
    cov_norm = n_px / (n_px - 1)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    # SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    return ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux ** 2 + uy ** 2 + C1) * (vx + vy + C2))


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         win_size: int = 7) -> torch.Tensor:
    """Structural similarity per image, (N,) float64.

    Whole image (``mask=None``): the mean of the SSIM map over all channels after cropping
    (win_size - 1) / 2 pixels at each border, exactly scikit-image's
    ``structural_similarity(a, b, channel_axis=-1, data_range=255)``.
    Hole only (``mask`` given, 1 = hole): **the mean of the (uncropped) SSIM map over hole pixels**
    (and channels). Each map value still looks at a 7x7 window, so hole pixels near the hole's
    edge also see some known context: hole SSIM is a local-structure score of the filled region,
    not an SSIM of the hole cut out alone. An empty hole gives NaN.
    """
    check_pair(pred, target, mask)
    return ssim_from_map(ssim_map(pred, target, win_size), hole_of(mask, pred.device), win_size)


def ssim_from_map(S: torch.Tensor, m: torch.Tensor | None, win_size: int) -> torch.Tensor:
    """SSIM per image from its SSIM map: the mean over the hole (m given), else over the whole image."""
    if m is not None:
        return hole_mean(S, m)
    # the whole image: the map cropped by (win - 1) / 2 at each border, as scikit-image does
    pad = (ssim_window(*S.shape[-2:], win_size) - 1) // 2
    h, w = S.shape[-2:]
    return S[..., pad:h - pad, pad:w - pad].mean(dim=(1, 2, 3))


def pixel_scores(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                 win_size: int = 7) -> dict[str, torch.Tensor]:
    """PSNR and SSIM, whole image and hole only, each (N,) float64: the same numbers as
    :func:`psnr` and :func:`ssim` called four times, from one squared error and one SSIM map
    (the map is most of the cost: this halves it)."""
    check_pair(pred, target, mask)
    m = hole_of(mask, pred.device)
    sq = (to_levels(pred) - to_levels(target)) ** 2
    S = ssim_map(pred, target, win_size)
    return {"psnr": psnr_from_squared_error(sq, None), "ssim": ssim_from_map(S, None, win_size),
            "psnr_hole": psnr_from_squared_error(sq, m), "ssim_hole": ssim_from_map(S, m, win_size)}
