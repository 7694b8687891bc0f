"""Writes notebooks/06_comparison.ipynb (run: python tools/make_nb_06.py).

A talk: every cell carries slideshow metadata, one message per slide; the report runner exports it
to reveal.js slides and a static HTML report with the code hidden, so every number and statement
on a slide is an output computed from the tables notebook 05 saved.
"""
from nbtools import code, header, md, write

cells = header("""# 06 · Comparison: DDPM vs Stable Diffusion 1.5 + LoRA for inpainting
Five ways to fill a hole, scored on one frozen test set with one protocol.""")
cells += [
    code("""ev = H.evaluate.load_evaluation(cfg)
H.findings.markdown(H.findings.smoke_warning(cfg) or f"Preset **{cfg.preset}**: {ev.info['n_test']} test images.")"""),
    md("""## The question
Which fills a hole better: a **pixel-space DDPM** fine-tuned for inpainting (7-channel U-Net),
the same DDPM used **training-free** (RePaint), **Stable Diffusion 1.5 inpainting** as it is
(zero-shot) or adapted with **LoRA**, and does any of them beat a **classical** fill (OpenCV Telea)?""",
       slide="slide"),
    md("## The two trained methods in two equations", slide="slide"),
    code("H.findings.markdown(H.findings.method_equations(cfg))"),
    md("## Five methods, one protocol", slide="slide"),
    code("H.findings.table(H.findings.methods_overview(ev))"),
    md("## How every number was measured", slide="slide"),
    code("H.findings.markdown(H.findings.table_caption(ev))"),
    md("## Main result: our measurements, with 95 % confidence intervals", slide="slide"),
    code("H.findings.table(H.findings.format_summary(ev))"),
    md("""## Beside the study and published anchors
Only the rows marked *this run* were measured here. The study's rows are **reported by the
study**; the published rows are **other papers' numbers on CelebA-HQ 256** under their own masks
and test sets: anchors for scale, not entries of our table.""", slide="slide"),
    code("""comparison = H.findings.comparison_table(ev, cfg.preset)
comparison.to_csv(P.tables / "06_comparison.csv")
H.findings.table(comparison)"""),
    md("## Means with 95 % confidence intervals", slide="slide"),
    code("""H.findings.plot_bars(ev, path=P.figures / "06_metrics_bars.png");"""),
    md("## Quality against hole size", slide="slide"),
    code("""H.findings.plot_vs_hole(ev, path=P.figures / "06_metric_vs_hole.png");"""),
    md("## Quality by mask kind", slide="subslide"),
    code("""H.findings.plot_vs_hole(ev, path=P.figures / "06_metric_vs_kind.png", by="kind");"""),
    md("## The same test images, every method", slide="slide"),
    code("""names = list(dict.fromkeys(ev.per_image["name"]))[:4]
H.findings.qualitative_grid(cfg, names, P.figures / "06_qualitative.png", ev=ev);"""),
    md("## Failure cases", slide="slide"),
    code("""worst, criterion = H.findings.failure_cases(ev, cfg.eval.num_failure_cases)
H.findings.qualitative_grid(cfg, worst, P.figures / "06_failure_cases.png", ev=ev,
                            title=f"chosen by {criterion}");"""),
    md("## What each method costs", slide="slide"),
    code("H.findings.table(H.findings.format_runtime(ev))"),
    md("## Throughput against the hardware's limit", slide="subslide"),
    code("H.findings.markdown(H.bench.report_section(cfg))"),
    md("## Conclusions from the measured numbers", slide="slide"),
    code("""text = H.findings.conclusions(ev, cfg)
(P.tables / "06_conclusions.md").write_text(text + "\\n")
H.findings.markdown(text)"""),
    md("## Limits of this comparison", slide="slide"),
    code("H.findings.markdown(H.findings.limitations(ev, cfg))"),
]
write("notebooks/06_comparison.ipynb", cells)
