"""Sample inputs for notebook 01 and the tests: one file of each troublesome kind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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
