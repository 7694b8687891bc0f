"""Beyond LoRA (notebook 04, last section): other parameter-efficient adapters of the frozen SD 1.5
inpainting U-Net, all built by ``peft`` on the study's target modules (``to_q, to_k, to_v, to_out.0``).

For a frozen weight W (d x k) of one attention projection, each method trains a small set of
parameters and uses W' in its place:

* LoRA (Hu et al. 2021):      W' = W + (alpha / r) B A,            A: r x k, B: d x r       r (d + k)
* DoRA (Liu et al. 2024):     W' = m * (W + (alpha/r) B A) / ||W + (alpha/r) B A||_row       r (d + k) + d
                             (one norm per output row, as peft computes it; m has d entries)
* LoHa (Hyeon-Woo et al. 2022): W' = W + (B1 A1) * (B2 A2)  (element-wise product)          2 r (d + k)
* LoKr (Yeh et al. 2024):     W' = W + C kron (B A)  (Kronecker product of a small C and a low-rank factor)
* OFT (Qiu et al. 2023):      W' = W R,  R (k x k) block-diagonal orthogonal: it rotates the inputs
                             (Cayley transform of skew blocks)
* QLoRA (Dettmers et al. 2023): LoRA on a frozen W stored in 4-bit NF4 (CUDA + bitsandbytes only)

W' has the shape of W, so each could be merged into a plain weight after training (peft's
``merge_adapter``) for the base model's inference cost; the study does not merge (the adapters run as
extra layers), and merging into QLoRA's NF4 base is not lossless. Conventions: ``helpers/__init__.py``.
"""
from __future__ import annotations

import torch


def adapter_config(variant: dict):
    """The peft config of one variant: ``variant`` is an entry of ``ablation.variants`` of the preset
    with its ``target_modules`` and ``dropout`` filled in (:func:`helpers.study.models.peft_variants.resolve`)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig, OFTConfig

    v, targets = variant, list(variant["target_modules"])
    method = v["method"]
    if method == "lora":          # LoRA, DoRA (use_dora) and QLoRA (the base quantized before this call)
        return LoraConfig(r=v["r"], lora_alpha=v["alpha"], lora_dropout=v["dropout"], init_lora_weights="gaussian",
                          use_dora=bool(v.get("use_dora", False)), target_modules=targets)
    if method == "loha":          # two low-rank products multiplied element-wise: rank up to r^2 from 2r vectors
        return LoHaConfig(r=v["r"], alpha=v["alpha"], module_dropout=v["dropout"], target_modules=targets)
    if method == "lokr":          # Kronecker product: the factorisation of d and k is peft's (decompose_factor)
        return LoKrConfig(r=v["r"], alpha=v["alpha"], module_dropout=v["dropout"],
                          decompose_factor=v.get("decompose_factor", -1), target_modules=targets)
    if method == "oft":           # block size must divide every target's input width (SD: 320, 640, 1280, 768)
        return OFTConfig(r=0, oft_block_size=v["block_size"], module_dropout=v["dropout"], target_modules=targets)
    raise ValueError(f"unknown adapter method {method!r}: expected lora, loha, lokr or oft")


def attach_adapter(pipe, variant: dict) -> None:
    """Freeze VAE, text encoder and U-Net, then attach one variant's adapter (peft) to the U-Net:
    the adapter's own parameters are the only ones that train."""
    from diffusers.training_utils import cast_training_params

    # 1. everything frozen
    for m in (pipe.vae, pipe.text_encoder, pipe.unet):
        m.requires_grad_(False)
    # 2. peft wraps each target projection: W' = W + delta(theta) (or W R(theta) for OFT), delta = 0 at step 0;
    #    an adapter attached before (this cell run again) is replaced by a fresh one
    if "default" in (getattr(pipe.unet, "peft_config", None) or {}):
        pipe.unet.delete_adapters("default")
    pipe.unet.add_adapter(adapter_config(variant))
    adapter_keys = ("lora_", "hada_", "lokr_", "oft_")
    for name, p in pipe.unet.named_parameters():
        if any(k in name for k in adapter_keys):
            p.requires_grad_(True)
    # 3. the adapter in fp32 whatever the frozen weights' dtype (a grad scaler cannot unscale fp16 gradients)
    cast_training_params(pipe.unet, dtype=torch.float32)
