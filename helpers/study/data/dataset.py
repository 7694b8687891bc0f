"""The prepared data as torch: the Dataset of one split (random training masks, frozen test masks),
its collate, the test set as tensors, and the two pixel operations every method shares: the masked
input ``x * (1 - m)`` (taught in 03) and the composite that pastes the known pixels back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from helpers.course.ddpm_inpainting import masked_image  # noqa: F401  (x * (1 - m), taught in 03)
from helpers.study.config import Config
from helpers.study.data.masks import random_mask
from helpers.study.data.splits import SPLITS, load_index, load_mask_file
from helpers.study.files import load_png, parallel_map, paths, png_workers


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
