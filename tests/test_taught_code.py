"""The course shows what it teaches: every algorithm of the course is a code cell (tag ``taught``) of
the notebook that teaches it, an exact copy of its function in helpers/course/ (the one source of
truth that the report, the demo and the benchmark run). No kernel needed."""
import ast
import shutil

import pytest

import helpers as H
from helpers.study.config import ROOT
from helpers.tools import taught

# what each notebook must show as code, by function name (issue: "a course that shows what it teaches")
REQUIRED = {
    "01_data": ["draw_strokes", "draw_boxes", "draw_once", "generate_mask"],
    "02_ddpm_theory": ["q_sample", "p_sample", "ddim_step", "ddim_sample_loop", "train_with_checkpoints"],
    "03_ddpm_inpainting": ["widen_conv_in", "model_input", "weighted_eps_loss", "inpainting_loss", "training_step",
                           "ddim_step", "ddim_sample_loop", "ddim_inpaint", "repaint_schedule", "repaint_inpaint"],
    "04_sd_lora": ["add_lora", "lora_inpaint_loss", "denoise", "inpaint", "adapter_config", "attach_adapter"],
    "05_evaluation": ["psnr", "ssim", "pixel_scores"],
}
COURSE = ["masks", "diffusion", "ddpm_inpainting", "sd_inpainting", "peft_variants", "metrics"]
# course functions a notebook calls without showing (small helpers, or checked elsewhere)
NOT_SHOWN = {"vlb_weights", "count_model_calls", "encode_prompts", "check_pair", "hole_of",
             "ssim_window", "ssim_map",
             "Strokes", "Boxes", "KindSpec"}    # LaMa's parameter records: notebook 01 shows them as a table


def test_every_taught_cell_equals_the_package():
    problems = taught.check()
    assert not problems, "\n\n".join(problems) + "\n\nedit helpers/course/ and run `make notebooks`"


@pytest.mark.parametrize("notebook", sorted(REQUIRED))
def test_each_notebook_shows_the_algorithms_it_teaches(notebook):
    shown = {n for c in taught.taught_cells(ROOT / "notebooks" / f"{notebook}.md") for n in c.names}
    missing = [n for n in REQUIRED[notebook] if n not in shown]
    assert not missing, f"{notebook} must show {missing} as taught code cells"


def test_the_course_package_holds_only_taught_code():
    """Every public function of helpers/course/ (checks.py aside: the demonstrations) appears in a notebook."""
    shown = {n for nb in taught.notebooks() for c in taught.taught_cells(nb) for n in c.names}
    for mod in COURSE:
        tree = ast.parse((ROOT / "helpers" / "course" / f"{mod}.py").read_text())
        defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        hidden = [d for d in defs if d not in shown and d not in NOT_SHOWN and not d.startswith("_")]
        assert not hidden, f"helpers/course/{mod}.py: {hidden} are in the package but in no notebook"


def test_taught_cells_name_their_module_and_stay_short():
    for nb in taught.notebooks():
        for c in taught.taught_cells(nb):
            assert c.module.is_file() and c.module.parent == ROOT / "helpers" / "course", c.where
            code = [line for line in c.source.splitlines() if line.strip() and not line.strip().startswith("#")]
            assert len(code) <= 25, f"{c.where}: {len(code)} lines; split the function or the cell"


def test_sync_and_pull_round_trip(tmp_path, monkeypatch):
    """An edited taught cell is caught by check, goes back to its module with pull, and sync writes
    a module's change into the notebook: a learner's edit can become the course's code."""
    nb_dir, mod_dir = tmp_path / "notebooks", tmp_path / "helpers" / "course"
    nb_dir.mkdir()
    mod_dir.mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "02_ddpm_theory.md", nb_dir)
    shutil.copy(ROOT / "helpers" / "course" / "diffusion.py", mod_dir)
    monkeypatch.setattr(taught, "ROOT", tmp_path)
    monkeypatch.setattr(taught, "NOTEBOOKS", nb_dir)
    nb = nb_dir / "02_ddpm_theory.md"
    assert taught.check() == []
    # 1. an edit in the notebook: check names the cell; pull moves it into the module
    nb.write_text(nb.read_text().replace("return ab.sqrt() * x0 + (1 - ab).sqrt() * eps",
                                         "return ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # edited"))
    problems = taught.check()
    assert len(problems) == 1 and "q_sample" in problems[0]
    assert taught.pull("02") == [mod_dir / "diffusion.py"]
    assert "# edited" in (mod_dir / "diffusion.py").read_text() and taught.check() == []
    # 2. an edit in the module: sync writes it into the notebook
    mod = mod_dir / "diffusion.py"
    mod.write_text(mod.read_text().replace("  # edited", ""))
    assert taught.sync() == [nb] and taught.check() == []
    assert "# edited" not in nb.read_text()


def test_running_a_taught_cell_defines_what_the_notebook_runs():
    """The notebooks pass their own definitions to the study's plumbing (the cell's function, not the
    package's, is what runs after an edit)."""
    src = (ROOT / "notebooks" / "03_ddpm_inpainting.md").read_text()
    for call in ("loss_fn=inpainting_loss", "step_fn=training_step", "inpaint_fn=ddim_inpaint",
                 "inpaint_fn=repaint_inpaint"):
        assert call in src, call
    # 03's validation grids are drawn by its own sampler, defined before the training cell
    assert src.index("def ddim_inpaint(") < src.index("make_validator(") < src.index(".finetune(")
    assert "device, inpaint_fn=ddim_inpaint" in src[src.index("make_validator("):src.index(".finetune(")]
    src = (ROOT / "notebooks" / "02_ddpm_theory.md").read_text()        # the digits run 02's own q_sample and DDIM
    for call in ("q_sample=q_sample", "sample_loop=ddim_sample_loop", "digits_loss, digits_step"):
        assert call in src, call
    src = (ROOT / "notebooks" / "04_sd_lora.md").read_text()
    for call in ("attach_fn=add_lora", "loss_fn=lora_inpaint_loss", "inpaint_fn=inpaint"):
        assert call in src, call
    assert "scores_fn=pixel_scores" in (ROOT / "notebooks" / "05_evaluation.md").read_text()
    assert H.course.ddpm_inpainting.ddim_inpaint.__module__ == "helpers.course.ddpm_inpainting"
