"""Writes notebooks/01_data.ipynb (run: python tools/make_nb_01.py)."""
from nbtools import code, header, md, write

cells = header("""# 01 · Data: images, masks and captions
Image completion with diffusion models: **DDPM vs Stable Diffusion 1.5 + LoRA**

This notebook prepares what every later notebook reads: square RGB images split into
train / val / test, the **frozen test masks** every method is scored on, and the captions that
Stable Diffusion uses as prompts.""")
cells += [
    md("""## Conventions (stated once, in `helpers/__init__.py`)
* images: float tensors in **[-1, 1]**, shape (N, 3, H, W); files are 8-bit RGB PNG
* masks: float tensors in **{0, 1}**, shape (N, 1, H, W), **1 = the hole to fill**
* masked input: $x_\\text{masked} = x \\odot (1 - m)$

Sources (`cfg.data.source`): `bundled` (random crops of the photos shipped inside scikit-image
and matplotlib: works offline), `folder` (any images) or `hub` (a datasets-hub id: CelebA-HQ for `full`).""", slide="slide"),
    code("""print(f"preset {cfg.preset}: source={cfg.data.source}, {cfg.data.image_size}px, seed={cfg.seed}")
index = H.data.prepare_dataset(cfg)
print({split: len(names) for split, names in index["splits"].items()})
print("inputs:", index["inputs"])"""),
    md("""## Deterministic split, validated inputs
The split is a permutation drawn from the preset's seed, so every run (and every method) sees the
same train / val / test images. Bad input is never silently replaced: unreadable files are
skipped **and counted**, grayscale / RGBA / 16-bit images are converted explicitly and counted.
Below, a folder with one file of each troublesome kind:""", slide="slide"),
    code("""demo = H.data.demo_bad_inputs(P.data / "bad_input_demo")
report = H.data.Report()
kept = list(H.data.folder_images(demo, cfg.data.image_size, report))
print(f"{len(kept)} usable of {len(list(demo.iterdir()))} files -> {report.summary()}")"""),
    code("""import numpy as np
for bad in (np.zeros((8, 8)), np.full((8, 8), 1.0), np.eye(8) * 0.5, np.zeros((4, 4))):
    try:
        H.masks.validate_mask(bad, image_shape=(8, 8), name="demo mask")
    except ValueError as e:
        print("rejected:", e)"""),
    md("""## Masks: boxes and LaMa-style brush strokes
Following LaMa's training masks (settings at 256 px, scaled to the image size): **thin** (4-50
strokes, width ≤ 10), **medium** (4-5 strokes, width ≤ 50, plus boxes), **thick** (1-5 strokes,
width ≤ 100, plus boxes), and plain **box** holes. The hole area is capped at 50 %.
Training masks are drawn fresh each epoch from these generators; the test masks are drawn once,
saved, and reused by every method.""", slide="slide"),
    code("""import numpy as np
kinds = list(H.masks.KINDS)
rows = [[H.masks.generate_mask(cfg.data.image_size, k, np.random.default_rng([cfg.seed, s]))
         for k in kinds] for s in range(3)]
H.plots.image_grid(rows, col_titles=kinds, path=P.figures / "01_mask_kinds.png", title="white = hole");"""),
    code("""fractions = H.masks.sample_fractions(cfg.data.image_size, cfg.data.masks.kinds, n=300, seed=cfg.seed,
                                    min_hole=cfg.data.masks.min_hole, max_hole=cfg.data.masks.max_hole)
H.plots.hole_histogram(fractions, path=P.figures / "01_hole_fractions.png");""", slide="subslide"),
    md("## The frozen test set: image, mask, masked input", slide="slide"),
    code("""test = H.data.load_test_set(cfg)
n = min(6, len(test["name"]))
rows = [[x, m, H.data.masked_image(x, m)] for x, m in zip(test["image"][:n], test["mask"][:n])]
labels = [f"{k} {h:.0%}" for k, h in zip(test["kind"][:n], test["hole_fraction"][:n])]
H.plots.image_grid(rows, ["image", "mask (1 = hole)", "masked input"], labels, path=P.figures / "01_test_samples.png");"""),
    md("""## Captions for Stable Diffusion
SD is text-conditioned. A BLIP captioner describes each image once; the captions are cached in
`data/<preset>/captions.json`. Without BLIP's weights (offline), every image gets the preset's
fixed fallback prompt, and the file says so.""", slide="slide"),
    code("""captions = H.captions.make_captions(cfg)
print(captions["status"])
for name in list(captions["captions"])[:5]:
    print(f"  {name}: {captions['captions'][name]!r}")"""),
    md("""## Saved for the next notebooks
`data/<preset>/images/{train,val,test}/`, `data/<preset>/test_masks/`, `index.json` (splits, test
mask kinds and hole fractions, input report) and `captions.json`.""", slide="slide"),
    code("""H.common.save_json({"splits": {k: len(v) for k, v in index["splits"].items()},
                    "test_hole_fractions": test["hole_fraction"], "captions": captions["status"]},
                   P.tables / "01_data_summary.json")
print(sorted(p.name for p in P.data.iterdir()))"""),
]
write("notebooks/01_data.ipynb", cells)
