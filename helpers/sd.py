"""Stable Diffusion 1.5 inpainting + LoRA: loading, the pieces, LoRA training, guided inference.

Taught in notebook 04. The model is latent diffusion (Rombach et al. 2022) with a 9-channel U-Net::

    eps_theta( concat(z_t, m_down, z_masked), t, tau(caption) )
      z_t       noisy latent of the image                  4 channels
      m_down    the mask resized to the latent grid         1 channel   (1 = hole)
      z_masked  latent of the image with the hole blanked   4 channels

Everything here works on the real checkpoint (``full``: stable-diffusion-v1-5/stable-diffusion-inpainting)
and on a tiny random pipeline of the same classes (``smoke``), which is saved with
``save_pretrained`` and loaded back through the very :func:`load_pipeline` that loads the real one.

The pieces are callable on their own (the benchmark times them with full-size random weights):
:class:`LoraInpaintLoss` (one LoRA training step's loss), :func:`denoise` (the guided sampling
loop in latent space) and :func:`inpaint` (image space in, composited image out).
Conventions (value ranges, mask polarity) are those of ``helpers/__init__.py``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .common import (count_parameters, get_device, image_seeds, load_json, paths, peak_memory_bytes, progress,
                     reset_peak_memory, resolve_dtype, save_json, timed)
from .config import Config, add_set_argument, load_config, parse_overrides

log = logging.getLogger(__name__)

HUB_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"    # the file name diffusers' load_lora_weights looks for
TINY_VERSION = 1                                      # bump when the tiny architecture changes


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
TINY_WORDS = ("a photo of the an with and in on at face person man woman cat dog rocket coffee cup astronaut "
              "hair eyes smiling wearing shirt background close up picture image black white red blue green").split()


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2 / CLIP)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_tokenizer(folder: Path, words: Sequence[str] = TINY_WORDS):
    """A CLIP BPE tokenizer from a small self-written vocab.json / merges.txt.

    Vocabulary: every byte character, alone and with the end-of-word mark ``</w>`` (so any text
    tokenizes), the merges that spell ``words`` whole, and CLIP's two special tokens."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    ranks: dict[tuple[str, str], int] = {}

    def apply_merges(pieces: list[str]) -> list[str]:
        """Byte-pair encoding: repeatedly merge the adjacent pair of lowest rank."""
        while True:
            pairs = [(ranks[p], i) for i, p in enumerate(zip(pieces, pieces[1:])) if p in ranks]
            if not pairs:
                return pieces
            _, i = min(pairs)
            pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]

    for w in words:
        pieces = apply_merges(list(w[:-1]) + [w[-1] + "</w>"])
        while len(pieces) > 1:        # new merges rank last, so words already spelled stay whole
            a, b = pieces[0], pieces[1]
            ranks[(a, b)] = len(ranks)
            vocab.setdefault(a + b, len(vocab))
            pieces = apply_merges(pieces)
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


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
        tok = write_tiny_tokenizer(tmp / "_vocab")
        parts = build_components(tiny_configs(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id), seed=seed)
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
    return str(cfg.sd.pretrained_id)


def _looks_local(source: str) -> bool:
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
    if _looks_local(source):
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


def latent_factor(vae) -> int:
    """Pixels per latent cell: 2 ** (number of VAE blocks - 1) (8 for SD, 2 for the tiny VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def describe(pipe) -> list[dict]:
    """One row per component: class and parameter count."""
    rows = []
    for name in ("unet", "vae", "text_encoder"):
        m = getattr(pipe, name)
        rows.append({"component": name, "class": type(m).__name__, "params": count_parameters(m)[1],
                     "dtype": str(next(m.parameters()).dtype).replace("torch.", "")})
    rows.append({"component": "scheduler", "class": type(pipe.scheduler).__name__, "params": 0, "dtype": "-"})
    return rows


# ============================================================== the pieces
def to_sd_resolution(images: torch.Tensor, masks: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize images (bicubic) and masks (nearest: they stay in {0, 1}) to SD's working size."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images, masks
    size = (resolution, resolution)
    up = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    return up, F.interpolate(masks.float(), size=size, mode="nearest")


def from_sd_resolution(images: torch.Tensor, size: int) -> torch.Tensor:
    """SD's output back to the data resolution (antialiased bicubic), clamped to [-1, 1]."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True).clamp(-1, 1)


def blank_hole(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The masked image SD conditions on: x * (m < 0.5), the hole set to 0 (mid-grey) before the VAE."""
    return images * (masks < 0.5)


def mask_to_latent(masks: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """m_down: the mask on the latent grid (nearest, as the pipeline does)."""
    return F.interpolate(masks.float(), size=latent_hw, mode="nearest")


def encode_latents(vae, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z = s * (mu + sigma * eps): a sample of the VAE posterior q(z | x), times the scaling factor s.
    ``eps`` None gives the posterior mean."""
    dist = vae.encode(x.to(vae.dtype)).latent_dist
    z = dist.mean if eps is None else dist.mean + dist.std * eps.to(dist.mean)
    return z.float() * vae.config.scaling_factor


def decode_latents(vae, z: torch.Tensor, batched: bool = True) -> torch.Tensor:
    """x = D(z / s) in [-1, 1]; ``batched=False`` decodes one image at a time (less peak memory)."""
    chunks = [z] if batched else list(z.split(1))
    out = [vae.decode((c / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0].float() for c in chunks]
    return torch.cat(out).clamp(-1, 1)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], batch_size: int = 64,
                   device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """tau(c): the text encoder's last hidden states (77 x width) for each *distinct* prompt, once.

    Tokenized exactly as the pipeline does (padded to 77 tokens, truncated). Stored on ``device``
    (the CPU for a large caption set) in ``dtype``."""
    unique = list(dict.fromkeys(prompts))
    out = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        ids = tokenizer(chunk, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(text_encoder.device)
        hidden = text_encoder(ids)[0]
        for p, h in zip(chunk, hidden):
            out[p] = h.to(device=device, dtype=dtype or h.dtype)
    return out


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


# ============================================================== LoRA
def add_lora(pipe, sd: Config) -> dict:
    """Freeze VAE, text encoder and U-Net; attach LoRA (peft) to the U-Net's attention projections.

    W' = W + (alpha / r) B A  (Hu et al. 2021), A: r x k Gaussian, B: d x r zeros, so training starts
    from the base model exactly. Under fp16/bf16 the frozen weights stay in that dtype and the LoRA
    parameters are cast to fp32: the grad scaler cannot unscale fp16 gradients."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    unet = pipe.unet
    # 1. everything frozen
    for m in (pipe.vae, pipe.text_encoder, unet):
        m.requires_grad_(False)
    # 2. LoRA adapters: the only parameters that require grad
    if "default" not in (getattr(unet, "peft_config", None) or {}):
        unet.add_adapter(LoraConfig(r=sd.lora.r, lora_alpha=sd.lora.alpha, lora_dropout=sd.lora.dropout,
                                    init_lora_weights="gaussian", target_modules=list(sd.lora.target_modules)))
    for name, p in unet.named_parameters():        # also when the adapter was attached before
        if ".lora_A." in name or ".lora_B." in name:
            p.requires_grad_(True)
    # 3. trainable parameters in fp32 whatever the frozen weights' dtype
    cast_training_params(unet, dtype=torch.float32)
    if sd.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    trainable, unet_total = count_parameters(unet)
    everything = unet_total + sum(count_parameters(m)[1] for m in (pipe.vae, pipe.text_encoder))
    return {"trainable_params": trainable, "unet_params": unet_total, "total_params": everything,
            "fraction_of_unet": trainable / unet_total, "fraction_of_all": trainable / everything,
            "lora": dict(sd.lora)}


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The U-Net's LoRA tensors in diffusers' key format (what ``load_lora_weights`` reads)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora(unet, folder: Path, is_main_process: bool = True) -> Path:
    """Save the LoRA weights (+ their r / alpha as metadata) as <folder>/pytorch_lora_weights.safetensors."""
    from diffusers import StableDiffusionInpaintPipeline

    folder = Path(folder)
    if is_main_process:     # diffusers' own is_main_process flag does not stop the other processes writing
        StableDiffusionInpaintPipeline.save_lora_weights(
            folder, unet_lora_layers=lora_state_dict(unet), is_main_process=True, safe_serialization=True,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    return folder / LORA_WEIGHTS


def load_lora(pipe, path: Path, adapter_name: str = "sd_lora"):
    """Load saved LoRA weights (a folder or the .safetensors file) into a pipeline, for inference."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LoRA weights {path} not found: train them in notebook 04 (helpers.sd.train_lora)")
    folder, name = (path.parent, path.name) if path.is_file() else (path, LORA_WEIGHTS)
    quiet_library_output()
    pipe.load_lora_weights(str(folder), weight_name=name, adapter_name=adapter_name)
    # the injected LoRA layers arrive in training mode (their dropout active): back to eval
    pipe.unet.eval()
    pipe.lora_path = str(folder / name)
    return pipe


# ============================================================== LoRA training
def prompt_dropout_mask(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training (Ho & Salimans 2022): True where caption -> "" (prob. p)."""
    return torch.rand(n, generator=generator, device=generator.device) < p


class LoraInpaintLoss:
    """``loss_fn(unet, batch, generator)`` for :func:`helpers.train.train`: one LoRA training step.

    Every random draw of the step (prompt dropout, VAE posterior samples, t, eps) comes from
    ``generator``, so a resumed run repeats it exactly. ``text_embeds`` maps prompt text -> tau(c)
    and must hold the empty prompt; ``captions`` maps image name -> prompt text (missing: "")."""

    def __init__(self, vae, noise_scheduler, text_embeds: dict[str, torch.Tensor], captions: dict[str, str],
                 prompt_dropout: float, resolution: int):
        if "" not in text_embeds:
            raise ValueError("text_embeds must contain the empty prompt '' (the unconditional embedding)")
        self.vae, self.scheduler = vae, noise_scheduler
        self.text_embeds, self.captions = text_embeds, captions
        self.prompt_dropout, self.resolution = prompt_dropout, resolution
        self.prediction_type = noise_scheduler.config.prediction_type
        self.alphas_cumprod = noise_scheduler.alphas_cumprod.float()

    def conditioning(self, names: Sequence[str], generator: torch.Generator) -> torch.Tensor:
        """tau(c) per image, with the caption replaced by "" with probability ``prompt_dropout``.
        The choice stays on the device (``torch.where``): reading it back would stall every step."""
        captions = torch.stack([self.text_embeds[self.captions.get(n, "")] for n in names])
        drop = prompt_dropout_mask(len(names), self.prompt_dropout, generator).to(captions.device)
        return torch.where(drop[:, None, None], self.text_embeds[""].to(captions.device), captions)

    def __call__(self, unet, batch: dict, generator: torch.Generator) -> torch.Tensor:
        # the draws happen where the generator lives (the training device; the CPU for a meta-device count)
        g, gd = generator, generator.device
        device = next(unet.parameters()).device
        images, masks = batch["image"].to(device), batch["mask"].to(device)
        n = images.shape[0]
        # 1. caption embeddings with classifier-free-guidance dropout
        cond = self.conditioning(batch["name"], g).to(device)
        # 2. SD's working size, the hole blanked, both through the frozen VAE in one batch
        with torch.no_grad():
            x, m = to_sd_resolution(images, masks, self.resolution)
            both = torch.cat([x, blank_hole(x, m)])
            eps_vae = torch.randn((2 * n, self.vae.config.latent_channels, *[s // latent_factor(self.vae) for s in x.shape[-2:]]),
                                  generator=g, device=gd).to(device)
            z0, z_masked = encode_latents(self.vae, both, eps_vae).chunk(2)
            m_down = mask_to_latent(m, tuple(z0.shape[-2:]))
        # 3. t ~ U{0..T-1}, eps ~ N(0, I)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=g, device=gd).to(device)
        eps = torch.randn(z0.shape, generator=g, device=gd).to(device)
        alpha_bar = self.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
        # z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps   (Ho et al. 2020, eq. 4)
        z_t = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps
        # 4. eps_theta(concat(z_t, m_down, z_masked), t, tau(c))
        dtype = next((p for p in unet.parameters() if not p.requires_grad), next(unet.parameters())).dtype  # frozen W
        pred = unet(torch.cat([z_t, m_down, z_masked], 1).to(dtype), t, encoder_hidden_states=cond.to(dtype),
                    return_dict=False)[0].float()
        # 5. target: eps, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) z_0 (Salimans & Ho 2022)
        if self.prediction_type == "epsilon":
            target = eps
        elif self.prediction_type == "v_prediction":
            target = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * z0
        else:
            raise ValueError(f"unsupported prediction type {self.prediction_type!r}")
        # L = || target - prediction ||^2
        return F.mse_loss(pred, target)


def make_loss_fn(pipe, cfg: Config, captions: dict[str, str]) -> LoraInpaintLoss:
    """:class:`LoraInpaintLoss` for a pipeline: each distinct caption (and "") encoded once."""
    from diffusers import DDPMScheduler

    prompts = [""] + sorted(set(captions.values()))
    store = pipe.device if len(prompts) <= 512 else torch.device("cpu")   # a large caption set waits on the CPU
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, device=store)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return LoraInpaintLoss(pipe.vae, noise_scheduler, embeds, captions, cfg.sd.prompt_dropout, cfg.sd.resolution)


# the sd keys that change the LoRA training trajectory; inference settings (num_inference_steps,
# guidance_scale, inference_batch_size), the run's length (num_epochs, max_steps: the learning rate is
# constant, so a longer run is the shorter one continued) and bookkeeping (checkpoint_every,
# num_workers, gradient_checkpointing) are left out: changing them never retrains from scratch
TRAJECTORY_KEYS = ("pretrained_id", "tiny", "resolution", "lora", "batch_size", "lr", "weight_decay",
                   "max_grad_norm", "mixed_precision", "prompt_dropout")


def run_fingerprint(cfg: Config, source: str, captions: dict[str, str] | None = None) -> str:
    """Hash of what determines a LoRA training run: the base weights, the data, the seed, the
    captions (their text, when given) and :data:`TRAJECTORY_KEYS`. A change starts a new
    checkpoint folder; anything else (inference settings, a longer run) reuses or resumes it."""
    keys = {"sd": {k: cfg.sd.get(k) for k in TRAJECTORY_KEYS}, "seed": cfg.seed, "data": cfg.data,
            "source": source}
    if captions is not None:
        keys["captions"] = hashlib.sha256(json.dumps(sorted(captions.items())).encode()).hexdigest()
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:12]


def lora_run_dir(cfg: Config, source: str, captions: dict[str, str] | None = None, root: Path | None = None) -> Path:
    """reports/<preset>/models/sd_lora/ckpt-<fingerprint>/: checkpoint, finished LoRA and stats of one run."""
    return paths(cfg, root).models / "sd_lora" / f"ckpt-{run_fingerprint(cfg, source, captions)}"


def find_lora(cfg: Config, root: Path | None = None) -> Path | None:
    """The LoRA file the series' SD + LoRA predictions were made with (their meta.json names it);
    without predictions, the most recently finished run under models/sd_lora/; None when there is
    none. Used by the demo (helpers.demo), which has no training run of its own to fingerprint."""
    P = paths(cfg, root)
    meta = P.predictions("sd_lora") / "meta.json"
    if meta.is_file():
        named = load_json(meta).get("lora_weights")
        if named and Path(named).is_file():
            return Path(named)
    finished = sorted((P.models / "sd_lora").glob(f"ckpt-*/{LORA_WEIGHTS}"), key=lambda p: p.stat().st_mtime)
    return finished[-1] if finished else None


def train_lora(cfg: Config, pipe, captions: dict[str, str] | None = None, max_steps: int | None = None,
               root: Path | None = None) -> dict:
    """Train LoRA on the frozen inpainting U-Net with the shared loop, then save it.

    Training images come from InpaintDataset(cfg, "train") with fresh random masks each epoch
    (the test masks' generators, not the test masks). Each run lives in its own folder
    :func:`lora_run_dir` (last.pt, pytorch_lora_weights.safetensors, train_stats.json), keyed by
    :func:`run_fingerprint`: a finished run is reused, a longer one (bigger max_steps/num_epochs)
    resumes, another run never overwrites it. Without ``captions`` the cached captions are used;
    fallback captions are refused unless ``captions.allow_fallback_for_lora`` is true.
    Returns the run's summary (with ``history`` and ``lora_path``)."""
    from . import captions as C
    from . import data as D
    from .perf import set_attention
    from .train import train

    device = pipe.device
    # 1. LoRA on the frozen U-Net, speed switches that apply to training
    info = add_lora(pipe, cfg.sd)
    set_attention(pipe.unet, cfg.perf.get("sdpa", True))
    set_attention(pipe.vae, cfg.perf.get("sdpa", True))
    if cfg.perf.get("channels_last") and device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
    # 2. captions -> embeddings, once; the loss of one step
    captions_status = "captions given by the caller"
    if captions is None:
        cached = C.make_captions(cfg, root=root)
        C.check_captions_for_lora(cfg, cached)
        captions, captions_status = cached["captions"], cached["status"]
    loss_fn = make_loss_fn(pipe, cfg, captions)
    # 3. the shared loop (Accelerate, mixed precision, checkpoints, exact resume)
    dataset = D.InpaintDataset(cfg, "train", root)
    ckpt_dir = lora_run_dir(cfg, getattr(pipe, "source", ""), captions, root)
    result = train(pipe.unet, loss_fn, dataset, cfg.sd, ckpt_dir, cfg.seed, device, collate_fn=D.collate,
                   fused_adamw=cfg.perf.get("fused_adamw", True), desc="LoRA training", max_steps=max_steps)
    pipe.unet.eval()
    # 4. the LoRA weights in diffusers' format; the run's numbers beside them
    from accelerate import PartialState
    main_process = PartialState().is_main_process
    lora_path = save_lora(pipe.unet, ckpt_dir, is_main_process=main_process)
    stats_path = ckpt_dir / "train_stats.json"
    summary = {**result.summary(), **info, "lora_path": str(lora_path), "base": getattr(pipe, "source", None),
               "device": str(device), "train_images": len(dataset), "captions_status": captions_status}
    if result.steps == result.resumed_from and stats_path.is_file():   # nothing left to train: keep the run's timings
        summary = {**load_json(stats_path), "lora_path": str(lora_path), "reused": True}
    elif main_process:
        save_json(summary, stats_path)
    summary["history"] = result.history
    return summary


# ============================================================== inference
def image_generator(seed: int) -> torch.Generator:
    """One CPU generator per image, from its seed (helpers.common.image_seeds): the result does not
    depend on batching or on the device."""
    return torch.Generator().manual_seed(int(seed))


@torch.no_grad()
def denoise(unet, scheduler, noise: torch.Tensor, m_down: torch.Tensor, z_masked: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor, num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
    """The guided sampling loop in latent space: z_T = sigma_init * noise -> z_0.

    Each step feeds concat(z_t, m_down, z_masked) with the empty prompt and the caption in one
    batch and mixes them with classifier-free guidance."""
    from .perf import sampling_timesteps

    device = noise.device
    dtype = unet.dtype
    do_cfg = guidance_scale > 1.0
    steps = sampling_timesteps(scheduler, num_inference_steps, device)   # no host sync inside the loop
    z = noise.float() * scheduler.init_noise_sigma
    emb = (torch.cat([uncond, cond]) if do_cfg else cond).to(dtype)
    mask_in = torch.cat([m_down] * 2) if do_cfg else m_down
    masked_in = torch.cat([z_masked] * 2) if do_cfg else z_masked
    for t_dev, t in steps:
        z_in = scheduler.scale_model_input(torch.cat([z] * 2) if do_cfg else z, t)
        eps = unet(torch.cat([z_in, mask_in, masked_in], 1).to(dtype), t_dev, encoder_hidden_states=emb,
                   return_dict=False)[0].float()
        if do_cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            # eps = eps(z_t, "") + w (eps(z_t, c) - eps(z_t, ""))   (Ho & Salimans 2022)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        z = scheduler.step(eps, t, z, return_dict=False)[0]
    return z


@torch.no_grad()
def inpaint(unet, vae, scheduler, images: torch.Tensor, masks: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            generators: Sequence[torch.Generator], resolution: int, num_inference_steps: int, guidance_scale: float,
            batched_vae_decode: bool = True, composite: bool = True) -> torch.Tensor:
    """Inpaint a batch: images (N,3,h,w) in [-1,1] and masks (N,1,h,w) at the data resolution ->
    predictions at the data resolution with the known pixels pasted back (``composite``).

    ``generators`` (one per image) draw the initial latent noise, then the VAE posterior sample of
    the masked image, in the same order as diffusers' pipeline."""
    device = unet.device
    size = images.shape[-1]
    images, masks = images.to(device), masks.to(device)
    # 1. SD's working size; the hole blanked before the VAE
    x, m = to_sd_resolution(images, masks, resolution)
    f, c = latent_factor(vae), vae.config.latent_channels
    shape = (1, c, x.shape[-2] // f, x.shape[-1] // f)
    # 2. per-image noise: z_T first, the VAE posterior sample second
    noise = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(device)
    eps_vae = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(device)
    z_masked = encode_latents(vae, blank_hole(x, m), eps_vae)
    m_down = mask_to_latent(m, shape[-2:])
    # 3. guided denoising in latent space, decode
    z0 = denoise(unet, scheduler, noise, m_down, z_masked, cond.to(device), uncond.to(device).expand_as(cond),
                 num_inference_steps, guidance_scale)
    pred = from_sd_resolution(decode_latents(vae, z0, batched_vae_decode), size)
    # 4. known pixels back in image space: removes the VAE's colour shift outside the hole
    # x_hat = m * pred + (1 - m) * x
    return masks * pred + (1 - masks) * images if composite else pred


def predict(cfg: Config, pipe, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence[str],
            seeds: Sequence[int] | None = None, desc: str = "SD inpainting",
            num_inference_steps: int | None = None, leave: bool = True) -> torch.Tensor:
    """:func:`inpaint` over a set in batches of ``sd.inference_batch_size``, with the preset's steps
    (or ``num_inference_steps``), guidance and sampler. Image ``i`` draws its noise from ``seeds[i]``
    (default: its index; the test set passes helpers.common.image_seeds of the names).
    ``leave=False``: a transient bar (a warm-up), silent in runner-executed notebooks."""
    from .perf import make_sampler, optimize_model, set_attention

    sd, device = cfg.sd, pipe.device
    seeds = list(range(len(images))) if seeds is None else list(seeds)
    # 1. speed switches: SDPA, channels_last, torch.compile (CUDA); the sampler of cfg.perf
    pipe.unet.eval()
    unet = getattr(pipe, "fast_unet", None)           # compiled once per pipeline, reused by later calls
    if unet is None:
        unet = pipe.fast_unet = optimize_model(pipe.unet, cfg.perf, device)
    set_attention(pipe.vae, cfg.perf.get("sdpa", True))
    scheduler = make_sampler(cfg.perf.get("sampler", "ddim"), pipe.scheduler.config)
    # 2. each distinct prompt once, and the empty prompt for guidance
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""] + list(prompts), device=device)
    out = []
    for start in progress(range(0, len(images), sd.inference_batch_size), desc=desc, leave=leave):
        sl = slice(start, start + sd.inference_batch_size)
        cond = torch.stack([embeds[p] for p in prompts[sl]])
        gens = [image_generator(s) for s in seeds[sl]]
        out.append(inpaint(unet, pipe.vae, scheduler, images[sl], masks[sl], cond, embeds[""][None], gens,
                           sd.resolution, num_inference_steps or sd.num_inference_steps, sd.guidance_scale,
                           cfg.perf.get("batched_vae_decode", True)).cpu())
    return torch.cat(out)


def predict_test_set(cfg: Config, pipe, method: str, train_stats: dict | None = None, root: Path | None = None,
                     limit: int | None = None) -> dict:
    """Run the frozen test set through ``pipe`` and save the predictions as ``method``
    (``sd_zeroshot`` or ``sd_lora``) with the meta the evaluation reads. Returns the meta."""
    from . import captions as C
    from . import data as D

    device = pipe.device
    test = D.load_test_set(cfg, root)
    n = len(test["name"]) if limit is None else min(limit, len(test["name"]))
    caps = C.make_captions(cfg, root=root)
    prompts = [caps["captions"].get(name, cfg.captions.fallback_prompt) for name in test["name"][:n]]
    seeds = image_seeds(cfg.seed, test["name"][:n])
    # 1. one short warm-up batch (kernel selection, torch.compile) outside the timing; then timed,
    #    peak memory counted from zero
    bs = min(cfg.sd.inference_batch_size, n)
    predict(cfg, pipe, test["image"][:bs], test["mask"][:bs], prompts[:bs], seeds[:bs], desc="warm-up",
            num_inference_steps=2, leave=False)   # one bar per step: the warm-up's is transient
    reset_peak_memory(device)
    with timed(device) as t:
        preds = predict(cfg, pipe, test["image"][:n], test["mask"][:n], prompts, seeds, desc=method)
    # 2. what was used, how fast, how much memory
    lora = getattr(pipe, "lora_path", None)
    base = getattr(pipe, "source", "?")
    tiny = " (tiny random pipeline: smoke preset, images are noise)" if cfg.sd.tiny else ""
    meta = {"weights": f"{base}{tiny}" + (f" + LoRA {lora}" if lora else " (zero-shot, no LoRA)"),
            "base_weights": base, "lora_weights": lora, "device": str(device),
            "sampler": cfg.perf.get("sampler", "ddim"), "num_inference_steps": cfg.sd.num_inference_steps,
            "guidance_scale": cfg.sd.guidance_scale, "sd_resolution": cfg.sd.resolution, "seed": cfg.seed,
            "sample_seconds_per_image": t["seconds"] / n, "images_per_s": n / t["seconds"],
            "timing": "wall time of the whole test set after one warm-up batch, prompt encoding included",
            "peak_memory_bytes": peak_memory_bytes(device), "captions_status": caps["status"],
            "captions": C.describe(caps),
            "total_params": sum(count_parameters(getattr(pipe, k))[1] for k in ("unet", "vae", "text_encoder"))}
    if train_stats:
        meta.update({"trainable_params": train_stats.get("trainable_params"),
                     "train_images_per_s": train_stats.get("images_per_s"),
                     "train_peak_memory_bytes": train_stats.get("peak_memory_bytes"),
                     "train_seconds": train_stats.get("seconds"), "train_steps": train_stats.get("steps"),
                     "lora": train_stats.get("lora")})
    else:
        meta["trainable_params"] = 0
    if cfg.sd.tiny:
        meta["note"] = "smoke: tiny randomly initialised SD pipeline; proves the pipeline, says nothing about the method"
    D.write_predictions(cfg, method, test["name"][:n], preds, meta, root)
    return meta


def reference_pipeline_output(pipe, images: torch.Tensor, masks: torch.Tensor, prompts: Sequence[str],
                              generators: Sequence[torch.Generator], resolution: int, num_inference_steps: int,
                              guidance_scale: float) -> torch.Tensor:
    """diffusers' own ``pipe(...)`` at SD resolution, in [-1, 1], no compositing: the reference
    :func:`inpaint` is tested against."""
    x, m = to_sd_resolution(images, masks, resolution)
    out = pipe(prompt=list(prompts), image=(x + 1) / 2, mask_image=m, height=resolution, width=resolution,
               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
               generator=list(generators), output_type="pt").images
    return out.float() * 2 - 1


def main(argv: Sequence[str] | None = None) -> dict:
    """LoRA training from the command line, on one or several GPUs:
    ``accelerate launch -m helpers.sd --preset full`` (or ``python -m helpers.sd --preset smoke``)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smoke", help="smoke | full | path to a YAML preset")
    add_set_argument(ap)
    ap.add_argument("--max-steps", type=int, default=None, help="stop this call after this many steps (resumable)")
    args = ap.parse_args(argv)
    from accelerate import PartialState

    cfg = load_config(args.preset, parse_overrides(args.overrides))
    # first use of Accelerate's state: without a GPU, processes started by `accelerate launch --multi_gpu`
    # (torchrun) join one gloo group on the CPU instead of each training alone
    PartialState(cpu=get_device(cfg).type != "cuda")
    stats = train_lora(cfg, load_pipeline(cfg), max_steps=args.max_steps)
    if PartialState().is_main_process:
        print(json.dumps({k: v for k, v in stats.items() if k != "history"}, indent=2, default=str))
    return stats


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
