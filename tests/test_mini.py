"""The ``mini`` preset (the study at toy scale on digits) through the whole series with cut budgets: the
shipped pretrained stand-ins (pretrained/mini/) loaded through the study's own loaders, the digits data
step with labels and label captions, every method completing the test digits, the digit accuracy of
notebook 05 with its paired intervals, the guidance sweep's accuracy per scale, and the mini stamp (not
smoke's "pipeline check") on the slides. The real budgets run with ``make report`` (README: the
miniature's results)."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import helpers as H

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "mini"
N_TEST = 24

# the preset's values except the amount of work: 24 test digits, a few training and sampling steps, one PEFT variant
CUT = {"data.max_test_images": N_TEST, "ddpm.max_steps": 8, "ddpm.num_inference_steps": 4,
       "ddpm.repaint.num_inference_steps": 4, "ddpm.repaint.jump_n_sample": 2, "ddpm.repaint.max_images": 6,
       "sd.max_steps": 6, "sd.num_inference_steps": 4,
       "ablation.variants": [{"name": "lora_r16", "method": "lora", "r": 16, "alpha": 16}],
       "ablation.max_test_images": 8,
       "digits.budget": 16, "digits.checkpoints": [0, 16], "digits.compare_budget": 8,
       "digits.bootstrap_samples": 50, "eval.bootstrap_samples": 100, "eval.kid_subset_size": 10,
       "eval.kid_subsets": 4}


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    if not (SHIPPED / "recipe.json").is_file():
        pytest.fail("pretrained/mini/ is missing: the mini preset ships its stand-ins "
                    "(python -m helpers.study.models.pretrain_mini --out pretrained/mini)")
    root = tmp_path_factory.mktemp("mini_root")
    mp = pytest.MonkeyPatch()
    mp.setenv("INPAINT_ROOT", str(root))
    try:
        manifest = H.report.export.run("mini", overrides=CUT, do_site=False)
        cfg = H.load_config("mini", CUT)
        yield manifest, cfg, H.study.files.paths(cfg)
    finally:
        mp.undo()


def test_every_notebook_ran_on_the_shipped_stand_ins(mini_run):
    manifest, cfg, P = mini_run
    assert all(n["status"] == "ok" for n in manifest["notebooks"])
    assert [n["notebook"] for n in manifest["notebooks"]] == [p.name for p in H.report.series.list_notebooks()]
    for method in ("ddpm_finetuned", "ddpm_repaint"):
        meta = json.loads((P.predictions(method) / "meta.json").read_text())
        assert "pretrained/mini/ddpm" in meta["weights"] and "SMOKE" not in meta["weights"], meta["weights"]
    meta = json.loads((P.predictions("sd_zeroshot") / "meta.json").read_text())
    assert meta["n_images"] == N_TEST


def test_saved_models_name_the_stand_ins_without_a_machine_path(mini_run):
    """The fine-tuned DDPM's config (diffusers records where its weights came from) and every run's statistics
    ("base": the LoRA's base pipeline) name the shipped stand-ins relative to the project, as people read them."""
    from helpers.study.config import ROOT

    _, cfg, P = mini_run
    machine = {str(P.root.resolve()), str(ROOT.resolve()), str(Path.home().resolve())}
    config = json.loads((P.models / "ddpm_inpaint" / "unet" / "config.json").read_text())
    assert config["_name_or_path"] == "pretrained/mini/ddpm", config["_name_or_path"]
    stats = json.loads(next((P.models / "sd_lora").glob("ckpt-*/train_stats.json")).read_text())
    assert stats["base"] == "pretrained/mini/sd-inpainting", stats["base"]
    for path in P.models.rglob("*.json"):
        text = path.read_text()
        assert not [m for m in machine if m in text], (path.relative_to(P.root), text[:400])


def test_digits_data_labels_and_label_captions(mini_run):
    _, cfg, P = mini_run
    index = json.loads((P.data / "index.json").read_text())
    assert index["source"] == "digits" and index["image_size"] == 16 and len(index["splits"]["test"]) == N_TEST
    names = [n for s in index["splits"].values() for n in s]
    assert set(index["labels"]) == set(names)
    assert all(index["labels"][n] == int(n[-1]) for n in names)
    caps = json.loads((P.data / "captions.json").read_text())
    assert caps["model"] == "labels" and not caps["fallback"]
    assert {caps["captions"][n] for n in names} <= {f"a handwritten {w}" for w in H.study.data.sources.DIGIT_WORDS}


def test_digit_accuracy_is_scored_with_paired_intervals(mini_run):
    _, cfg, P = mini_run
    acc = pd.read_csv(P.tables / "05_digit_accuracy.csv").set_index("method")
    for method in ("telea", "ddpm_finetuned", "sd_zeroshot", "sd_lora"):
        assert acc.loc[method, "n"] == N_TEST
    # the classifier reads clean bold test digits well, and better than the holes left grey
    assert acc.loc["ground_truth", "accuracy"] >= 0.75
    assert acc.loc["ground_truth", "accuracy"] > acc.loc["hole_grey", "accuracy"]
    pairs = pd.read_csv(P.tables / "05_digit_accuracy_paired.csv")
    row = pairs[(pairs["a"] == "sd_lora") & (pairs["b"] == "sd_zeroshot")].iloc[0]
    assert row["lo"] <= row["diff"] <= row["hi"] and row["n"] == N_TEST
    sweep = json.loads((P.tables / "04_guidance_accuracy.json").read_text())
    assert [r["guidance s"] for r in sweep["rows"]] == [1.0, 3.0, 7.5, 12.0] and sweep["n"] == N_TEST
    # notebook 06 concludes on the sweep too
    concluded = (P.tables / "06_conclusions.md").read_text()
    assert f"Classifier-free guidance (SD + LoRA, notebook 04, n = {N_TEST})" in concluded


def test_slides_carry_the_mini_stamp_not_the_smoke_one(mini_run):
    manifest, _, _ = mini_run
    html = Path(manifest["exports"]["slides"]).read_text()
    assert "<strong>Mini preset: the study at toy scale on digits.</strong>" in html
    assert "pipeline check" not in html


def test_every_slide_of_the_default_deck_fits(mini_run, browser):
    """The default run's deck (mini: digit accuracy beside the pixel scores, PEFT variants, the guidance sweep) fits
    1280x720 slide by slide, as smoke's does (tests/test_slides.py): its conclusions once ran to twice that height."""
    from tests.deck import problems, walk_deck

    manifest, _, _ = mini_run
    result, network = walk_deck(browser, Path(manifest["exports"]["slides"]))
    bad = problems(result)
    assert not bad, "slides a presenter cannot show as they are:\n" + "\n".join(f"{k}: {v}" for k, v in bad.items())
    assert not network, f"the deck reached for the network: {network}"


def test_measure_tool_scores_the_same_test_set(mini_run, capsys, monkeypatch):
    """tools/measure_mini.py (the source of the measured numbers in configs/mini.yaml) reads the run's own test
    set and classifier: its grey-hole row and Telea's hole PSNR are notebook 05's; its DDPM and its LoRA reuse
    notebook 03's and 04's runs (the package's loss, step and attach functions are the notebooks' taught cells, and
    the runs read the same data and base weights)."""
    import importlib.util

    _, cfg, P = mini_run
    script = Path(__file__).parents[1] / "tools" / "measure_mini.py"
    spec = importlib.util.spec_from_file_location("measure_mini", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setenv("INPAINT_ROOT", str(P.root))
    sets = [f"{k}={json.dumps(v)}" for k, v in CUT.items()]
    acc = pd.read_csv(P.tables / "05_digit_accuracy.csv").set_index("method")["accuracy"]
    hole_db = pd.read_csv(P.tables / "05_summary.csv").set_index("method")["psnr_hole"]
    for part, rows in (("ddpm", ["DDPM fine-tuned"]), ("sd", ["SD zero-shot s=1", "SD + LoRA s=1"])):
        tool.main([part, "--guidance", "1", "--noise-levels", "50", "950", "--set", *sets] if part == "sd"
                  else [part, "--sampling-seeds", "2", "--set", *sets])
        out = capsys.readouterr().out
        row = r"^(\S.*?)\s+([\d.]+)\s+([\d.]+) dB\s+([\d.]+) ink$"   # method, digit accuracy, hole PSNR, ink
        table = {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(row, out, re.M)}
        assert f"{N_TEST} test digits" in out
        assert table["hole left grey"][0] == pytest.approx(acc["hole_grey"])
        assert table["Telea"][1] == pytest.approx(hole_db["telea"], abs=0.005)   # printed to 0.01 dB
        assert set(rows) <= set(table), out
        assert "reusing the run" in out, out        # notebook 03's DDPM, notebook 04's LoRA: same code, same inputs
        if part == "ddpm":       # two sampling seeds: the first is the notebooks' draw (the row above)
            spread = re.search(r"^DDPM fine-tuned over 2 sampling seeds: accuracy ([\d.]+) \.\. ([\d.]+) \.\. "
                               r"([\d.]+) \(min, mean, max\); the 2 samples read as one: ([\d.]+), - Telea ", out, re.M)
            assert spread, out
            lo, mean, hi, _ = map(float, spread.groups())
            assert lo <= table["DDPM fine-tuned"][0] <= hi and lo <= mean <= hi
        if part == "sd":
            assert "SD + LoRA s=1 - SD zero-shot s=1" in out, out
            # where the noise prediction errs, before and after LoRA, on the same fixed draws
            errors = re.findall(r"eps_theta error, (zero-shot|\+ LoRA): t=50: hole ([\d.]+), known ([\d.]+) "
                                r"\| t=950", out)
            assert [e[0] for e in errors] == ["zero-shot", "+ LoRA"], out
    # --zero-shot-only (how sd.guidance_scale was chosen, on the stand-in's own digits): no LoRA trained or sampled
    tool.main(["sd", "--zero-shot-only", "--guidance", "1", "2", "--set", *sets])
    out = capsys.readouterr().out
    assert re.search(r"^SD zero-shot s=2\s+[\d.]+\s+[\d.]+ dB", out, re.M), out
    assert "SD + LoRA" not in out and "LoRA:" not in out and "LoRA training" not in out, out
