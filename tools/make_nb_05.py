"""Writes notebooks/05_evaluation.ipynb (run: python tools/make_nb_05.py)."""
from nbtools import code, header, md, write

cells = header("""# 05 · Evaluation: one protocol for every method
Image completion with diffusion models: **DDPM vs Stable Diffusion 1.5 + LoRA**

Every method is scored here on the **same frozen test images and masks**, after compositing the
known pixels back, at the same resolution, with the same metrics. Notebook 06 presents the
results; this notebook computes and saves them.""")
cells += [
    code("H.findings.markdown(H.findings.smoke_warning(cfg))"),
    md("""## The protocol
1. **Test set**: the images and masks frozen by notebook 01 (`data/<preset>/test_masks`), never
   re-drawn; every method sees exactly these.
2. **Predictions**: each method writes `reports/<preset>/predictions/<method>/<name>.png` (PNG:
   JPEG artefacts would change FID) and a `meta.json` naming the weights it used and its runtime.
3. **Compositing**: the evaluator pastes the known pixels back,
   $\\hat x = m \\odot x_\\text{pred} + (1 - m) \\odot x$, so no method is scored on context it was given.
4. **Missing is reported**: a method without prediction files is listed with the reason, not dropped;
   a method run on a subset (RePaint is slow) is scored on exactly the images it has, with its n.""", slide="slide"),
    code("""test = H.data.load_test_set(cfg)
import collections
print(f"{len(test['name'])} test images at {cfg.data.image_size}px; mask kinds:", dict(collections.Counter(test["kind"])))
print("hole fractions:", [f"{h:.0%}" for h in test["hole_fraction"]])"""),
    md("""## Pixel metrics: whole image and hole only
On 8-bit values ($\\text{MAX} = 255$), computed as scikit-image does (tested to agree within 1e-3):

$$\\text{PSNR} = 10 \\log_{10} \\frac{\\text{MAX}^2}{\\text{MSE}}, \\qquad
\\text{MSE}_\\text{hole} = \\frac{1}{3 \\sum_p m_p} \\sum_{p, c} m_p \\,(\\hat x_{p,c} - x_{p,c})^2$$

The hole MSE averages over **hole pixels only**. Zeroing the known pixels and averaging over the
whole image would divide the error by the hole fraction $f$ and add $-10 \\log_{10} f$ dB
(+10 dB for a 10 % hole) without any change in the filled pixels.

$$\\text{SSIM}(x, y) = \\frac{(2 \\mu_x \\mu_y + C_1)(2 \\sigma_{xy} + C_2)}{(\\mu_x^2 + \\mu_y^2 + C_1)(\\sigma_x^2 + \\sigma_y^2 + C_2)}$$

per 7×7 window (uniform weights, $C_1 = (0.01 \\cdot 255)^2$, $C_2 = (0.03 \\cdot 255)^2$); image SSIM
is the mean of the map away from the border; **hole SSIM is the mean of the map over hole pixels**.

After compositing, all the error sits in the hole, so per image
$\\text{PSNR} = \\text{PSNR}_\\text{hole} - 10 \\log_{10} f$: on the same images, whole-image PSNR
ranks methods exactly as hole PSNR does, only shifted by the hole sizes.""", slide="slide"),
    md("""## Learned metrics: LPIPS, FID, KID
* **LPIPS** (Zhang et al. 2018): distance between deep features (AlexNet, linear heads v0.1);
  lower is closer. Its ImageNet backbone is a download: where it is absent, LPIPS is reported as
  *unavailable* with the file to place, never computed from untrained weights.
* **FID** (Heusel et al. 2017): Gaussian fits $(\\mu, \\Sigma)$ to the InceptionV3 pool features of
  real and inpainted images,
  $\\text{FID} = \\lVert \\mu_r - \\mu_g \\rVert^2 + \\operatorname{Tr}\\big(\\Sigma_r + \\Sigma_g - 2 (\\Sigma_r \\Sigma_g)^{1/2}\\big)$.
  Biased upward for small n: always read it with its n.
* **KID** (Binkowski et al. 2018): unbiased $\\text{MMD}^2$ with kernel
  $k(a, b) = (a^\\top b / d + 1)^3$, averaged over random subsets: far less biased on small sets.""", slide="slide"),
    code("""lpips_status = H.metrics.lpips_status(cfg.eval.lpips_net, [P.cache])
inception, fid_status = H.metrics.load_inception([P.cache], H.common.get_device(cfg), cfg.eval.fid_backbone)
print(lpips_status.message())
print(fid_status.message())
print("FID input:", fid_status.details.get("resize", "-"))"""),
    md("""## A classical baseline: OpenCV Telea
Telea (2004) fills the hole from its boundary inwards (fast marching): each pixel becomes a
weighted average of the known pixels near it. No learning, no weights, milliseconds per image:
any learned method has to beat it to justify its cost.""", slide="slide"),
    code("""H.evaluate.run_telea(cfg)
print(H.common.load_json(P.predictions("telea") / "meta.json"))"""),
    md("## Which predictions exist?", slide="subslide"),
    code("""for method, label in H.data.METHODS.items():
    found = H.evaluate.find_predictions(cfg, method, test["name"])
    print(f"{label:32s} {len(found['names']):3d} / {len(test['name'])} images  {found['reason']}")"""),
    md("""## Scoring every method
Per image: PSNR, SSIM, hole PSNR, hole SSIM, LPIPS; per method: FID and KID against the real
test images of the same names. Means with **percentile-bootstrap 95 % confidence intervals**
over images (seeded).""", slide="slide"),
    code("""ev = H.evaluate.evaluate_all(cfg)
H.findings.table(H.findings.format_summary(ev))"""),
    code("H.findings.markdown(H.findings.table_caption(ev))", slide="subslide"),
    md("## Means with 95 % confidence intervals", slide="slide"),
    code("""H.findings.plot_bars(ev, path=P.figures / "05_metrics_bars.png");"""),
    md("""## By hole size and by mask kind
Larger holes leave less context: every method should degrade; the question is how fast.""", slide="slide"),
    code("""H.findings.plot_vs_hole(ev, path=P.figures / "05_metric_vs_hole.png");"""),
    code("""H.findings.plot_vs_hole(ev, path=P.figures / "05_metric_vs_kind.png", by="kind");""", slide="subslide"),
    code("""ev.by_bucket.pivot_table(index=["label", "group"], columns="metric", values="mean").round(3)""",
         slide="subslide"),
    md("## Runtime and size (from each method's meta.json)", slide="slide"),
    code("H.findings.table(H.findings.format_runtime(ev))"),
    md("## Same test images, every method", slide="slide"),
    code("""k = min(4, len(test["name"]))
H.findings.qualitative_grid(cfg, test["name"][:k], P.figures / "05_qualitative.png", ev=ev);"""),
    md("## The hardest images", slide="subslide"),
    code("""names, criterion = H.findings.failure_cases(ev, cfg.eval.num_failure_cases)
print("chosen by", criterion)
H.findings.qualitative_grid(cfg, names, P.figures / "05_failure_cases.png", ev=ev,
                            title=f"failure cases: {criterion}");"""),
    md("""## Saved for notebook 06
Per-image scores, the summary, the by-bucket / by-kind tables, the runtime table and every
implementation detail, in `reports/<preset>/tables/`.""", slide="slide"),
    code("""print(sorted(p.name for p in P.tables.glob("05_*")))
print("missing:", [m["method"] for m in ev.missing] or "none")"""),
]
write("notebooks/05_evaluation.ipynb", cells)
