"""The demo app (helpers.apps.demo): its functions without a server (every method on tiny smoke models,
bad uploads, missing weights), the real server on 127.0.0.1 driven with gradio_client, and the
page in a headless Chromium (an inpaint, three votes, the SQLite rows). The smoke models are
trained here, in a temporary root, for a step or two: the tests check the plumbing, not quality."""
import socket
import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image

import helpers as H

pytestmark = pytest.mark.slow
OVERRIDES = {"ddpm.max_steps": 2, "sd.max_steps": 1, "data.num_images": 24, "data.max_test_images": 3,
             "ddpm.val_every": 100, "ddpm.checkpoint_every": 100, "sd.checkpoint_every": 100,
             "ablation.max_test_images": 2}
VARIANT = "loha_r8"       # the PEFT ablation variant the fixture trains (through the command line)
STEPS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A root with what the series saves: prepared data, a fine-tuned DDPM, a LoRA file, one PEFT
    variant (``python -m helpers.study train peft --variant loha_r8``) and Telea's test-set
    completions (for the vote tab)."""
    root = tmp_path_factory.mktemp("demo_root")
    mp = pytest.MonkeyPatch()
    mp.setenv("INPAINT_ROOT", str(root))
    try:
        cfg = H.load_config("smoke", OVERRIDES)
        H.study.data.splits.prepare_dataset(cfg)
        P = H.study.files.paths(cfg)
        unet, sched = H.study.models.ddpm.build_inpainting_model(cfg, P)
        H.study.models.ddpm.finetune(cfg, P, unet, sched, torch.device("cpu"))
        H.study.models.sd.train_lora(cfg, H.study.models.sd_pipeline.load_pipeline(cfg))
        from helpers.study.__main__ import main
        table = main(["train", "peft", "--preset", "smoke", "--variant", VARIANT,
                      "--set", *[f"{k}={v}" for k, v in OVERRIDES.items()]])
        assert list(table["variant"]) == [VARIANT] and table.loc[0, "status"] == "trained"
        H.study.evaluation.evaluate.run_telea(cfg)
        yield cfg
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def demo(trained):
    return H.apps.demo.Demo(trained)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOOPBACK = ("127.0.0.1", "localhost", "::1")
OUTSIDE: list = []      # host names looked up or addresses connected to by this process, off this machine


@pytest.fixture(scope="module")
def server(trained):
    """The real app on 127.0.0.1 (a background thread): (url, cfg). Every name lookup and socket
    connection of this process is recorded while it runs: none may leave the machine."""
    mp = pytest.MonkeyPatch()
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def recording_lookup(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            OUTSIDE.append(f"lookup {host}")
        return lookup(host, *args, **kwargs)

    def recording_connect(sock, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            OUTSIDE.append(f"connect {address}")
        return connect(sock, address)

    mp.setattr(socket, "getaddrinfo", recording_lookup)
    mp.setattr(socket.socket, "connect", recording_connect)
    port = _free_port()
    app = H.apps.demo_ui.launch(trained, port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", trained
    finally:
        app.close()
        mp.undo()


# ---------------------------------------------------------------- functions, no server
def test_every_method_inpaints_on_the_smoke_models(demo):
    study = {m: s for m, s in demo.models.status.items() if m in list(H.study.methods.METHODS)}
    assert all(s.available for s in study.values()), [s.message() for s in study.values()]
    name = demo.test_names[0]
    state, editor, prompt, msg = demo.load_test_image(name)
    assert name in msg and prompt
    mask = H.apps.demo.mask_from_editor(editor, demo.size)
    assert np.array_equal(mask, state["test_mask"]), "the mask round-trips through the editor's layer"
    study = list(H.study.methods.METHODS)
    masked, gallery, truth, table, msg = demo.inpaint(state, editor, study, STEPS, 7.5, 3, prompt)
    assert [cap.split(" · ")[0] for _, cap in gallery] == list(H.study.methods.SHORT_LABELS.values()), msg
    known = mask < 0.5
    for img, cap in gallery:
        assert img.shape == (demo.size, demo.size, 3) and img.dtype == np.uint8
        assert np.array_equal(img[known], state["image"][known]), f"{cap}: known pixels changed"
        assert not np.array_equal(img, state["image"]), f"{cap}: the hole was not filled"
        assert cap.endswith(" s") and "|" in table
    masked_tensor = H.study.data.dataset.masked_image(H.study.files.to_tensor(state["image"]),
                                                     torch.from_numpy(mask)[None])
    expect = H.study.files.to_uint8(masked_tensor)
    assert np.array_equal(truth, state["image"]) and np.array_equal(masked, expect)
    # a fixed seed gives the same completion
    again = demo.inpaint(state, editor, ["ddpm_finetuned"], STEPS, 7.5, 3, prompt)[1][0][0]
    assert np.array_equal(again, gallery[0][0])


def test_generated_masks_and_messages(demo):
    state = demo.load_test_image(demo.test_names[1])[0]
    for kind in ("box", "thin", "medium", "thick"):
        editor, msg = demo.make_mask(state, kind, 5)
        m = H.apps.demo.mask_from_editor(editor, demo.size)
        expect = H.course.masks.generate_mask(demo.size, kind, np.random.default_rng(5), 0.01, 0.5)
        assert np.array_equal(m, expect) and kind in msg
    editor, msg = demo.make_mask(state, "brush (paint it)", 0)
    assert H.apps.demo.mask_from_editor(editor, demo.size) is None
    assert "No hole" in demo.inpaint(state, editor, ["telea"], 1, 1.0, 0, "")[-1]
    assert "first" in demo.inpaint(None, editor, ["telea"], 1, 1.0, 0, "")[-1]
    full = H.apps.demo.editor_value(state["image"], np.ones((demo.size, demo.size), np.float32))
    assert "Everything is hole" in demo.inpaint(state, full, ["telea"], 1, 1.0, 0, "")[-1]


def test_uploads_are_read_like_the_data_step(demo, tmp_path):
    folder = H.study.data.samples.demo_bad_inputs(tmp_path / "bad")
    big = np.random.default_rng(0).integers(0, 256, (900, 1600, 3), dtype=np.uint8)
    Image.fromarray(big).save(folder / "big.jpg")
    Image.fromarray(big[:4, :4]).save(folder / "tiny.png")
    for good, note in (("good_rgb.png", "48x40 -> "), ("grayscale.png", "grayscale->RGB"),
                       ("rgba.png", "alpha composited"), ("gray16.png", "16-bit"), ("big.jpg", "1600x900 -> ")):
        state, editor, _, msg = demo.load_upload(str(folder / good))
        assert state["image"].shape == (demo.size, demo.size, 3) and state["image"].dtype == np.uint8, good
        assert note in msg, msg
        expected = H.study.data.sources.resize_center_crop(H.study.data.sources.read_image(folder / good), demo.size)
        assert np.array_equal(state["image"], expected)
    for bad in ("corrupt.jpg", "empty.png", "tiny.png", "missing.png"):
        state, editor, _, msg = demo.load_upload(str(folder / bad))
        assert state is None and editor is None and msg.startswith("**Refused:**") and bad in msg
    # an upload has no ground truth; a painted hole on it inpaints
    state, _, _, _ = demo.load_upload(str(folder / "good_rgb.png"))
    editor, _ = demo.make_mask(state, "box", 1)
    masked, gallery, truth, _, msg = demo.inpaint(state, editor, ["Telea"], 1, 1.0, 0, "")
    assert truth is None and len(gallery) == 1 and "upload good_rgb.png" in msg


def test_missing_weights_disable_methods_and_the_app_starts(tmp_root):
    cfg = H.load_config("smoke", {"data.num_images": 24, "data.max_test_images": 3})
    H.study.data.splits.prepare_dataset(cfg)
    st = H.apps.demo.method_status(cfg)
    off = [m for m, s in st.items() if not s.available and m in H.study.methods.METHODS]
    assert off == ["ddpm_finetuned", "sd_lora"]
    assert all(not s.available for m, s in st.items() if m.startswith("peft_")), "no variant trained yet"
    assert "python -m helpers.study train ddpm --preset smoke" in st["ddpm_finetuned"].message()
    assert "python -m helpers.study train sd --preset smoke" in st["sd_lora"].message()
    d = H.apps.demo.Demo(cfg)
    text = d.status_markdown()
    assert "Disabled methods" in text and "no LoRA weights" in text
    state, editor, _, _ = d.load_test_image(d.test_names[0])
    _, gallery, _, _, msg = d.inpaint(state, editor, ["sd_lora", "telea"], 1, 1.0, 0, "")
    assert len(gallery) == 1 and "no LoRA weights" in msg
    H.apps.demo_ui.build_app(cfg, demo=d)                         # the app builds without them
    # full preset, nothing downloaded: the pretrained methods say how to get their weights
    full = H.apps.demo.method_status(H.load_config("full"))
    assert not full["sd_zeroshot"].available and "hf download" in full["sd_zeroshot"].message()
    assert not full["ddpm_repaint"].available and "google/ddpm-celebahq-256" in full["ddpm_repaint"].message()
    assert full["telea"].available


def test_votes_from_the_functions(demo):
    rater, trial, masked, left, right, msg = demo.start("")
    assert rater.startswith("rater-") and trial is not None
    assert {trial.left, trial.right} == {"telea", H.study.votes.GROUND_TRUTH}
    before = len(demo.store)
    out = demo.vote("left", rater, trial)
    assert len(demo.store) == before + 1 and out[1].trial_id != trial.trial_id
    demo.vote("left", rater, trial)                   # the same trial twice: counted once
    row = demo.store.votes().iloc[-1]
    assert (row.rater, row.image, row.left_method, row.choice) == (rater, trial.image, trial.left, "left")
    assert len(demo.store) == before + 1
    for img in (masked, left, right):
        assert img.shape == (demo.size, demo.size, 3)


def test_importing_the_demo_changes_no_environment_variable():
    """The offline switches are set around the serving call only, never at import."""
    import subprocess
    import sys

    from helpers.study.config import ROOT

    # OpenCV's own import sets LD_LIBRARY_PATH (its loader): imported first, outside the comparison
    code = ("import os, json, cv2; before = dict(os.environ); import helpers.apps.demo; "
            "print(json.dumps(dict(os.environ) == before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "true", out.stderr[-2000:]
    import os
    before = dict(os.environ)
    with H.apps.demo.serving_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert dict(os.environ) == before


def test_the_app_opens_on_the_first_test_image(demo):
    """No empty canvas at start: the first test image with its frozen mask is in the editor."""
    app = H.apps.demo_ui.build_app(demo.cfg, demo=demo)
    by_id = {getattr(b, "elem_id", None): b for b in app.blocks.values()}
    assert by_id["test_image"].value == demo.test_names[0]
    editor = by_id["editor"].value
    assert editor is not None and editor.get("background") is not None and editor.get("layers")
    assert "frozen" in by_id["message"].value


def test_papermill_detection_and_series_selection():
    assert not H.apps.demo_ui.under_papermill()                   # plain Python: no IPython history
    names = [p.stem for p in H.report.series.list_notebooks()]
    assert "07_demo" not in names and names[-1] == "06_comparison"


# ---------------------------------------------------------------- the real server
def test_server_inpaints_through_gradio_client(server, tmp_path):
    from gradio_client import Client, handle_file

    url, cfg = server
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
    # an upload at the preset's size: the known pixels of the answer must be exactly these
    size = cfg.data.image_size
    rgb = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    editor, _, msg = client.predict(handle_file(str(tmp_path / "in.png")), api_name="/load_upload")
    assert "Uploaded" in msg
    editor, msg = client.predict(H.apps.demo.MASK_CHOICES[2], 7, api_name="/make_mask")          # a box mask
    value = {"background": handle_file(editor["background"]), "layers": [handle_file(p) for p in editor["layers"]],
             "composite": None}
    masked, gallery, truth, table, msg = client.predict(value, ["DDPM", "Telea"], STEPS, 7.5, 0, "a photo",
                                                        api_name="/inpaint")
    mask = H.course.masks.generate_mask(size, "box", np.random.default_rng(7), 0.01, 0.5)
    assert [g["caption"].split(" · ")[0] for g in gallery] == ["DDPM", "Telea"], msg
    for g in gallery:
        out = np.asarray(Image.open(g["image"]).convert("RGB"))
        assert out.shape == (size, size, 3)
        assert np.array_equal(out[mask < 0.5], rgb[mask < 0.5])
    assert truth is None
    # refused upload: a message, no traceback, the server keeps serving
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not an image")
    _, _, msg = client.predict(handle_file(str(tmp_path / "bad.png")), api_name="/load_upload")
    assert msg.startswith("**Refused:**")


def test_browser_inpaint_and_three_votes(server, browser):
    url, cfg = server
    outside = []
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
    try:
        page.goto(url, wait_until="load")
        page.locator("#run").wait_for(timeout=60_000)
        # 1. a test image with its frozen mask, one more brush stroke, Telea only
        name = H.study.data.splits.load_index(cfg)["splits"]["test"][0]
        page.locator("#test_image input").click()
        page.get_by_role("option", name=name).click()
        page.wait_for_function("document.querySelector('#message').innerText.includes('frozen')", timeout=60_000)
        page.wait_for_timeout(1500)                  # the editor draws the image and its mask layer
        box = page.locator("#editor canvas").first.bounding_box()
        cx, cy, h = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["height"]
        for dy in (-0.3, 0.0, 0.3):                  # three strokes across the image: no box mask covers them all
            page.mouse.move(cx - 0.35 * h, cy + dy * h)
            page.mouse.down()
            for k in range(1, 15):
                page.mouse.move(cx - 0.35 * h + k * 0.05 * h, cy + dy * h)
            page.mouse.up()
        for label in ("DDPM", "RePaint", "SD zero-shot", "SD + LoRA"):
            page.locator("#methods label", has_text=label).click()
        page.locator("#run").click()
        page.wait_for_function("document.querySelectorAll('#gallery img').length == 1", timeout=120_000)
        page.wait_for_function("document.querySelector('#message').innerText.includes('hole')", timeout=60_000)
        hole = float(page.locator("#message").inner_text().split("hole ")[1].split("%")[0])
        test_hole = H.study.data.splits.load_index(cfg)["test_masks"][name]["hole_fraction"]
        assert hole > 100 * test_hole + 1, "the brush stroke added to the frozen mask"
        # 2. three votes under a typed rater id
        page.get_by_role("tab", name="Which looks real?").click()
        page.locator("#rater input, #rater textarea").first.fill("browser-rater")
        page.locator("#start").click()
        page.wait_for_function("document.querySelector('#vote_message').innerText.includes('0 vote(s) from you')",
                               timeout=60_000)
        for i, side in enumerate(("left", "right", "left")):
            page.locator(f"#vote_{side}").click()
            page.wait_for_function("document.querySelector('#vote_message')"
                                   f".innerText.includes('{i + 1} vote(s) from you')",
                                   timeout=60_000)
    finally:
        page.close()
    rows = sqlite3.connect(H.study.votes.db_path(cfg)).execute(
        "SELECT rater, image, left_method, right_method, choice, chosen_method, response_ms FROM votes "
        "WHERE rater = 'browser-rater' ORDER BY id").fetchall()
    assert [r[4] for r in rows] == ["left", "right", "left"]
    for _, image, left, right, choice, chosen, ms in rows:
        assert {left, right} == {"telea", H.study.votes.GROUND_TRUTH}
        assert chosen == (left if choice == "left" else right)
        assert image in H.study.data.splits.load_index(cfg)["splits"]["test"] and ms > 0
    assert not outside, f"the page asked the network for {outside[:3]}"


def test_notebook_07_does_not_serve_under_papermill(tmp_root, monkeypatch):
    """papermill runs notebook 07 to the end without starting a server (and says so)."""
    import papermill as pm

    from helpers.study.config import ROOT

    monkeypatch.setenv("PYTHONPATH", str(ROOT))          # the kernel imports this checkout's helpers
    out = tmp_root / "07.ipynb"
    nb = pm.execute_notebook(str(ROOT / "notebooks" / "07_demo.ipynb"), str(out), parameters={"preset": "smoke"},
                             kernel_name="python3", progress_bar=False, cwd=str(ROOT / "notebooks"))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "the demo is NOT started" in text
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def test_the_server_made_no_outside_call(server):
    """After the gradio_client and browser tests: the app asked no host but this one for anything."""
    assert not OUTSIDE, OUTSIDE[:5]


def test_trained_peft_variants_are_methods_of_the_demo(demo):
    """The ablation's trained variant is listed and runs; the untrained ones are disabled with the
    reason and the command that trains them (QLoRA on a CPU: needs CUDA); the vote tab keeps the
    study's five methods."""
    st = demo.models.status
    variants = [m for m in st if m.startswith("peft_")]
    assert variants == [f"peft_{v['name']}" for v in demo.cfg.ablation.variants], "every variant, in config order"
    assert [m for m in variants if st[m].available] == [f"peft_{VARIANT}"]
    assert "loha adapter" in st[f"peft_{VARIANT}"].weights and st[f"peft_{VARIANT}"].label == f"{VARIANT} (PEFT)"
    assert "not trained" in st["peft_lora_r4"].reason
    assert "python -m helpers.study train peft --preset smoke --variant lora_r4" in st["peft_lora_r4"].message()
    assert "needs a CUDA GPU" in st["peft_qlora_r16"].reason
    text = demo.status_markdown()
    assert f"{VARIANT} (PEFT)" in text and "PEFT variants (not trained): lora_r4" in text
    assert "PEFT variants (needs a CUDA GPU with bitsandbytes): qlora_r16" in text
    # it inpaints by label, from its own adapter file (the one its predictions were made with)
    state, editor, prompt, _ = demo.load_test_image(demo.test_names[0])
    _, gallery, _, _, msg = demo.inpaint(state, editor, [f"{VARIANT} (PEFT)", "SD + LoRA"], STEPS, 7.5, 3, prompt)
    assert [cap.split(" · ")[0] for _, cap in gallery] == [f"{VARIANT} (PEFT)", "SD + LoRA"], msg
    pipe = demo.models.loaded()[f"peft_{VARIANT}"]
    assert pipe.lora_path.endswith(str(H.study.models.peft_variants.find_adapter(demo.cfg, VARIANT)))
    assert not np.array_equal(gallery[0][0], gallery[1][0]), "the variant is not the study's LoRA"
    mask = H.apps.demo.mask_from_editor(editor, demo.size) > 0.5
    assert np.array_equal(gallery[0][0][~mask], state["image"][~mask])
    # an untrained variant is refused with its reason; the others still run
    _, gallery, _, _, msg = demo.inpaint(state, editor, ["peft_lora_r4", "telea"], 1, 1.0, 0, "")
    assert len(gallery) == 1 and "not trained" in msg
    # the CheckboxGroup lists the trained variant, unchecked; the vote tab only the study's methods
    app = H.apps.demo_ui.build_app(demo.cfg, demo=demo)
    box = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "methods")
    assert f"{VARIANT} (PEFT)" in [c[0] for c in box.choices] and f"{VARIANT} (PEFT)" not in box.value
    assert all(not m.startswith("peft_") for ms in demo.scheduler.candidates.values() for m in ms)


def test_an_upload_for_digit_models_becomes_grey_light_ink_on_dark(tmp_path):
    """mini (models trained on grey digits): a colour photo of dark ink on light paper is converted to
    grey and inverted, and the message says so; the other presets keep colour."""
    from PIL import Image

    from helpers.apps.demo import read_upload

    arr = np.full((40, 60, 3), (240, 230, 200), np.uint8)     # light paper...
    arr[10:30, 25:35] = (20, 10, 60)                           # ...a dark stroke
    Image.fromarray(arr).save(tmp_path / "paper.png")
    grey, note = read_upload(tmp_path / "paper.png", 32, grey=True)
    assert grey.shape == (32, 32, 3) and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert grey[16, 16, 0] > 200 and grey[2, 2, 0] < 40           # the stroke is light, the paper dark
    assert "grey" in note and "inverted" in note
    colour, note = read_upload(tmp_path / "paper.png", 32)
    assert not (colour[..., 0] == colour[..., 2]).all() and "grey" not in note
