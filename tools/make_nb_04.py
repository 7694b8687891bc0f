"""Writes notebooks/04_sd_lora.ipynb (run: python tools/make_nb_04.py)."""
from nbtools import code, header, md, write

cells = header("""# 04 · Stable Diffusion 1.5 inpainting + LoRA
Image completion with diffusion models: **DDPM vs Stable Diffusion 1.5 + LoRA**

The second method of the study: a large pretrained **latent** diffusion model built for inpainting,
adapted to our images with **LoRA** (a few trainable low-rank matrices, everything else frozen), and
the same model **without** LoRA (zero-shot) to show what the adaptation adds.""")
cells += [
    md("""> **Smoke preset:** the pipeline below is *tiny and randomly initialised* (same classes as SD 1.5,
> toy sizes): its images are noise. The run proves that every stage works end to end; only the
> `full` preset (real weights, GPU) says anything about the method.""", slide="-"),
    md("""## The model: a 9-channel U-Net in latent space
Latent diffusion (Rombach et al. 2022) denoises in the latent space of a VAE with encoder $\\mathcal{E}$,
decoder $\\mathcal{D}$ and scaling factor $s$ (0.18215):

$$z_0 = s\\,\\mathcal{E}(x), \\qquad z_\\text{masked} = s\\,\\mathcal{E}\\big(x \\odot [m < 0.5]\\big), \\qquad m_\\downarrow = \\text{resize}(m)$$

The inpainting U-Net sees **9 channels**: $\\epsilon_\\theta\\big(\\text{concat}(z_t, m_\\downarrow, z_\\text{masked}),\\ t,\\ \\tau(c)\\big)$
with $z_t$ (4), the mask (1, 1 = hole) and the masked-image latent (4); $\\tau(c)$ is the CLIP text
encoder's output for the image's caption $c$ (77 tokens).""", slide="slide"),
    code("""pipe = H.sd.load_pipeline(cfg)          # full: the hub checkpoint; smoke: the tiny pipeline, saved and loaded back
print("weights:", pipe.source, "| device:", pipe.device)
import pandas as pd
pd.DataFrame(H.sd.describe(pipe))"""),
    md("""## The pieces, for one test image
SD works at 512 px (smoke: 64 px): smaller images are upsampled first and the output is
downsampled back before scoring. The hole is blanked **before** the VAE sees the image.""", slide="slide"),
    code("""test = H.data.load_test_set(cfg)
captions = H.captions.make_captions(cfg)
name = test["name"][0]
pieces = H.sd.encode_pieces(pipe, test["image"][0], test["mask"][0], captions["captions"][name], cfg.sd.resolution)
print("captions:", captions["status"])
print(f"caption: {pieces['prompt']!r} -> tau(c) {tuple(pieces['text_embedding'].shape)}")
print(f"image {tuple(pieces['image'].shape)} -> z0 {tuple(pieces['z0'].shape)} (factor {pieces['factor']}, "
      f"scaled by {pieces['scaling_factor']}); mask -> {tuple(pieces['m_down'].shape)}; U-Net input {tuple(pieces['unet_input'].shape)}")
ch = H.sd.channel_images
rows = [[pieces["image"], pieces["mask"], pieces["masked_image"], pieces["m_down"]],
        ch(pieces["z0"]), ch(pieces["z_masked"]), ch(pieces["z_t"])]
H.plots.image_grid(rows, ["image / ch 0", "mask / ch 1", "masked image / ch 2", "m_down / ch 3"],
                   ["pixels", "z0", "z_masked", "z_t (t = 500)"],
                   path=P.figures / "04_pieces.png");"""),
    md("""### The VAE round trip shifts colours; compositing removes the shift
$\\mathcal{D}(\\mathcal{E}(x)) \\neq x$, also outside the hole. Pasting the known pixels back **in image
space**, $\\hat{x} = m \\odot \\text{pred} + (1 - m) \\odot x$, makes the known region exact.""", slide="subslide"),
    code("""import torch
x, m = pieces["image"][None].to(pipe.device), pieces["mask"][None].to(pipe.device)
with torch.no_grad():
    recon = H.sd.decode_latents(pipe.vae, H.sd.encode_latents(pipe.vae, x))
known = (m < 0.5).expand_as(x)
composited = H.data.composite(recon, x, m)
print(f"known region, mean |error| after the VAE round trip: {(recon - x)[known].abs().mean():.4f}; "
      f"max |error| after compositing: {(composited - x)[known].abs().max():.4f}")"""),
    md("""## LoRA: a low-rank update of the attention projections
Every targeted weight (`to_q, to_k, to_v, to_out.0` of the U-Net's attention) becomes (Hu et al. 2021)

$$W' = W + \\frac{\\alpha}{r} B A, \\qquad A \\in \\mathbb{R}^{r \\times k}, \\; B \\in \\mathbb{R}^{d \\times r}, \\; B_0 = 0$$

so training starts exactly at the pretrained model. VAE, text encoder and U-Net stay **frozen**;
only $A, B$ get gradients.""", slide="slide"),
    code("""lora_info = H.sd.add_lora(pipe, cfg.sd)
print(f"LoRA r={cfg.sd.lora.r}, alpha={cfg.sd.lora.alpha}, dropout={cfg.sd.lora.dropout} on {list(cfg.sd.lora.target_modules)}")
print(f"trainable: {lora_info['trainable_params']:,} parameters = {lora_info['fraction_of_unet']:.3%} of the U-Net, "
      f"{lora_info['fraction_of_all']:.3%} of all {lora_info['total_params']:,}")"""),
    md("""## Training objective, with classifier-free-guidance dropout
For a training image with a **random** mask (same generators as the test masks, never the test masks):

$$z_t = \\sqrt{\\bar\\alpha_t}\\, z_0 + \\sqrt{1 - \\bar\\alpha_t}\\,\\epsilon, \\qquad
\\mathcal{L} = \\big\\| \\epsilon - \\epsilon_\\theta(\\text{concat}(z_t, m_\\downarrow, z_\\text{masked}), t, \\tau(c')) \\big\\|^2$$

with $c' = $ `""` with probability `sd.prompt_dropout` (0.15), else the caption: the model keeps an
unconditional mode, which guidance needs at inference. (If the scheduler predicts $v$, the target is
$v = \\sqrt{\\bar\\alpha_t}\\epsilon - \\sqrt{1-\\bar\\alpha_t} z_0$.)

Pitfalls handled in `helpers.sd`: with fp16 the LoRA parameters stay fp32 (else the grad scaler fails
with *"Attempting to unscale FP16 gradients"*); each caption is encoded once; all randomness of a step
comes from the step's generator, so a resumed run is exact. The loop is `helpers.train.train`
(Accelerate: mixed precision, several GPUs, checkpoints).""", slide="slide"),
    code("""stats = H.sd.train_lora(cfg, pipe)
print(f"{stats['steps']} steps, {stats['images_per_s']:.2f} images/s, peak memory "
      f"{stats['peak_memory_bytes'] or 'n/a (CPU)'}; LoRA saved to {stats['lora_path']}")
H.plots.loss_curve(stats["history"], P.figures / "04_lora_loss.png", title="LoRA training loss (MSE on eps)");"""),
    md("""## Inference: guided denoising, then the known pixels back
Each step runs the U-Net on the caption and on the empty prompt and mixes them (Ho & Salimans 2022):

$$\\hat\\epsilon = \\epsilon_\\theta(z_t, \\varnothing) + w\\,\\big(\\epsilon_\\theta(z_t, c) - \\epsilon_\\theta(z_t, \\varnothing)\\big)$$

with $w$ = `sd.guidance_scale`, `sd.num_inference_steps` steps of the sampler `perf.sampler`, and one
seeded generator per test image (the result does not depend on batching). The decoded image is resized
to the data resolution and composited. The LoRA weights are loaded from the saved file into a
**fresh** pipeline, exactly as anyone reusing them would.""", slide="slide"),
    code("""del pipe    # the training pipeline: left on the GPU, its weights would count in the inference peak memory
zero_shot = H.sd.predict_test_set(cfg, H.sd.load_pipeline(cfg), "sd_zeroshot")
lora_pipe = H.sd.load_lora(H.sd.load_pipeline(cfg), stats["lora_path"])
with_lora = H.sd.predict_test_set(cfg, lora_pipe, "sd_lora", train_stats=stats)
for label, meta in (("zero-shot", zero_shot), ("LoRA", with_lora)):
    print(f"{label:9s}: {meta['images_per_s']:.2f} images/s, {meta['sample_seconds_per_image']:.2f} s/image -- {meta['weights']}")"""),
    code("""n = min(6, len(test["name"]))
zs, _ = H.data.read_predictions(cfg, "sd_zeroshot", test["name"][:n])
lo, _ = H.data.read_predictions(cfg, "sd_lora", test["name"][:n])
rows = [[H.data.masked_image(x, m), z, l, x] for x, m, z, l in zip(test["image"][:n], test["mask"][:n], zs, lo)]
H.plots.image_grid(rows, ["masked input", "SD zero-shot", "SD + LoRA", "ground truth"], test["kind"][:n],
                   path=P.figures / "04_predictions.png");""", slide="subslide"),
    md("""## Cost of the two variants
Trainable parameters, training and inference speed and peak memory (GPU only; `None` on the CPU).
Quality is scored for every method on the same frozen test set in notebook 05: the **zero-shot**
row is the ablation that shows what LoRA adds.""", slide="slide"),
    code("""keys = ["weights", "trainable_params", "train_images_per_s", "train_peak_memory_bytes", "train_seconds",
        "images_per_s", "sample_seconds_per_image", "peak_memory_bytes", "device"]
table = pd.DataFrame([{"method": m, **{k: meta.get(k) for k in keys}}
                      for m, meta in (("sd_zeroshot", zero_shot), ("sd_lora", with_lora))])
table.to_csv(P.tables / "04_sd_cost.csv", index=False)
H.common.save_json({"lora": lora_info, "train": {k: v for k, v in stats.items() if k != "history"},
                    "sd_zeroshot": zero_shot, "sd_lora": with_lora}, P.tables / "04_sd_summary.json")
table"""),
    md("""## Saved for the next notebooks
* `reports/<preset>/predictions/sd_zeroshot/` and `.../sd_lora/`: one PNG per test image at the data
  resolution (known pixels exact) + `meta.json` (weights, speed, memory, training numbers)
* `reports/<preset>/models/sd_lora/pytorch_lora_weights.safetensors`: loadable with diffusers'
  `pipe.load_lora_weights(folder)`
* figures `04_*.png`, tables `04_sd_cost.csv`, `04_sd_summary.json`""", slide="slide"),
]
write("notebooks/04_sd_lora.ipynb", cells)
