"""Writes notebooks/03_ddpm_inpainting.ipynb (run: python tools/make_nb_03.py)."""
from nbtools import code, header, md, write

cells = header("""# 03 · DDPM inpainting: fine-tuning a 7-channel U-Net
Image completion with diffusion models: **DDPM vs Stable Diffusion 1.5 + LoRA**

We turn a pretrained *unconditional* face DDPM into an inpainting model: the U-Net additionally
sees the masked image and the mask, is fine-tuned with a loss that weights the hole, and samples
with DDIM. A training-free baseline from the same pretrained model (RePaint) shows what the
fine-tuning buys. Theory: notebook 02.""")
cells += [
    code("""import torch
import pandas as pd
import matplotlib.pyplot as plt
device = H.common.get_device(cfg)
H.common.seed_everything(cfg.seed)
d = cfg.ddpm
print(f"preset {cfg.preset} on {device}: {H.ddpm.weights_description(cfg, P)}")
if not d.pretrained_id:
    print("SMOKE PRESET: the U-Net is TINY, randomly initialised and trained for a few steps on a CPU, "
          "so every sample below is noise-like. This run shows that the pipeline works end to end, "
          "not what the method achieves; the full preset is the study.")"""),
    md("""## The model: $\\epsilon_\\theta(\\text{concat}(x_\\text{masked}, m, x_t), t)$
The pretrained U-Net (`google/ddpm-celebahq-256` in `full`) predicts the noise of a 3-channel $x_t$.
For inpainting it also needs the known pixels $x_\\text{masked} = x \\odot (1 - m)$ and the mask
$m$ (1 = hole), so its first convolution is **widened from 3 to 7 input channels**:

$$W_\\text{new} = [\\,\\underbrace{0}_{x_\\text{masked}\\,(3)},\\ \\underbrace{0}_{m\\,(1)},\\ \\underbrace{W_\\text{old}}_{x_t\\,(3)}\\,].$$

The pretrained kernel is kept for the $x_t$ channels and the new ones start at zero, so before any
training the widened model computes **exactly** what the pretrained one did: fine-tuning starts
from a working denoiser and only has to learn to use the extra inputs.""", slide="slide"),
    code("""base = H.ddpm.load_unconditional_unet(cfg, P)
noise_sched = H.ddpm.load_noise_scheduler(cfg, P)
unet = H.ddpm.widen_conv_in(base, d.in_channels)
trainable, total = H.common.count_parameters(unet)
print(f"conv_in: {tuple(base.conv_in.weight.shape)} -> {tuple(unet.conv_in.weight.shape)}; "
      f"{trainable:,} trainable of {total:,} parameters (the whole U-Net is fine-tuned)")
val = H.data.collate([H.data.InpaintDataset(cfg, "val")[i] for i in range(2)])
x_t, t = torch.randn_like(val["image"]), torch.tensor([10, 700])
with torch.no_grad():
    gap = (unet(H.ddpm.model_input(H.data.masked_image(val["image"], val["mask"]), val["mask"], x_t), t).sample
           - base(x_t, t).sample).abs().max().item()
print(f"max |eps_widened - eps_pretrained| before training = {gap}")"""),
    md("""## The loss: simplified $\\epsilon$-loss, weighted by the mask
$$L = \\operatorname{mean}\\big(W \\odot (\\epsilon - \\epsilon_\\theta)^2\\big),\\qquad
W = m\\,\\lambda_\\text{mask} + (1 - m)\\,\\lambda_\\text{context}.$$
Only the hole has to be generated; the context pixels are given as input, so their noise
prediction matters little ($\\lambda_\\text{context} \\ll \\lambda_\\text{mask}$) but is not ignored: it
keeps the pretrained denoiser intact near the boundary. One training example, as the network sees it:""", slide="slide"),
    code("""ex = H.data.collate([H.data.InpaintDataset(cfg, "train")[i] for i in range(3)])
t_ex = torch.tensor([100, 400, 800])
x_t_ex = H.ddpm.q_sample(ex["image"], t_ex, torch.randn_like(ex["image"]), noise_sched.alphas_cumprod)
W = H.ddpm.loss_weights(ex["mask"], d.lambda_mask, d.lambda_context)
rows = [[H.data.masked_image(x, m), m, xt.clamp(-1, 1), w / d.lambda_mask, x]
        for x, m, xt, w in zip(ex["image"], ex["mask"], x_t_ex, W)]
H.plots.image_grid(rows, ["x_masked", "mask", "x_t", "W (white = lambda_mask)", "x_0 (target)"],
                   [f"t = {int(t)}" for t in t_ex], path=P.figures / "03_inputs.png");"""),
    md("""## Training
Values from the preset (one source of truth: `configs/<preset>.yaml`, section `ddpm`). AdamW on all
U-Net parameters, gradient-norm clipping, mixed precision on a GPU (fp16 with a grad scaler, or
bf16; the CPU runs fp32). The loop is Hugging Face Accelerate (`helpers.train.train`): the same code
runs on several GPUs with `accelerate launch -m helpers.ddpm --preset full`.""", slide="slide"),
    code("""keys = ["batch_size", "lr", "weight_decay", "num_epochs", "max_steps", "max_grad_norm", "lambda_mask",
        "lambda_context", "mixed_precision", "num_inference_steps", "eta", "val_every", "checkpoint_every"]
pd.DataFrame({"value": [d[k] for k in keys] + [cfg.perf.sampler, cfg.data.image_size]},
             index=keys + ["sampler (perf.sampler)", "image_size"])"""),
    md("""**Checkpoints and resume.** Every `checkpoint_every` steps the weights, optimizer and grad-scaler
state are written atomically (temporary file, then rename) to `reports/<preset>/models/ddpm_inpaint/ckpt_<run>/last.pt`.
A run killed mid-training and started again continues from there with the same optimizer state and
the same data order: the batches of epoch $e$ are a permutation fixed by $(\\text{seed}, e)$, and the
$t$, $\\epsilon$ of step $s$ come from a generator seeded with $(\\text{seed}, s)$ (tested in
`tests/test_ddpm.py`). Re-running this cell after a finished run loads the result instead of
training again. Every `val_every` steps a fixed validation batch is inpainted with DDIM.""", slide="subslide"),
    code("""on_validate = H.ddpm.make_validator(cfg, P, unet, noise_sched.config, device)
train_stats = H.ddpm.finetune(cfg, P, unet, noise_sched, device, on_validate=on_validate)
{k: v for k, v in train_stats.items() if k != "history"}"""),
    code("""H.plots.loss_curve(train_stats["history"], P.figures / "03_loss.png", title="weighted eps-loss",
                   smooth=min(10, max(1, len(train_stats["history"]) // 4)));""", slide="subslide"),
    code("""from IPython.display import Image, display
val_figs = sorted(P.figures.glob("03_val_step*.png"))
print(f"{len(val_figs)} validation grids; the last one:")
if val_figs:
    display(Image(filename=str(val_figs[-1])))"""),
    md("""## Sampling: DDIM conditioned on $(x_\\text{masked}, m)$
From $x_T \\sim \\mathcal N(0, I)$ (one seeded generator per image, so a fixed seed gives the same
image), `ddpm.num_inference_steps` deterministic DDIM steps ($\\eta = 0$) with
$\\epsilon_\\theta(\\text{concat}(x_\\text{masked}, m, x_t), t)$, batched over the test set.

**Why paste the known pixels back.** The network only *sees* the context; nothing forces its output
to reproduce it exactly, and the loss barely weights it ($\\lambda_\\text{context}$). The known pixels
are given, so the final image is $m \\odot \\hat x_0 + (1 - m) \\odot x$: the context is exact, the
metrics measure only the generated hole (plus its seam), and every method is compared the same way.""", slide="slide"),
    code("""unet = unet.cpu()     # the training copy leaves the GPU: the peak memory below is the sampler's own
finetuned = H.ddpm.load_finetuned(cfg, P).to(device)      # the weights as saved, loaded back
finetuned = H.perf.optimize_model(finetuned, cfg.perf, device)
preds, test, ft_meta = H.ddpm.save_finetuned_predictions(cfg, P, finetuned, noise_sched.config, device, train_stats)
print(f"{len(preds)} test predictions -> {P.predictions('ddpm_finetuned')} "
      f"({ft_meta['images_per_s']:.2f} images/s on {device})")"""),
    code("""n = min(6, len(preds))
H.plots.image_grid(H.ddpm.grid_rows(H.data.masked_image(test["image"], test["mask"]), test["mask"], preds, test["image"], n),
                   H.ddpm.GRID_TITLES, [f"{k} {h:.0%}" for k, h in zip(test["kind"][:n], test["hole_fraction"][:n])],
                   path=P.figures / "03_test_samples.png");"""),
    md("""## Baseline without training: RePaint
RePaint (Lugmayr et al. 2022) inpaints with the **unconditional** model as it is. At every reverse
step the hole comes from the model and the context from the forward process applied to the known pixels:

$$x_{t-1} = m \\odot x_{t-1}^\\text{unknown} + (1-m) \\odot x_{t-1}^\\text{known},\\quad
x_{t-1}^\\text{unknown} \\sim p_\\theta(x_{t-1}\\mid x_t),\\quad x_{t-1}^\\text{known} \\sim q(x_{t-1}\\mid x_0).$$

The two halves do not know about each other, so the sampler repeatedly jumps back up,
$x_{t-1} \\to x_t \\sim q(x_t \\mid x_{t-1})$ (`jump_length` steps, `jump_n_sample` passes), letting the model
harmonise the hole with the context. It costs many more U-Net calls than DDIM and needs no training;
it runs on the first `ddpm.repaint.max_images` test images (the meta file says so).""", slide="slide"),
    code("""finetuned = finetuned.cpu()     # only the model being measured on the GPU
base = base.to(device)
base = H.perf.optimize_model(base, cfg.perf, device)
rp_preds, rp_test, rp_meta = H.repaint.save_repaint_predictions(cfg, P, base, noise_sched, device)
print(rp_meta["subset"], f"- {rp_meta['model_calls_per_image']} U-Net calls per image, "
      f"{rp_meta['images_per_s']:.2f} images/s")
k = min(4, len(rp_preds))
rows = [[H.data.masked_image(x, m), rp, ft, x] for x, m, rp, ft in
        zip(rp_test["image"][:k], rp_test["mask"][:k], rp_preds[:k], preds[:k])]
H.plots.image_grid(rows, ["masked input", "RePaint (no training)", "fine-tuned 7-ch", "ground truth"],
                   path=P.figures / "03_repaint_vs_finetuned.png");"""),
    md("""## Cost: parameters, speed, memory
Images per second and peak GPU memory of training and of each sampler (peak memory is only
measured on a GPU). Quality is scored in notebook 05.""", slide="slide"),
    code("""perf = pd.DataFrame(H.ddpm.perf_rows(train_stats, ft_meta, rp_meta))
perf.to_csv(P.tables / "03_ddpm_perf.csv", index=False)
perf"""),
    md("""## Saved for the next notebooks
* fine-tuned weights: `reports/<preset>/models/ddpm_inpaint/unet/` (diffusers format)
* predictions: `reports/<preset>/predictions/ddpm_finetuned/` and `.../ddpm_repaint/` (PNG + `meta.json`)
* figures `03_*.png`, table `03_ddpm_perf.csv`""", slide="slide"),
    code("""H.common.save_json({"train": {k: v for k, v in train_stats.items() if k != "history"},
                    "finetuned": ft_meta, "repaint": rp_meta}, P.tables / "03_ddpm_summary.json")
sorted(p.name for p in (P.reports / "predictions").iterdir())"""),
]
write("notebooks/03_ddpm_inpainting.ipynb", cells)
