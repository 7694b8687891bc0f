"""The live demo's Gradio app (see :mod:`helpers.apps.demo`): the two tabs, the server on 127.0.0.1,
the app inline in notebook 07, and the command line ``python -m helpers.apps.demo_ui``. What the buttons
do (models, samplers, images in and out, votes) is :class:`helpers.apps.demo.Demo`."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from helpers.apps.demo import (
    CSS,
    MASK_CHOICES,
    Demo,
    display_factor,
    method_status,
    serving_offline,
)
from helpers.study import methods as registry
from helpers.study.config import DEFAULT_PRESET, PRESET_HELP, Config, load_config
from helpers.study.methods import short_label

DESCRIPTION = "The live demo: an interactive inpainting app and the blind human preference study, one Gradio app."


# ---------------------------------------------------------------- the Gradio app
def build_app(cfg: Config, root: Path | None = None, demo: Demo | None = None):
    """The Gradio Blocks app over :class:`Demo` (not launched). It opens on the first test image with
    its frozen mask (an upload replaces it)."""
    import gradio as gr

    d = demo or Demo(cfg, root)
    with gr.Blocks(title="Image completion with diffusion models", analytics_enabled=False) as app:
        gr.Markdown("# Image completion: DDPM vs Stable Diffusion 1.5 + LoRA")
        with gr.Tab("Inpaint"):
            _inpaint_tab(gr, d)
        with gr.Tab("Which looks real?"):
            _vote_tab(gr, d)
    app.queue(default_concurrency_limit=1)      # one inpainting run at a time: the models share one device
    return app


# PNG (lossless: webp would change the pixels), shown large; the study's images offer no download
SHOWN = dict(format="png", interactive=False, height=320, elem_classes=["pixelated", "enlarged"],
             buttons=["download", "fullscreen"])


BLIND = dict(format="png", interactive=False, height=320, elem_classes=["pixelated", "enlarged"], buttons=[])


def _inpaint_tab(gr, d: Demo) -> None:
    """Tab Inpaint: the controls, the editor, the outputs, and their events."""
    cfg, fac = d.cfg, display_factor(d.size)
    available = [short_label(m) for m in d.models.available()]
    study = [short_label(m) for m in d.models.available() if not registry.is_variant(m)]   # checked at start
    # 1. the first test image and its frozen mask, shown at start (an empty canvas otherwise)
    first = d.test_names[0] if d.test_names else None
    init_state, init_editor, init_prompt, init_msg = (d.load_test_image(first) if first
                                                      else (None, None, d.prompt_for(None), ""))
    state = gr.State(init_state)
    with gr.Row():
        # 2. inputs: image, mask, methods and their settings
        with gr.Column(scale=1):
            name = gr.Dropdown(d.test_names, value=first, label="test image", elem_id="test_image")
            upload = gr.File(label="... or upload an image (any size and format)", type="filepath",
                             elem_id="upload")
            with gr.Row():
                kind = gr.Dropdown(list(MASK_CHOICES), value="test mask", label="mask", elem_id="mask_kind")
                mask_seed = gr.Number(0, precision=0, label="mask seed")
            make = gr.Button("Make mask", elem_id="make_mask")
            methods = gr.CheckboxGroup(available, value=study, elem_id="methods",
                                       label="methods ((PEFT): a variant of notebook 04's ablation)")
            steps = gr.Slider(1, 200, value=cfg.ddpm.num_inference_steps, step=1, label="steps")
            guidance = gr.Slider(1.0, 15.0, value=cfg.sd.guidance_scale, step=0.5, label="guidance (SD)")
            seed = gr.Number(cfg.seed, precision=0, label="seed")
            prompt = gr.Textbox(init_prompt, label="prompt (SD)", elem_id="prompt")
            run = gr.Button("Run", variant="primary", elem_id="run")
            gr.Markdown(d.status_markdown(), elem_id="method_status")
        # 3. the editor (the hole is painted in magenta)
        with gr.Column(scale=2):
            editor = gr.ImageEditor(init_editor, type="numpy", image_mode="RGBA", format="png", sources=[],
                                    transforms=[], layers=False, label="paint the hole (brush)",
                                    brush=gr.Brush(default_size=max(2, fac * 2), colors=["#ff00ff"],
                                                   color_mode="fixed"),
                                    canvas_size=(d.size * fac, d.size * fac), elem_id="editor",
                                    elem_classes=["pixelated"])
            message = gr.Markdown(init_msg, elem_id="message")
    # 4. outputs
    with gr.Row():
        masked = gr.Image(label="masked input", elem_id="masked", **SHOWN)
        truth = gr.Image(label="ground truth", **SHOWN)
    gallery = gr.Gallery(label="completions", format="png", columns=5, fit_columns=False, object_fit="contain",
                         height=360, elem_classes=["pixelated"], elem_id="gallery",
                         buttons=["download", "fullscreen"])
    timing = gr.Markdown(elem_id="timing")

    # 5. events
    def on_run(st, ed, ms, n, g, s, p, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's documented pattern)
        return d.inpaint(st, ed, ms, n, g, s, p, progress)

    name.change(d.load_test_image, name, [state, editor, prompt, message], api_name="load_test_image")
    upload.upload(d.load_upload, upload, [state, editor, prompt, message], api_name="load_upload")
    make.click(d.make_mask, [state, kind, mask_seed], [editor, message], api_name="make_mask")
    run.click(on_run, [state, editor, methods, steps, guidance, seed, prompt],
              [masked, gallery, truth, timing, message], api_name="inpaint")


def _vote_tab(gr, d: Demo) -> None:
    """Tab Which looks real?: the blind two-alternative test and its votes."""
    gr.Markdown("A blind test: one masked photo, two completions in random order. Pick the one that "
                "looks like the **real photo**. Type an id (or leave it empty for a random one).")
    trial = gr.State(None)
    with gr.Row():
        rater = gr.Textbox(label="rater id", elem_id="rater")
        start = gr.Button("Start / next pair", elem_id="start")
    with gr.Row():
        q_masked = gr.Image(label="masked input", **BLIND)
        left = gr.Image(label="left", elem_id="left", **BLIND)
        right = gr.Image(label="right", elem_id="right", **BLIND)
    with gr.Row():
        b_left = gr.Button("Left looks real", elem_id="vote_left")
        b_right = gr.Button("Right looks real", elem_id="vote_right")
    q_message = gr.Markdown(elem_id="vote_message")
    outs = [rater, trial, q_masked, left, right, q_message]
    start.click(d.start, rater, outs, api_name="start", concurrency_limit=None)
    b_left.click(lambda r, t: d.vote("left", r, t), [rater, trial], outs, api_name="vote_left",
                 concurrency_limit=None)
    b_right.click(lambda r, t: d.vote("right", r, t), [rater, trial], outs, api_name="vote_right",
                  concurrency_limit=None)


def launch(cfg: Config, port: int | None = None, inline: bool = False, block: bool = True,
           root: Path | None = None, quiet: bool = False):
    """Serve the app on 127.0.0.1 (``port`` None: the first free one from 7860), offline
    (:func:`serving_offline`) for as long as it serves. ``block=False`` returns at once with the
    server running in the background (tests, notebooks); ``app.close()`` stops it and restores the
    environment."""
    offline = ExitStack()
    offline.enter_context(serving_offline())
    try:
        import gradio as gr

        app = build_app(cfg, root)
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                  font_mono=["ui-monospace", "monospace"])   # system fonts: no Google Fonts request
        app.launch(server_name="127.0.0.1", server_port=port, inline=inline, prevent_thread_lock=not block,
                   share=False, quiet=quiet, show_error=False, footer_links=[], run_history=False,
                   enable_monitoring=False, mcp_server=False, ssr_mode=False, max_file_size="50mb",
                   theme=theme, css=CSS)
    except BaseException:
        offline.close()
        raise
    if block:                               # the server has stopped
        offline.close()
        return app
    close = app.close

    def close_and_restore(*args, **kwargs):
        try:
            return close(*args, **kwargs)
        finally:
            offline.close()
    app.close = close_and_restore
    return app


def status_table(cfg: Config, root: Path | None = None):
    """One row per method: can it run here, with which weights, or why not and what produces them
    (notebook 07)."""
    import pandas as pd

    rows = [{"method": s.label, "available": "yes" if s.available else "no",
             "weights / why not": s.weights if s.available else s.reason,
             "to produce the weights": "" if s.available else f"{s.command}{s.hint}"}
            for s in method_status(cfg, root).values()]
    return pd.DataFrame(rows)


def open_in_notebook(cfg: Config, port: int | None = None, root: Path | None = None):
    """Notebook 07: serve the app on 127.0.0.1 and show it inline; returns the app (``app.close()``
    stops it). Under papermill it refuses and returns None: an app for people has no place in an
    unattended run (``make report`` never runs notebook 07)."""
    global _NOTEBOOK_APP
    if under_papermill():
        print("Run by papermill: the demo is NOT started (it serves an app for people). Open this notebook "
              f"in JupyterLab, or run `make demo PRESET={cfg.preset}` in a terminal.")
        return None
    if _NOTEBOOK_APP is not None:          # the cell run again: the earlier app frees its port first
        _NOTEBOOK_APP.close()
    _NOTEBOOK_APP = launch(cfg, port=port, inline=True, block=False, root=root)
    return _NOTEBOOK_APP


_NOTEBOOK_APP = None


def under_papermill() -> bool:
    """True inside a notebook run by papermill (it injects a cell starting '# Parameters')."""
    try:
        from IPython import get_ipython
        ip = get_ipython()
    except ImportError:
        return False
    history = ip.user_ns.get("In", []) if ip is not None else []
    return any(str(src).lstrip().startswith("# Parameters") for src in history)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.apps.demo_ui", description=DESCRIPTION)
    ap.add_argument("--preset", default=DEFAULT_PRESET, help=PRESET_HELP)
    ap.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: first free from 7860)")
    args = ap.parse_args(argv)
    launch(load_config(args.preset), args.port)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
