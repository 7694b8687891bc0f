"""Data preparation: transforms, bad inputs, deterministic split, frozen test masks, predictions."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import helpers as H


# ---------------------------------------------------------------- transforms
def test_to_tensor_range_and_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img[0, 0], img[0, 1] = 0, 255
    x = H.study.files.to_tensor(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert np.array_equal(H.study.files.to_uint8(x), img)


def test_resize_center_crop_any_shape():
    for shape in [(40, 90, 3), (90, 40, 3), (20, 20, 3), (300, 200, 3)]:
        out = H.study.data.sources.resize_center_crop(np.zeros(shape, np.uint8), 32)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_channel_handling_converts_and_counts():
    r = H.study.data.sources.Report()
    gray = Image.fromarray(np.full((4, 4), 100, np.uint8))
    assert np.array_equal(H.study.data.sources.to_rgb_uint8(gray, "g", r), np.full((4, 4, 3), 100, np.uint8))
    rgba = Image.fromarray(np.dstack([np.full((4, 4, 3), 0, np.uint8), np.full((4, 4), 0, np.uint8)]))
    assert (H.study.data.sources.to_rgb_uint8(rgba, "a", r) == 255).all()      # fully transparent -> white background
    g16 = Image.fromarray(np.array([[0, 32896, 65535, 257]], np.uint16))
    assert H.study.data.sources.to_rgb_uint8(g16, "16", r)[0, :, 0].tolist() == [0, 128, 255, 1]   # scaled, not clipped
    assert sum(r.converted.values()) == 3 and r.examples["grayscale->RGB"] == "g"
    assert H.study.data.sources.to_rgb_uint8(Image.fromarray(np.zeros((2, 2, 3), np.uint8)), "rgb", r).shape == (2, 2,
                                                                                                                 3)
    assert sum(r.converted.values()) == 3


def test_bad_files_are_named_and_skipped_with_a_count(tmp_path):
    folder = H.study.data.samples.demo_bad_inputs(tmp_path / "in")
    with pytest.raises(H.study.data.sources.BadImageError, match="corrupt.jpg"):
        H.study.data.sources.read_image(folder / "corrupt.jpg")
    with pytest.raises(H.study.data.sources.BadImageError, match="does not exist"):
        H.study.data.sources.read_image(folder / "missing.png")
    report = H.study.data.sources.Report()
    items = list(H.study.data.sources.folder_images(folder, 16, report))           # no size / crop limits: 7 of 10 kept
    assert len(items) == 7 and all(img.shape == (16, 16, 3) for _, img in items)
    assert report.skipped == {"unreadable or corrupt": 2, "not an image file (.txt)": 1}
    assert report.files == 10 and report.kept == 7 and report.upscaled == 1
    assert "skipped 2 (unreadable or corrupt" in report.summary()
    strict = H.study.data.sources.Report()
    items = list(H.study.data.sources.folder_images(folder, 16, strict, min_size=16, min_kept_fraction=0.5))
    assert len(items) == strict.kept == 5 and strict.files == 10 and strict.upscaled == 0
    assert strict.skipped["smaller than data.min_size (16 px)"] == 1


def test_folder_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(H.study.data.sources.folder_images(tmp_path / "nope", 16, H.study.data.sources.Report()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        list(H.study.data.sources.folder_images(tmp_path / "empty", 16, H.study.data.sources.Report()))


def test_hub_source_offline_says_what_to_do(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(RuntimeError, match="data.source: folder"):
        list(H.study.data.sources.hub_images("someone/faces", "train", "image", 16, tmp_path,
                                            H.study.data.sources.Report()))


def test_hub_source_fails_fast_without_the_hub(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    H.study.data.sources.hub_unreachable_reason.cache_clear()
    try:
        t = time.perf_counter()
        with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set.*not in the cache"):
            list(H.study.data.sources.hub_images("someone/faces", "train", "image", 16, tmp_path,
                                                H.study.data.sources.Report()))
        assert time.perf_counter() - t < 5
    finally:
        H.study.data.sources.hub_unreachable_reason.cache_clear()


# ---------------------------------------------------------------- split and prepared data
def test_split_deterministic_disjoint_complete():
    names = [f"img{i:03d}" for i in range(50)]
    a = H.study.data.splits.split_names(names, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    b = H.study.data.splits.split_names(list(reversed(names)), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    c = H.study.data.splits.split_names(names, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=4)
    assert a == b and a != c
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    assert (len(a["test"]), len(a["val"])) == (5, 5)


def test_prepare_bundled(prepared):
    cfg, index = prepared
    P = H.study.files.paths(cfg)
    n = cfg.data.num_images
    assert sum(len(v) for v in index["splits"].values()) == n
    assert len(index["splits"]["test"]) == cfg.data.max_test_images
    for name in index["splits"]["test"]:
        mask = H.study.data.splits.load_mask_file(P.data / "test_masks" / f"{name}.png", (cfg.data.image_size,) * 2)
        assert abs(mask.mean().item() - index["test_masks"][name]["hole_fraction"]) < 1e-9
    assert {v["kind"] for v in index["test_masks"].values()} == set(cfg.data.masks.kinds)
    again = H.study.data.splits.prepare_dataset(cfg)                  # idempotent: same index, nothing redone
    assert again == json.loads((P.data / "index.json").read_text()) == index


def test_prepare_folder_source(tmp_root):
    src = tmp_root / "photos"
    (src / "nested").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(10):   # different sizes, one level of nesting
        where = src / "nested" if i % 2 else src
        Image.fromarray(rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8)).save(where / f"{i}.png")
    (src / "broken.png").write_bytes(b"nope")
    cfg = H.load_config("smoke", {"data.source": "folder", "data.folder": str(src), "data.num_images": None,
                                  "data.max_test_images": 2, "data.max_val_images": 2})
    index = H.study.data.splits.prepare_dataset(cfg)
    assert sum(len(v) for v in index["splits"].values()) == 10
    assert index["inputs"]["skipped"] == {"unreadable or corrupt": 1}


def test_datasets_and_test_set(prepared):
    cfg, index = prepared
    train = H.study.data.dataset.InpaintDataset(cfg, "train")
    item = train[0]
    s = cfg.data.image_size
    assert item["image"].shape == (3, s, s) and item["mask"].shape == (1, s, s)
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(train[0]["mask"], item["mask"])          # same epoch: same mask
    train.set_epoch(1)
    assert not torch.equal(train[0]["mask"], item["mask"])      # new epoch: new mask
    test = H.study.data.dataset.load_test_set(cfg)
    assert torch.equal(test["mask"], H.study.data.dataset.load_test_set(cfg)["mask"])   # frozen
    assert test["image"].shape[0] == len(index["splits"]["test"])
    with pytest.raises(ValueError, match="split"):
        H.study.data.dataset.InpaintDataset(cfg, "holdout")


def test_missing_prepared_data_is_explained(tmp_root, smoke_cfg):
    with pytest.raises(FileNotFoundError, match="notebook 01"):
        H.study.data.splits.load_index(smoke_cfg)


def test_masked_image_and_composite():
    x = torch.full((1, 3, 2, 2), 0.5)
    m = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert H.study.data.dataset.masked_image(x, m)[0, :, 0, 0].tolist() == [0, 0, 0]
    pred = torch.full_like(x, -0.25)
    out = H.study.data.dataset.composite(pred, x, m)
    assert out[0, 0, 0, 0] == -0.25 and out[0, 0, 1, 1] == 0.5


def test_predictions_roundtrip_and_missing(prepared):
    cfg, index = prepared
    names = index["splits"]["test"][:3]
    imgs = torch.rand(3, 3, cfg.data.image_size, cfg.data.image_size) * 2 - 1
    H.study.data.predictions.write_predictions(cfg, "telea", names, imgs, {"weights": "none", "images_per_s": 10.0})
    back, meta = H.study.data.predictions.read_predictions(cfg, "telea", names)
    assert (back - imgs).abs().max() <= 1 / 127.5 + 1e-6          # 8-bit PNG quantisation only
    assert meta["weights"] == "none" and meta["n_images"] == 3 and meta["label"].startswith("OpenCV")
    with pytest.raises(FileNotFoundError, match="'sd_lora'.*3 of 3"):
        H.study.data.predictions.read_predictions(cfg, "sd_lora", names)
    with pytest.raises(ValueError, match="unknown method"):
        H.study.data.predictions.write_predictions(cfg, "magic", names, imgs)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with H.study.files.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_changed_preset_reprepares_without_stale_files(prepared):
    cfg, index = prepared
    P = H.study.files.paths(cfg)
    smaller = H.load_config("smoke", {"data.num_images": 20})
    new = H.study.data.splits.prepare_dataset(smaller)
    files = sorted(p.stem for p in (P.data / "images").rglob("*.png"))
    assert len(files) == 20 == sum(len(v) for v in new["splits"].values())
    assert sorted(p.stem for p in (P.data / "test_masks").glob("*.png")) == sorted(new["splits"]["test"])
    assert new["fingerprint"] != index["fingerprint"]


@pytest.mark.parametrize("size", [16, 160])          # below and above the size where threads pay
def test_parallel_png_loading_keeps_order_and_values(tmp_path, size):
    from helpers.study.files import load_png, load_pngs, save_png
    g = torch.Generator().manual_seed(0)
    files = []
    for i in range(9):
        files.append(tmp_path / f"{i}.png")
        save_png(torch.rand(3, size, size, generator=g) * 2 - 1, files[-1])
    serial = torch.stack([load_png(f) for f in files])
    assert torch.equal(load_pngs(files), serial) and torch.equal(load_pngs(files, workers=3), serial)


# ---------------------------------------------------------------- captions: where each came from
def _tiny_blip(folder):
    """A tiny BLIP captioner (random weights) saved with save_pretrained: loads through the real path."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "face"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                         tokenizer=BertTokenizer(str(folder / "vocab.txt")))
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = BlipConfig(text_config=dict(vocab_size=len(words), max_position_embeddings=64, bos_token_id=2,
                                      sep_token_id=3, pad_token_id=0, eos_token_id=3, **small),
                     vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    torch.manual_seed(0)
    BlipForConditionalGeneration(cfg).save_pretrained(folder)
    proc.save_pretrained(folder)
    (folder / "vocab.txt").unlink()


def test_fallback_captions_are_marked_and_retried_when_blip_appears(prepared, tmp_path):
    cfg, index = prepared
    blip = tmp_path / "blip"
    cfg.captions.model_id = str(blip)                     # not there yet: fallback, marked as such
    first = H.study.data.captions.make_captions(cfg)
    assert first["fallback"] and set(first["sources"].values()) == {"fallback"}
    assert "could not be loaded" in first["status"] and "fallback" in H.study.data.captions.describe(first)
    with pytest.raises(H.study.data.captions.CaptionsError, match="allow_fallback_for_lora"):
        H.study.data.captions.check_captions_for_lora(H.load_config("full"), first)
    H.study.data.captions.check_captions_for_lora(cfg, first)        # smoke opts in
    _tiny_blip(blip)                                      # BLIP becomes available: the cache is not final
    second = H.study.data.captions.make_captions(cfg)
    assert not second["fallback"] and set(second["sources"].values()) == {"blip"}
    assert second["status"] == f"generated by {blip}" and "BLIP captions" in H.study.data.captions.describe(second)
    H.study.data.captions.check_captions_for_lora(H.load_config("full"), second)
    assert H.study.data.captions.make_captions(cfg) == second        # and a BLIP cache is reused as is


def test_captions_are_made_again_when_the_data_or_the_prompt_settings_change(prepared, caplog):
    """The cache is reused only for the same prepared data (by content) and caption settings: an edited fallback
    prompt reaches the captions, and images re-prepared under the same names are captioned again."""
    import logging

    cfg, _ = prepared
    cfg.captions.model_id = None
    caps = H.study.data.captions
    first = caps.make_captions(cfg)
    assert set(first["captions"].values()) == {cfg.captions.fallback_prompt}
    assert caps.make_captions(cfg) == first                          # nothing changed: reused
    cfg.captions.fallback_prompt = "a small photo"
    with caplog.at_level(logging.INFO, logger="helpers.study.data.captions"):
        edited = caps.make_captions(cfg)
    assert set(edited["captions"].values()) == {"a small photo"}
    assert "captions cached from other fallback_prompt: captioning again" in caplog.text
    P = H.study.files.paths(cfg)
    cached = json.loads((P.data / "captions.json").read_text())
    cached["key"]["data"] = "an earlier preparation"
    cached["captions"] = dict.fromkeys(cached["captions"], "stale")
    (P.data / "captions.json").write_text(json.dumps(cached))
    assert set(caps.make_captions(cfg)["captions"].values()) == {"a small photo"}


def test_no_hub_is_detected_once_and_blip_fails_fast(prepared, monkeypatch):
    import time

    from transformers import BlipForConditionalGeneration, BlipProcessor  # noqa: F401  (imports not timed)

    cfg, _ = prepared
    cfg.captions.model_id = "Salesforce/blip-image-captioning-base"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    H.study.data.sources.hub_unreachable_reason.cache_clear()
    try:
        t = time.perf_counter()
        caps = H.study.data.captions.make_captions(cfg, force=True)
        assert time.perf_counter() - t < 20
        assert caps["fallback"] and "HF_HUB_OFFLINE is set" in caps["status"]
        assert "not in the cache" in caps["status"]
    finally:
        H.study.data.sources.hub_unreachable_reason.cache_clear()


# ---------------------------------------------------------------- nothing lost: staged preparation
def _snapshot(cfg):
    P = H.study.files.paths(cfg)
    files = {p.relative_to(P.data).as_posix(): p.read_bytes() for p in sorted(P.data.rglob("*"))
             if p.is_file() and not p.relative_to(P.data).as_posix().startswith(".")}
    return files


def _still_usable(cfg, index):
    assert H.study.data.splits.prepare_dataset(cfg) == index                      # the original config finds it, intact
    test = H.study.data.dataset.load_test_set(cfg)
    assert len(test["name"]) == len(index["splits"]["test"])
    assert len(H.study.data.dataset.InpaintDataset(cfg, "train")[0]["image"]) == 3


def test_a_failed_re_preparation_leaves_the_previous_data_set_intact(prepared, monkeypatch):
    cfg, index = prepared
    before = _snapshot(cfg)
    # 1. a source that cannot be read at all (missing folder; the hub offline)
    for over in ({"data.source": "folder", "data.folder": "/no/such/folder"},
                 {"data.source": "hub", "data.hub_id": "/no/such/dataset"}):
        with pytest.raises((FileNotFoundError, RuntimeError)):
            H.study.data.splits.prepare_dataset(H.load_config("smoke", over))
        assert _snapshot(cfg) == before
    # 2. a failure midway through writing the new images (disk full on the 5th file)
    calls = {"n": 0}
    real = H.study.data.splits.save_png

    def failing(img, path):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        real(img, path)

    monkeypatch.setattr(H.study.data.splits, "save_png", failing)
    with pytest.raises(OSError, match="No space"):
        H.study.data.splits.prepare_dataset(H.load_config("smoke", {"data.num_images": 40}))
    monkeypatch.setattr(H.study.data.splits, "save_png", real)
    assert _snapshot(cfg) == before
    _still_usable(cfg, index)


def test_a_killed_re_preparation_leaves_the_previous_data_set_intact(prepared, tmp_root):
    import subprocess
    import sys

    cfg, index = prepared
    before = _snapshot(cfg)
    script = (
        "import os, signal, helpers as H\n"
        "real, n = H.study.data.sources.admit, [0]\n"
        "def admit(*a, **k):\n"
        "    n[0] += 1\n"
        "    if n[0] == 10: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*a, **k)\n"
        "H.study.data.sources.admit = admit\n"
        "H.study.data.splits.prepare_dataset(H.load_config('smoke', {'data.num_images': 40}))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=H.study.config.ROOT, capture_output=True,
                          env={**__import__("os").environ, "INPAINT_ROOT": str(tmp_root)}, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert _snapshot(cfg) == before
    _still_usable(cfg, index)
    # and the next run succeeds
    new = H.study.data.splits.prepare_dataset(H.load_config("smoke", {"data.num_images": 40}))
    assert sum(len(v) for v in new["splits"].values()) == 40
    assert not (H.study.files.paths(cfg).data / ".staging").exists()


def test_an_index_whose_files_are_missing_is_not_reused(prepared):
    cfg, index = prepared
    P = H.study.files.paths(cfg)
    victim = P.data / "images" / "test" / f"{index['splits']['test'][0]}.png"
    victim.unlink()
    again = H.study.data.splits.prepare_dataset(cfg)
    assert victim.is_file() and again["splits"] == index["splits"]


def test_folder_source_without_a_folder_names_the_key(tmp_root):
    with pytest.raises(ValueError, match="data.folder is not set"):
        H.study.data.splits.prepare_dataset(H.load_config("smoke", {"data.source": "folder"}))


# ---------------------------------------------------------------- every input counted by outcome
def test_input_report_counts_every_file_by_outcome(tmp_root):
    import cv2

    src = tmp_root / "inputs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(src / f"ok{i}.png")
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(src / "tiny.png")       # too small
    Image.fromarray(rng.integers(0, 256, (100, 2000, 3), dtype=np.uint8)).save(src / "strip.png")  # 5% kept
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(src / "small.png")     # upscaled
    cv2.imwrite(str(src / "deep.png"), rng.integers(0, 65536, (40, 40, 3)).astype(np.uint16))      # 48-bit
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"nope")
    cfg = H.load_config("smoke", {"data.source": "folder", "data.folder": str(src), "data.num_images": None,
                                  "data.max_test_images": 2, "data.max_val_images": 2})
    r = H.study.data.splits.prepare_dataset(cfg)["inputs"]
    assert r["files"] == 12 == r["kept"] + sum(r["skipped"].values())
    assert r["kept"] == 8 and r["upscaled"] == 1 and r["cropped"] == 7           # 6 x (48x40) + small
    assert r["min_kept_fraction"] == pytest.approx(20 / 24)
    assert r["converted"] == {"48-bit RGB->8-bit (high byte)": 1}
    assert r["skipped"] == {"not an image file (.txt)": 1, "unreadable or corrupt": 1,
                            "smaller than data.min_size (16 px)": 1,
                            "centre crop would keep under data.min_kept_fraction (0.5)": 1}
    assert "strip.png (2000x100, 5% kept)" in r["examples"]["centre crop would keep under data.min_kept_fraction (0.5)"]
    loose = H.load_config("smoke", {"data.source": "folder", "data.folder": str(src), "data.num_images": None,
                                    "data.min_size": 8, "data.min_kept_fraction": 0.0})
    r = H.study.data.splits.prepare_dataset(loose)["inputs"]
    assert r["kept"] == 10 and r["upscaled"] == 2 and r["min_kept_fraction"] == pytest.approx(0.05)


# ---------------------------------------------------------------- the folder's contents decide reuse (issue 26)
def _photos(folder, names, side=40, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _folder_cfg(src, **over):
    return H.load_config("smoke", {"data.source": "folder", "data.folder": str(src), "data.num_images": None,
                                   "data.max_test_images": 2, "data.max_val_images": 2, **over})


def _prepared_names(index):
    return sorted(n for names in index["splits"].values() for n in names)


def test_a_changed_folder_is_prepared_again_and_an_unchanged_one_reused(tmp_root, monkeypatch, caplog):
    src = _photos(tmp_root / "photos", [f"p{i}.png" for i in range(6)])
    cfg = _folder_cfg(src)
    caplog.set_level("INFO", logger="helpers.study.data.splits")
    index = H.study.data.splits.prepare_dataset(cfg)
    assert index["inputs"]["files"] == 6 and len(_prepared_names(index)) == 6
    # unchanged folder, same settings: reused, nothing read again
    real = H.study.data.sources.admit
    monkeypatch.setattr(H.study.data.sources, "admit", lambda *a,
                        **k: pytest.fail("an unchanged folder was read again"))
    caplog.clear()
    assert H.study.data.splits.prepare_dataset(cfg) == index
    assert "same settings and same 6 files in data.folder" in caplog.text
    monkeypatch.setattr(H.study.data.sources, "admit", real)
    # 3 photos added: prepared again, the input report counts them (the issue: 0 of 3 prepared)
    _photos(src, ["new0.png", "new1.jpg", "new2.png"], seed=1)
    caplog.clear()
    added = H.study.data.splits.prepare_dataset(cfg)
    assert "data.folder changed: +3 files" in caplog.text
    assert added["inputs"]["files"] == added["inputs"]["kept"] == 9
    assert {"new0", "new1", "new2"} <= set(_prepared_names(added)) and len(_prepared_names(added)) == 9
    assert added["fingerprint"] != index["fingerprint"]
    # one removed
    (src / "p0.png").unlink()
    caplog.clear()
    removed = H.study.data.splits.prepare_dataset(cfg)
    assert "data.folder changed: -1 file" in caplog.text
    assert removed["inputs"]["files"] == 8 and "p0" not in _prepared_names(removed)
    P = H.study.files.paths(cfg)
    assert not any((P.data / "images" / s / "p0.png").exists() for s in ("train", "val", "test"))
    # one rewritten with other content and size: prepared again, the report sees its new size
    _photos(src, ["p1.png"], side=64, seed=2)
    caplog.clear()
    rewritten = H.study.data.splits.prepare_dataset(cfg)
    assert "data.folder changed: 1 rewritten" in caplog.text
    assert rewritten["inputs"]["source_short_side"]["max"] == 64 and rewritten["inputs"]["files"] == 8
    # a non-image file counts too (the input report lists it as skipped)
    (src / "notes.txt").write_text("not an image")
    again = H.study.data.splits.prepare_dataset(cfg)
    assert again["inputs"]["skipped"] == {"not an image file (.txt)": 1}
    caplog.clear()
    assert H.study.data.splits.prepare_dataset(cfg) == again and "same 9 files in data.folder" in caplog.text


def test_a_changed_test_source_or_masks_folder_is_prepared_again(tmp_root):
    faces = _photos(tmp_root / "faces", ["f0.png", "f1.png"])
    over = {"data.test_source": {"folder": str(faces)}, "data.max_test_images": 4, "data.num_images": 12}
    index = H.study.data.splits.prepare_dataset(H.load_config("smoke", over))
    assert index["splits"]["test"] == ["test_f0", "test_f1"]
    _photos(faces, ["f2.png"], seed=3)
    assert H.study.data.splits.prepare_dataset(H.load_config("smoke", over))["splits"]["test"] == ["test_f0", "test_f1",
                                                                                          "test_f2"]
    src = _photos(tmp_root / "photos", [f"p{i}.png" for i in range(8)])
    masks = tmp_root / "masks"
    masks.mkdir()
    m = np.zeros((32, 32), np.uint8)
    m[4:12, 4:20] = 255
    Image.fromarray(m).save(masks / "p1.png")
    cfg = _folder_cfg(src, **{"data.test_masks_folder": str(masks)})
    assert H.study.data.splits.prepare_dataset(cfg)["splits"]["test"] == ["p1"]
    Image.fromarray(m).save(masks / "p5.png")                                  # a mask added: p5 joins the test set
    assert H.study.data.splits.prepare_dataset(cfg)["splits"]["test"] == ["p1", "p5"]


def test_two_files_with_one_name_are_refused_by_name_before_anything_is_staged(tmp_root, monkeypatch):
    src = _photos(tmp_root / "photos", [f"p{i}.png" for i in range(6)])
    cfg = _folder_cfg(src)
    index = H.study.data.splits.prepare_dataset(cfg)
    before = _snapshot(cfg)
    _photos(src, ["twin.png", "twin.jpg"], seed=1)
    real = H.study.data.splits.save_png
    monkeypatch.setattr(H.study.data.splits, "save_png", lambda *a: pytest.fail("staged before the names were checked"))
    with pytest.raises(ValueError, match=r"'twin': .*twin\.jpg and .*twin\.png.*rename one") as e:
        H.study.data.splits.prepare_dataset(cfg)
    assert "1 image name(s)" in str(e.value)
    assert not (H.study.files.paths(cfg).data / ".staging").exists()
    assert _snapshot(cfg) == before and H.study.data.splits.load_index(cfg) == index  # the previous set, intact
    monkeypatch.setattr(H.study.data.splits, "save_png", real)
    # a sub-folder's file and a flat file with the joined name collide too
    (src / "twin.jpg").unlink()
    _photos(src / "a", ["b.png"], seed=2)
    _photos(src, ["a__b.png"], seed=3)
    with pytest.raises(ValueError, match="'a__b': ") as e:
        H.study.data.splits.prepare_dataset(cfg)
    assert "a/b.png and" in str(e.value) and "a__b.png" in str(e.value)
    assert _snapshot(cfg) == before
    (src / "a__b.png").unlink()                                                 # renamed: prepared
    fixed = H.study.data.splits.prepare_dataset(cfg)
    assert {"twin", "a__b"} <= set(_prepared_names(fixed)) and fixed["inputs"]["files"] == 8


# ---------------------------------------------------------------- the source's own test split, your own masks
def _local_hub_dataset(folder, n_train, n_val, side):
    """A data set in the hub's parquet layout (data/<split>-00000-of-00001.parquet), read by the
    same datasets.load_dataset call as a hub id."""
    import datasets

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("validation", n_val)):
        imgs = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]
        ds = datasets.Dataset.from_dict({"image": imgs}, features=datasets.Features({"image": datasets.Image()}))
        (folder / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_the_sources_held_out_split_is_the_test_set(tmp_root):
    hub = _local_hub_dataset(tmp_root / "faces", 20, 5, 24)
    cfg = H.load_config("smoke", {"data.source": "hub", "data.hub_id": str(hub), "data.num_images": None,
                                  "data.hub_test_split": "validation", "data.max_test_images": 4})
    index = H.study.data.splits.prepare_dataset(cfg)
    assert index["splits"]["test"] == [f"validation_{i:06d}" for i in range(4)]
    assert sorted(index["splits"]["train"] + index["splits"]["val"]) == [f"{i:06d}" for i in range(20)]
    assert "held-out" in index["test_split"] and index["inputs"]["upscaled"] == 24
    res = index["resolution"]
    assert res["metrics_px"] == 32 and res["sd_upsampled"]
    assert "computed at 32 px" in res["text"] and "upsampled to 64 px" in res["text"]
    assert res["source_short_side"] == {"min": 24, "median": 24, "max": 24}
    assert len(H.study.data.dataset.load_test_set(cfg)["name"]) == 4


def test_your_own_test_masks_are_matched_by_name_and_validated(tmp_root):
    src = tmp_root / "photos"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(src / f"p{i:02d}.png")
    masks = tmp_root / "my_masks"
    masks.mkdir()
    for i in (3, 7, 9):
        m = np.zeros((32, 32), np.uint8)
        m[4:4 + 2 * i, 5:20] = 255                                   # white = hole
        Image.fromarray(m).save(masks / f"p{i:02d}.png")
    over = {"data.source": "folder", "data.folder": str(src), "data.num_images": None,
            "data.test_masks_folder": str(masks)}
    index = H.study.data.splits.prepare_dataset(H.load_config("smoke", over))
    assert index["splits"]["test"] == ["p03", "p07", "p09"] and index["test_masks_from"] == str(masks)
    assert {v["kind"] for v in index["test_masks"].values()} == {"user"}
    assert index["test_masks"]["p07"]["hole_fraction"] == pytest.approx(14 * 15 / 32 ** 2)
    test = H.study.data.dataset.load_test_set(H.load_config("smoke", over))
    assert test["mask"][1].sum() == 14 * 15
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(masks / "p09.png")       # grey: not binary
    with pytest.raises(ValueError, match="p09.png"):
        H.study.data.splits.prepare_dataset(H.load_config("smoke", over), force=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(masks / "p09.png")           # wrong size
    with pytest.raises(ValueError, match="p09.png"):
        H.study.data.splits.prepare_dataset(H.load_config("smoke", over), force=True)
    assert H.study.data.splits.load_index(H.load_config("smoke", over)) == index  # the good set survived
    m = np.zeros((32, 32), np.uint8)
    m[4:22, 5:20] = 255
    Image.fromarray(m).save(masks / "p09.png")                      # the mask mended: its folder changed, prepared
    again = H.study.data.splits.prepare_dataset(H.load_config("smoke", over))
    assert {k: again[k] for k in ("splits", "test_masks")} == {k: index[k] for k in ("splits", "test_masks")}


def test_a_test_source_outside_the_training_data_gives_the_test_set(tmp_root):
    """data.test_source (issue 21): test images from a folder of their own (e.g. faces the pretrained
    DDPM never saw); the training images stay the configured source's; masks generated as usual."""
    faces = tmp_root / "unseen_faces"
    faces.mkdir()
    rng = np.random.default_rng(5)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(faces / f"f{i}.png")
    over = {"data.test_source": {"folder": str(faces)}, "data.max_test_images": 4, "data.num_images": 24}
    index = H.study.data.splits.prepare_dataset(H.load_config("smoke", over))
    assert index["splits"]["test"] == [f"test_f{i}" for i in range(4)]                 # capped at max_test_images
    assert not any(n.startswith("test_") for s in ("train", "val") for n in index["splits"][s])
    assert len(index["splits"]["train"]) + len(index["splits"]["val"]) == 24          # every bundled crop trains
    assert "data.test_source" in index["test_split"] and index["test_masks_from"].startswith("generated")
    assert {v["kind"] for v in index["test_masks"].values()} <= set(H.load_config("smoke").data.masks.kinds)
    test = H.study.data.dataset.load_test_set(H.load_config("smoke", over))
    assert tuple(test["image"].shape) == (4, 3, 32, 32) and test["mask"].sum() > 0
    # the same protocol as without it: the generated masks are those of the default test set, by position
    plain = H.study.data.splits.prepare_dataset(H.load_config("smoke", {"data.num_images": 24,
                                                                        "data.max_test_images": 4}),
                                         force=True)
    kinds_plain, kinds_here = ([v["kind"] for v in i["test_masks"].values()] for i in (plain, index))
    assert kinds_here[:len(kinds_plain)] == kinds_plain
    with pytest.raises(ValueError, match="test_source"):
        both = {"folder": str(faces), "hub_id": "x"}
        H.study.data.splits.prepare_dataset(H.load_config("smoke", {"data.test_source": both}))


def test_paths_are_shown_relative_to_the_root(tmp_path, monkeypatch):
    """What notebooks print and meta files store: no machine path (a hub id stays as it is)."""
    import sys
    from pathlib import Path

    from helpers.study.config import ROOT
    from helpers.study.files import shown_path

    assert shown_path(tmp_path / "data" / "x.png", root=tmp_path) == "data/x.png"
    assert shown_path(ROOT / "configs" / "smoke.yaml", root=tmp_path) == "configs/smoke.yaml"
    assert shown_path("runwayml/stable-diffusion-inpainting", root=tmp_path) == "runwayml/stable-diffusion-inpainting"
    site = next(p for p in sys.path if p.endswith("site-packages"))
    assert shown_path(Path(site) / "pkg" / "w.pt", root=tmp_path) == "package pkg/w.pt"
    assert shown_path(Path.home() / ".cache" / "w.pt", root=tmp_path) == "~/.cache/w.pt"
    nested = {"a": [str(tmp_path / "m" / "x.pt"), 3, "org/model-id"], "b": {"c": str(Path.home() / "d")}}
    assert H.study.files.shown_paths(nested, root=tmp_path) == {"a": ["m/x.pt", 3, "org/model-id"], "b": {"c": "~/d"}}
    monkeypatch.setenv("INPAINT_ROOT", str(tmp_path))          # the run's root, as the notebooks have it
    report = H.study.data.sources.Report()
    folder = H.study.data.samples.demo_bad_inputs(tmp_path / "bad")
    list(H.study.data.sources.folder_images(folder, 16, report, min_size=16, min_kept_fraction=0.5))
    assert str(tmp_path) not in report.summary() and "bad/notes.txt" in report.summary()


def test_the_folder_reader_counts_to_the_files_found(tmp_path, monkeypatch):
    """The progress bar of a folder source runs to the image files found (9 here), not to the cap
    data.num_images (96)."""
    monkeypatch.setenv("INPAINT_ROOT", str(tmp_path))
    folder = H.study.data.samples.demo_bad_inputs(tmp_path / "in")
    cfg = H.load_config("smoke", {"data.source": "folder", "data.folder": str(folder)})
    P = H.study.files.paths(cfg)
    _, total = H.study.data.splits.source_items(cfg, P, H.study.data.sources.Report())
    assert cfg.data.num_images == 96 and total == len(H.study.data.sources.image_files(folder)) < 96
