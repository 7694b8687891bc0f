"""The Stable Diffusion 1.5 inpainting pipeline of the study: the published configurations and the
tiny random pipeline of the smoke preset (saved, then loaded back through the same ``from_pretrained``),
the real CLIP tokenizer built from open_clip's vocabulary, loading from the hub id or a local folder,
and the pieces notebook 04 shows (the latents, the 9 input channels)."""
from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from helpers.course.sd_inpainting import (
    blank_hole,
    encode_latents,
    encode_prompts,
    latent_factor,
    mask_to_latent,
    to_sd_resolution,
)
from helpers.study.config import ROOT, Config
from helpers.study.files import load_json, paths, save_json
from helpers.study.runtime import (
    count_parameters,
    get_device,
    resolve_dtype,
)

log = logging.getLogger(__name__)

HUB_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"




TINY_VERSION = 2                                      # bump when the tiny architecture changes


class WeightsNotFoundError(FileNotFoundError):
    """The Stable Diffusion weights asked for are not there; the message says how to get them."""


# ============================================================== architectures
def published_configs() -> dict:
    """Configs of SD 1.5 inpainting's components, as published with the checkpoint
    (``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``, ``scheduler/``).

    * U-Net: 9 input channels (4 latent + 1 mask + 4 masked-image latent), 860M parameters.
      The hub file says ``sample_size: 32``; diffusers raises it to 64 (= 512 px / 8) when it loads
      the inpainting pipeline, so 64 is written here.
    * VAE: 4 blocks, downsampling factor 8, scaling factor 0.18215.
    * Text encoder: CLIP ViT-L/14's text transformer (12 layers, width 768, 77 tokens).
    """
    return {
        "unet": {
            "sample_size": 64, "in_channels": 9, "out_channels": 4, "center_input_sample": False,
            "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8, "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "act_fn": "silu", "layers_per_block": 2,
            "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 512,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "scaling_factor": 0.18215,
        },
        "text_encoder": {
            "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        },
        "scheduler": {
            "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
            "prediction_type": "epsilon",
        },
    }


def tiny_configs(vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> dict:
    """The same classes at toy size: a 9-channel U-Net with block_out_channels (32, 64) and
    cross_attention_dim 32, a 2-block VAE (downsampling factor 2), a 2-layer CLIP text encoder."""
    pub = published_configs()
    return {
        "unet": {
            "sample_size": 32, "in_channels": 9, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": [32, 64], "attention_head_dim": 8, "cross_attention_dim": 32,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 32,
        },
        "vae": {
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
            "block_out_channels": [32, 64], "norm_num_groups": 32, "sample_size": 64,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "scaling_factor": 0.18215,
        },
        "text_encoder": {
            "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "projection_dim": 32, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
        },
        "scheduler": dict(pub["scheduler"]),
    }


def build_components(configs: dict, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     seed: int = 0) -> dict:
    """U-Net, VAE, text encoder and scheduler from config dicts, with random weights (no download).

    ``build_components(published_configs(), "cuda", torch.float16)`` gives the full-size SD 1.5
    inpainting architecture: its timings and memory are real even though its weights are not."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            unet = UNet2DConditionModel(**configs["unet"])
            vae = AutoencoderKL(**configs["vae"])
            text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    sched = {k: v for k, v in configs["scheduler"].items() if not k.startswith("_")}
    nets = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    if dtype != torch.float32:
        nets = {k: m.to(dtype=dtype) for k, m in nets.items()}
    return {**{k: m.eval() for k, m in nets.items()}, "scheduler": DDIMScheduler.from_config(sched)}


# ============================================================== library output a learner cannot act on
class _ExpectedNoTextEncoderLora:
    """Drops diffusers' "No LoRA keys associated to CLIPTextModel ... open an issue" warning. Our LoRA
    adapts the U-Net only (the text encoder stays frozen and has no adapter), so a text encoder without
    LoRA keys is exactly what a correct file holds; the warning would only send a learner to file a
    bug. Any other warning of those loggers passes."""

    def filter(self, record) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("No LoRA keys associated to") and "TextModel" in msg)


def quiet_library_output() -> None:
    """Silence, once per process, what the libraries print that says nothing to a learner:
    diffusers' and transformers' own progress bars for loading and writing checkpoint components
    ("Loading pipeline components...", "Loading weights", "Writing model shards"). They take
    seconds, would sit as a second bar inside our own steps, and in a saved notebook show as
    widgets stuck at 0 %. Also the expected-LoRA-keys warning (:class:`_ExpectedNoTextEncoderLora`)."""
    import logging

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for name in ("diffusers.loaders.lora_base", "diffusers.loaders.lora_pipeline", "diffusers.loaders.peft"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedNoTextEncoderLora) for f in lg.filters):
            lg.addFilter(_ExpectedNoTextEncoderLora())


# ============================================================== the tiny pipeline (smoke)
def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2 / CLIP)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    codes, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


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


def build_tiny_pipeline(folder: Path, seed: int = 0) -> Path:
    """Assemble a tiny random StableDiffusionInpaintPipeline and ``save_pretrained`` it to ``folder``
    (reused when a matching one is already there). Load it with :func:`load_pipeline`."""
    from diffusers import StableDiffusionInpaintPipeline

    quiet_library_output()
    folder = Path(folder)
    stamp = {"tiny_version": TINY_VERSION, "seed": seed}
    marker = folder / "tiny.json"
    if marker.is_file() and load_json(marker) == stamp and (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        # 1. tokenizer from a small vocabulary, then the three networks from tiny configs
        tok = write_clip_tokenizer(tmp / "_vocab")      # CLIP's real BPE vocabulary (open_clip's file)
        parts = build_components(tiny_configs(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id),
                                 seed=seed)
        # 2. the same pipeline class as the real checkpoint, saved in the hub's folder layout
        pipe = StableDiffusionInpaintPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=tok,
                                              unet=parts["unet"], scheduler=parts["scheduler"], safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(tmp / "pipe")
        save_json(stamp, tmp / "pipe" / "tiny.json")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp / "pipe", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ============================================================== loading
def weight_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """Frozen weights in fp16/bf16 on a GPU when the preset trains in mixed precision; fp32 on the CPU."""
    return resolve_dtype(cfg.sd.mixed_precision, device)


def resolve_source(cfg: Config, root: Path | None = None) -> str:
    """Where the base pipeline comes from: the tiny one built into reports/<preset>/models/sd_base
    (``sd.tiny: true``), else ``sd.pretrained_id`` (a hub id or a local folder)."""
    if cfg.sd.tiny:
        from accelerate import PartialState
        with PartialState().main_process_first():      # several processes: the main one builds it first
            return str(build_tiny_pipeline(paths(cfg, root).models / "sd_base", seed=cfg.seed))
    if not cfg.sd.pretrained_id:
        raise ValueError("sd.pretrained_id is empty and sd.tiny is false: set sd.pretrained_id to "
                         f"{HUB_ID!r} or to a local folder holding that checkpoint")
    source = str(cfg.sd.pretrained_id)
    in_repo = ROOT / source                         # a folder of the repository (mini: pretrained/mini/...)
    return str(in_repo) if not Path(source).expanduser().exists() and in_repo.is_dir() else source


def looks_local(source: str) -> bool:
    return (Path(source).expanduser().exists() or Path(source).is_absolute()
            or source.startswith(("./", "../", "~", ".\\")))


def _how_to_get(source: str, cache: Path) -> str:
    return (f"To obtain the weights: with internet access set sd.pretrained_id: {HUB_ID} (downloaded once "
            f"into {cache}); or, on a machine with internet, run `hf download {HUB_ID} --local-dir <folder>` "
            "(huggingface_hub's CLI), copy <folder> here and set sd.pretrained_id to its path. "
            "The smoke preset (sd.tiny: true) needs no weights.")


def load_pipeline(cfg: Config, source: str | Path | None = None, device: torch.device | None = None,
                  root: Path | None = None, dtype: torch.dtype | None = None):
    """StableDiffusionInpaintPipeline from a hub id or a local folder (default: :func:`resolve_source`).

    No safety checker (the study scores pixels). Frozen weights in the preset's mixed-precision
    dtype on a GPU. A missing or wrong path raises :class:`WeightsNotFoundError` naming the path
    and saying how to obtain the weights. ``dtype`` overrides the weights' dtype."""
    from diffusers import StableDiffusionInpaintPipeline

    quiet_library_output()
    P = paths(cfg, root)
    device = device or get_device(cfg)
    source = str(source) if source is not None else resolve_source(cfg, root)
    cache = P.cache / "hub"
    # 1. a local folder must exist and look like a diffusers pipeline before we try it
    if looks_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise WeightsNotFoundError(f"Stable Diffusion inpainting weights: {source} does not exist. "
                                       + _how_to_get(source, cache))
        if not (folder / "model_index.json").is_file():
            raise WeightsNotFoundError(f"Stable Diffusion inpainting weights: {source} is not a diffusers pipeline "
                                       "folder (it has no model_index.json). " + _how_to_get(source, cache))
    # 2. the one real loading path, for the hub checkpoint and the tiny saved pipeline alike
    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            source, cache_dir=str(cache), safety_checker=None, requires_safety_checker=False,
            dtype=dtype or weight_dtype(cfg, device))
    except Exception as e:
        raise WeightsNotFoundError(f"Stable Diffusion inpainting weights {source!r} could not be loaded "
                                   f"({type(e).__name__}: {e}). " + _how_to_get(source, cache)) from e
    if pipe.unet.config.in_channels != 9:
        raise ValueError(f"{source}: the U-Net has {pipe.unet.config.in_channels} input channels; an inpainting "
                         "checkpoint has 9 (latent 4 + mask 1 + masked-image latent 4)")
    pipe.set_progress_bar_config(disable=True)
    pipe.source = source
    return pipe.to(device)


def describe(pipe) -> list[dict]:
    """One row per component: class and parameter count."""
    rows = []
    for name in ("unet", "vae", "text_encoder"):
        m = getattr(pipe, name)
        rows.append({"component": name, "class": type(m).__name__, "params": count_parameters(m)[1],
                     "dtype": str(next(m.parameters()).dtype).replace("torch.", "")})
    rows.append({"component": "scheduler", "class": type(pipe.scheduler).__name__, "params": 0, "dtype": "-"})
    return rows


@torch.no_grad()
def encode_pieces(pipe, image: torch.Tensor, mask: torch.Tensor, prompt: str, resolution: int, seed: int = 0) -> dict:
    """What the U-Net receives for one image (notebook 04): image and masked-image latents, the
    mask on the latent grid, the caption's embedding, and the 9-channel input at a random t."""
    device = pipe.device
    x, m = to_sd_resolution(image[None].to(device), mask[None].to(device), resolution)
    g = torch.Generator().manual_seed(seed)
    z0 = encode_latents(pipe.vae, x)
    z_masked = encode_latents(pipe.vae, blank_hole(x, m))
    m_down = mask_to_latent(m, tuple(z0.shape[-2:]))
    emb = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt], device=device)[prompt]
    noise = torch.randn(z0.shape, generator=g).to(device)
    t = torch.tensor([500])
    alpha_bar = pipe.scheduler.alphas_cumprod[t].to(device).view(-1, 1, 1, 1)
    # z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps   (Ho et al. 2020, eq. 4)
    z_t = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * noise
    return {"image": x[0].cpu(), "mask": m[0].cpu(), "masked_image": blank_hole(x, m)[0].cpu(),
            "z0": z0[0].cpu(), "z_masked": z_masked[0].cpu(), "m_down": m_down[0].cpu(), "z_t": z_t[0].cpu(),
            "unet_input": torch.cat([z_t, m_down, z_masked], 1)[0].cpu(), "text_embedding": emb.cpu(),
            "prompt": prompt, "factor": latent_factor(pipe.vae), "scaling_factor": pipe.vae.config.scaling_factor}


def channel_images(z: torch.Tensor) -> list[torch.Tensor]:
    """Each channel of a latent as a (1, h, w) image in [0, 1] (min-max scaled) for plots."""
    out = []
    for c in z:
        c = c.float()
        out.append(((c - c.min()) / (c.max() - c.min() + 1e-8))[None])
    return out
