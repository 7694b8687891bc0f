"""Data preparation: transforms, bad inputs, deterministic split, frozen test masks, predictions."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import helpers as H
from helpers import data as D


# ---------------------------------------------------------------- transforms
def test_to_tensor_range_and_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img[0, 0], img[0, 1] = 0, 255
    x = H.common.to_tensor(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert np.array_equal(H.common.to_uint8(x), img)


def test_resize_center_crop_any_shape():
    for shape in [(40, 90, 3), (90, 40, 3), (20, 20, 3), (300, 200, 3)]:
        out = D.resize_center_crop(np.zeros(shape, np.uint8), 32)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_channel_handling_converts_and_counts():
    r = D.Report()
    gray = Image.fromarray(np.full((4, 4), 100, np.uint8))
    assert np.array_equal(D.to_rgb_uint8(gray, "g", r), np.full((4, 4, 3), 100, np.uint8))
    rgba = Image.fromarray(np.dstack([np.full((4, 4, 3), 0, np.uint8), np.full((4, 4), 0, np.uint8)]))
    assert (D.to_rgb_uint8(rgba, "a", r) == 255).all()      # fully transparent -> white background
    g16 = Image.fromarray(np.array([[0, 32896, 65535, 257]], np.uint16))
    assert D.to_rgb_uint8(g16, "16", r)[0, :, 0].tolist() == [0, 128, 255, 1]   # scaled, not clipped
    assert sum(r.converted.values()) == 3 and r.examples["grayscale->RGB"] == "g"
    assert D.to_rgb_uint8(Image.fromarray(np.zeros((2, 2, 3), np.uint8)), "rgb", r).shape == (2, 2, 3)
    assert sum(r.converted.values()) == 3


def test_bad_files_are_named_and_skipped_with_a_count(tmp_path):
    folder = D.demo_bad_inputs(tmp_path / "in")
    with pytest.raises(D.BadImageError, match="corrupt.jpg"):
        D.read_image(folder / "corrupt.jpg")
    with pytest.raises(D.BadImageError, match="does not exist"):
        D.read_image(folder / "missing.png")
    report = D.Report()
    items = list(D.folder_images(folder, 16, report))
    assert len(items) == 4 and all(img.shape == (16, 16, 3) for _, img in items)
    assert report.skipped["unreadable or corrupt"] == 2 and report.kept == 4
    assert "skipped 2" in report.summary()


def test_folder_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(D.folder_images(tmp_path / "nope", 16, D.Report()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        list(D.folder_images(tmp_path / "empty", 16, D.Report()))


def test_hub_source_offline_says_what_to_do(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(RuntimeError, match="data.source: folder"):
        list(D.hub_images("someone/faces", "train", "image", 16, tmp_path, D.Report()))


# ---------------------------------------------------------------- split and prepared data
def test_split_deterministic_disjoint_complete():
    names = [f"img{i:03d}" for i in range(50)]
    a = D.split_names(names, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    b = D.split_names(list(reversed(names)), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    c = D.split_names(names, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=4)
    assert a == b and a != c
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    assert (len(a["test"]), len(a["val"])) == (5, 5)


def test_prepare_bundled(prepared):
    cfg, index = prepared
    P = H.common.paths(cfg)
    n = cfg.data.num_images
    assert sum(len(v) for v in index["splits"].values()) == n
    assert len(index["splits"]["test"]) == cfg.data.max_test_images
    for name in index["splits"]["test"]:
        mask = D.load_mask_file(P.data / "test_masks" / f"{name}.png", (cfg.data.image_size,) * 2)
        assert abs(mask.mean().item() - index["test_masks"][name]["hole_fraction"]) < 1e-9
    assert {v["kind"] for v in index["test_masks"].values()} == set(cfg.data.masks.kinds)
    again = D.prepare_dataset(cfg)                  # idempotent: same index, nothing redone
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
    index = D.prepare_dataset(cfg)
    assert sum(len(v) for v in index["splits"].values()) == 10
    assert index["inputs"]["skipped"] == {"unreadable or corrupt": 1}


def test_datasets_and_test_set(prepared):
    cfg, index = prepared
    train = D.InpaintDataset(cfg, "train")
    item = train[0]
    s = cfg.data.image_size
    assert item["image"].shape == (3, s, s) and item["mask"].shape == (1, s, s)
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(train[0]["mask"], item["mask"])          # same epoch: same mask
    train.set_epoch(1)
    assert not torch.equal(train[0]["mask"], item["mask"])      # new epoch: new mask
    test = D.load_test_set(cfg)
    assert torch.equal(test["mask"], D.load_test_set(cfg)["mask"])   # frozen
    assert test["image"].shape[0] == len(index["splits"]["test"])
    with pytest.raises(ValueError, match="split"):
        D.InpaintDataset(cfg, "holdout")


def test_missing_prepared_data_is_explained(tmp_root, smoke_cfg):
    with pytest.raises(FileNotFoundError, match="notebook 01"):
        D.load_index(smoke_cfg)


def test_masked_image_and_composite():
    x = torch.full((1, 3, 2, 2), 0.5)
    m = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert D.masked_image(x, m)[0, :, 0, 0].tolist() == [0, 0, 0]
    pred = torch.full_like(x, -0.25)
    out = D.composite(pred, x, m)
    assert out[0, 0, 0, 0] == -0.25 and out[0, 0, 1, 1] == 0.5


def test_predictions_roundtrip_and_missing(prepared):
    cfg, index = prepared
    names = index["splits"]["test"][:3]
    imgs = torch.rand(3, 3, cfg.data.image_size, cfg.data.image_size) * 2 - 1
    D.write_predictions(cfg, "telea", names, imgs, {"weights": "none", "images_per_s": 10.0})
    back, meta = D.read_predictions(cfg, "telea", names)
    assert (back - imgs).abs().max() <= 1 / 127.5 + 1e-6          # 8-bit PNG quantisation only
    assert meta["weights"] == "none" and meta["n_images"] == 3 and meta["label"].startswith("OpenCV")
    with pytest.raises(FileNotFoundError, match="'sd_lora'.*3 of 3"):
        D.read_predictions(cfg, "sd_lora", names)
    with pytest.raises(ValueError, match="unknown method"):
        D.write_predictions(cfg, "magic", names, imgs)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with H.common.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_changed_preset_reprepares_without_stale_files(prepared):
    cfg, index = prepared
    P = H.common.paths(cfg)
    smaller = H.load_config("smoke", {"data.num_images": 20})
    new = D.prepare_dataset(smaller)
    files = sorted(p.stem for p in (P.data / "images").rglob("*.png"))
    assert len(files) == 20 == sum(len(v) for v in new["splits"].values())
    assert sorted(p.stem for p in (P.data / "test_masks").glob("*.png")) == sorted(new["splits"]["test"])
    assert new["fingerprint"] != index["fingerprint"]


@pytest.mark.parametrize("size", [16, 160])          # below and above the size where threads pay
def test_parallel_png_loading_keeps_order_and_values(tmp_path, size):
    from helpers.common import load_png, load_pngs, save_png
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
    first = H.captions.make_captions(cfg)
    assert first["fallback"] and set(first["sources"].values()) == {"fallback"}
    assert "could not be loaded" in first["status"] and "fallback" in H.captions.describe(first)
    with pytest.raises(H.captions.CaptionsError, match="allow_fallback_for_lora"):
        H.captions.check_captions_for_lora(H.load_config("full"), first)
    H.captions.check_captions_for_lora(cfg, first)        # smoke opts in
    _tiny_blip(blip)                                      # BLIP becomes available: the cache is not final
    second = H.captions.make_captions(cfg)
    assert not second["fallback"] and set(second["sources"].values()) == {"blip"}
    assert second["status"] == f"generated by {blip}" and "BLIP captions" in H.captions.describe(second)
    H.captions.check_captions_for_lora(H.load_config("full"), second)
    assert H.captions.make_captions(cfg) == second        # and a BLIP cache is reused as is


def test_no_hub_is_detected_once_and_blip_fails_fast(prepared, monkeypatch):
    import time

    cfg, _ = prepared
    cfg.captions.model_id = "Salesforce/blip-image-captioning-base"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    H.captions.hub_unreachable_reason.cache_clear()
    try:
        t = time.perf_counter()
        caps = H.captions.make_captions(cfg, force=True)
        assert time.perf_counter() - t < 20
        assert caps["fallback"] and "HF_HUB_OFFLINE is set" in caps["status"]
        assert "not in the cache" in caps["status"]
    finally:
        H.captions.hub_unreachable_reason.cache_clear()
