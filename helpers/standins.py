"""Full-size stand-ins: local folders with the published layout and configs of every model and data
set the ``full`` preset names, holding random weights.

No model or dataset hub is reachable offline, so ``full`` could never be run here. These folders let
it run (on a CPU, with minimal work: ``tests/test_fullsize.py``) through exactly the code a GPU user
runs: the same ``from_pretrained`` calls, the same folder layouts, the same architectures and
parameter counts. Their outputs are noise; their shapes, timings and memory are real.

    python -m helpers.standins --out data/standins          # about 6 GB, a few minutes, once

writes (each under ``<out>/<hub id>``, so a folder is named like the repository it stands in for):

* ``google/ddpm-celebahq-256``: the hub's *root* layout of a DDPMPipeline repo: ``model_index.json``,
  ``config.json`` (UNet2DModel, 256 px, 113.7M parameters), ``scheduler_config.json`` and
  ``diffusion_pytorch_model.bin`` with the **legacy attention key names** of its 2022 upload
  (``query``/``key``/``value``/``proj_attn``, renamed by diffusers on load);
* ``stable-diffusion-v1-5/stable-diffusion-inpainting``: ``model_index.json`` as published (PNDM
  scheduler, safety checker listed), ``unet/`` (859.5M, 9 input channels), ``vae/`` (83.7M),
  ``text_encoder/`` (CLIP ViT-L/14 text transformer, 123.1M), ``tokenizer/`` (the real CLIP BPE
  tokenizer, built from the vocabulary open_clip ships), ``scheduler/``, ``feature_extractor/``.
  The safety checker's weights are not written: the project loads the pipeline with
  ``safety_checker=None``;
* ``Salesforce/blip-image-captioning-base``: BlipForConditionalGeneration (224M) and its processor;
* ``jxie/celeba-hq``: a small image data set in the hub's parquet layout
  (``data/{train,validation}-00000-of-00001.parquet``, column ``image``), 256 px crops of the photos scikit-image
  ships.

A stamp (``standin.json``) per folder makes :func:`ensure` rebuild only what is missing or outdated.
:func:`overrides` gives the ``--set`` values that point ``full`` (or ``lite``) at the folders.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch

from .config import ROOT

log = logging.getLogger(__name__)

VERSION = 1                    # bump when a stand-in's content changes: ensure() rebuilds it
DEFAULT_OUT = ROOT / "data" / "standins"
DDPM_ID = "google/ddpm-celebahq-256"
SD_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"
BLIP_ID = "Salesforce/blip-image-captioning-base"
DATA_ID = "jxie/celeba-hq"
PARTS = ("ddpm", "sd", "blip", "data")
HUB_IDS = {"ddpm": DDPM_ID, "sd": SD_ID, "blip": BLIP_ID, "data": DATA_ID}
# parameter counts of the published architectures (the numbers, checked by the tests)
PARAMS = {"ddpm_unet": 113_673_219, "sd_unet": 859_535_364, "sd_vae": 83_653_863, "sd_text_encoder": 123_060_480}
N_IMAGES = 40                  # images in the stand-in data set
STAMP = "standin.json"


def folders(out: Path | str = DEFAULT_OUT) -> dict[str, Path]:
    """Where each stand-in lives: ``<out>/<hub id>``."""
    return {part: Path(out) / hub_id for part, hub_id in HUB_IDS.items()}


def overrides(out: Path | str = DEFAULT_OUT) -> dict:
    """Dotted overrides that point a preset's model ids and data source at the stand-ins."""
    f = {k: str(v.resolve()) for k, v in folders(out).items()}
    return {"ddpm.pretrained_id": f["ddpm"], "sd.pretrained_id": f["sd"], "captions.model_id": f["blip"],
            "data.source": "hub", "data.hub_id": f["data"], "data.hub_split": "train", "data.hub_image_key": "image"}


# ====================================================================== published configs
def ddpm_files() -> dict:
    """config.json, scheduler_config.json and model_index.json of google/ddpm-celebahq-256.

    The U-Net and scheduler configs are those of the hub repository (helpers.ddpm keeps them:
    ``published_unet_config``, ``published_scheduler_config``); the repo holds a DDPMPipeline at its
    root, so model_index.json names the two components without subfolders."""
    from .ddpm import published_scheduler_config, published_unet_config

    return {
        "config.json": {"_class_name": "UNet2DModel", "_diffusers_version": "0.1.1", **published_unet_config()},
        "scheduler_config.json": {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1",
                                  **published_scheduler_config(), "trained_betas": None},
        "model_index.json": {"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1",
                             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]},
    }


def legacy_attention_keys(state_dict: dict) -> dict:
    """The key names of diffusers' 2022 ``AttentionBlock``, which the 2022 checkpoints still use:
    ``to_q/to_k/to_v/to_out.0`` -> ``query/key/value/proj_attn`` (inside ``attentions.N`` only).
    diffusers renames them back on load (``ModelMixin._fix_state_dict_keys_on_load``)."""
    rename = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    out = {}
    for k, v in state_dict.items():
        if ".attentions." in k:
            for new, old in rename.items():
                k = k.replace(new, old)
        out[k] = v
    return out


def sd_files() -> dict:
    """model_index.json and the scheduler / feature-extractor configs of
    stable-diffusion-v1-5/stable-diffusion-inpainting, as published (the repository keeps
    runwayml/stable-diffusion-inpainting's files). The networks' configs are helpers.sd.published_configs;
    the U-Net's config file says ``sample_size: 32`` (diffusers raises it to 64 on load, with a warning)."""
    return {
        "model_index.json": {
            "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.6.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]},
        "scheduler/scheduler_config.json": {
            "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
            "clip_sample": False},
        "feature_extractor/preprocessor_config.json": {
            "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224},
    }


def blip_config() -> dict:
    """Salesforce/blip-image-captioning-base's config.json (transformers' BlipConfig): ViT-B/16 at 384 px
    and a 12-layer BERT-base text decoder with cross-attention, vocabulary 30524 (BERT's 30522 + [DEC],
    [ENC]); 224M parameters."""
    return {
        "projection_dim": 512, "image_text_hidden_size": 256, "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "text_config": {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "max_position_embeddings": 512, "hidden_act": "gelu",
                        "layer_norm_eps": 1e-12, "projection_dim": 768, "bos_token_id": 30522, "eos_token_id": 2,
                        "pad_token_id": 0, "sep_token_id": 102, "is_decoder": True, "use_cache": True},
        "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "image_size": 384, "patch_size": 16, "hidden_act": "gelu",
                          "layer_norm_eps": 1e-5, "projection_dim": 512, "num_channels": 3},
    }


# ====================================================================== the CLIP tokenizer
def clip_bpe_path() -> Path:
    """open_clip's copy of CLIP's BPE merges (``bpe_simple_vocab_16e6.txt.gz``), found without importing
    open_clip (installed with --no-deps: requirements-nodeps.txt)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the real CLIP tokenizer is built from open_clip's BPE vocabulary: "
                                "pip install --no-deps open_clip_torch==3.3.0 (requirements-nodeps.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the open_clip_torch installation")
    return path


def write_clip_tokenizer(folder: Path):
    """CLIP's tokenizer (openai/clip-vit-large-patch14, the one SD 1.5 uses) in transformers' files.

    CLIP's vocabulary is defined by its merge list: the 256 byte characters, the same with the
    end-of-word mark ``</w>``, one token per merge (the first 49152 - 256 - 2 = 48894 merges of the
    file, in order) and the two special tokens: 49408 tokens, ``<|startoftext|>`` = 49406,
    ``<|endoftext|>`` = 49407 (also SD's padding token)."""
    from transformers import CLIPTokenizer

    from .sd import _byte_alphabet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != 49408:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} tokens, expected 49408")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>", bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                        unk_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    return tok


def write_bert_vocab(path: Path, size: int = 30522) -> None:
    """A WordPiece vocab.txt with BERT-base-uncased's special-token ids ([PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103) and its size. BERT's word list is not shipped by any package reachable here,
    so the other entries are words of the tiny SD tokenizer and numbered fillers: ids, shapes and the
    processor's code path are BLIP's, the decoded words are not."""
    from .sd import TINY_WORDS

    special = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    words = iter(dict.fromkeys(TINY_WORDS))
    out = []
    for i in range(size):
        if i in special:
            out.append(special[i])
        elif i < 100:
            out.append(f"[unused{i - 1}]")
        else:
            out.append(next(words, f"w{i}"))
    path.write_text("\n".join(out) + "\n")


# ====================================================================== writers
def write_ddpm(folder: Path, seed: int = 0) -> None:
    from diffusers import UNet2DModel

    files = ddpm_files()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(**{k: v for k, v in files["config.json"].items() if not k.startswith("_")})
    # the 2022 upload: one pickled state dict with the legacy attention names, files at the repo root
    torch.save(legacy_attention_keys(unet.state_dict()), folder / "diffusion_pytorch_model.bin")
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")


def write_sd(folder: Path, seed: int = 0) -> None:
    from .sd import build_components, published_configs

    # 1. the three networks at their published sizes, saved in the pipeline's subfolders
    configs = published_configs()
    parts = build_components(configs, seed=seed)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].save_pretrained(str(folder / name))
        del parts[name]
    # as in the hub files of 2022: written by diffusers 0.6, the U-Net's sample_size 32 (see sd_files)
    for name in ("unet", "vae"):
        config = json.loads((folder / name / "config.json").read_text())
        config["_diffusers_version"] = "0.6.0"
        if name == "unet":
            config["sample_size"] = 32
        (folder / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # 2. the real CLIP tokenizer, the PNDM scheduler, the feature extractor, model_index.json
    write_clip_tokenizer(folder / "tokenizer")
    for name, content in sd_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")


def write_blip(folder: Path, seed: int = 0) -> None:
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    cfg = blip_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(BlipConfig(text_config=cfg["text_config"],
                                                        vision_config=cfg["vision_config"],
                                                        **{k: v for k, v in cfg.items() if not k.endswith("_config")}))
    model.save_pretrained(str(folder))
    with tempfile.TemporaryDirectory() as tmp:
        write_bert_vocab(Path(tmp) / "vocab.txt")
        tok = BertTokenizer(vocab_file=str(Path(tmp) / "vocab.txt"), do_lower_case=True, bos_token="[DEC]",
                            additional_special_tokens=["[ENC]"], model_max_length=512)
        images = BlipImageProcessor(size={"height": 384, "width": 384})
        BlipProcessor(image_processor=images, tokenizer=tok).save_pretrained(str(folder))


def write_dataset(folder: Path, seed: int = 0, n: int = N_IMAGES, size: int = 256) -> None:
    """A ``train`` split of ``n`` PNG images and a held-out ``validation`` split of ``n // 4`` (the two
    splits CelebA-HQ's hub copy has; `full` and `lite` take their test set from ``validation``), in the
    parquet layout the hub serves (``data/<split>-*.parquet``, an ``image`` column of datasets' Image
    feature), written with the ``datasets`` package."""
    import datasets
    from PIL import Image

    from .data import bundled_crops

    (folder / "data").mkdir(parents=True, exist_ok=True)
    n_val = max(4, n // 4)
    for split, count, split_seed in (("train", n, seed), ("validation", n_val, seed + 1)):
        images = [Image.fromarray(img) for _, img in bundled_crops(count, size, split_seed)]
        ds = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        f"Stand-in for the image data set {DATA_ID}: {n} train and {n_val} validation crops of {size} px of "
        "the photos scikit-image ships, in the hub's parquet layout. Written by helpers.standins.\n")


WRITERS: dict[str, Callable[[Path, int], None]] = {"ddpm": write_ddpm, "sd": write_sd, "blip": write_blip,
                                                   "data": write_dataset}


PART_VERSIONS = {"data": 2}     # data v2: a validation split beside train (ensure() rebuilds only the data)


def _stamp(part: str, seed: int) -> dict:
    return {"part": part, "hub_id": HUB_IDS[part], "version": PART_VERSIONS.get(part, VERSION), "seed": seed}


def is_ready(folder: Path, part: str, seed: int = 0) -> bool:
    marker = Path(folder) / STAMP
    try:
        return json.loads(marker.read_text()) == _stamp(part, seed)
    except (OSError, ValueError):
        return False


def ensure(out: Path | str = DEFAULT_OUT, parts: Sequence[str] = PARTS, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Write the stand-ins that are missing or outdated (each into a temporary folder, then renamed:
    a crash leaves no half-written stand-in). Returns {part: folder}."""
    from .common import progress

    where = folders(out)
    todo = [p for p in parts if force or not is_ready(where[p], p, seed)]
    for part in progress(todo, desc="full-size stand-ins", disable=not todo):
        folder = where[part]
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            WRITERS[part](tmp, seed)
            (tmp / STAMP).write_text(json.dumps(_stamp(part, seed)) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("wrote the %s stand-in to %s", HUB_IDS[part], folder)
    return {p: where[p] for p in parts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.standins", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the stand-ins (default data/standins)")
    ap.add_argument("--only", nargs="*", choices=PARTS, default=list(PARTS), help="write only these stand-ins")
    ap.add_argument("--force", action="store_true", help="rewrite even when an up-to-date stand-in is there")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    written = ensure(args.out, args.only, args.seed, args.force)
    for part, folder in written.items():
        print(f"{HUB_IDS[part]:55s} {folder}")
    sets = " ".join(f"--set {k}={v}" for k, v in overrides(args.out).items())
    print(f"\nRun the full preset on them:\n  python -m helpers.report --preset full {sets}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
