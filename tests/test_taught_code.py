"""The course shows what it teaches: every algorithm of the course is a code cell (tag ``taught``) of
the notebook that teaches it, an exact copy of its function in helpers/course/ (the one source of
truth that the report, the demo and the benchmark run). No kernel needed."""
import ast
import os
import shutil
import subprocess
import time

import jupytext
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


# --- the sync never discards an edit (issue #26) ----------------------------------------------------------

Q_LINE = "    ab = alphas_cumprod.to(x0.device)[torch.as_tensor(t, device=x0.device).long().reshape(-1)].to(x0.dtype)\n"


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A copy of notebook 02 (both files of the pair) and its module, with taught's paths redirected."""
    nb_dir, mod_dir = tmp_path / "notebooks", tmp_path / "helpers" / "course"
    nb_dir.mkdir()
    mod_dir.mkdir(parents=True)
    for name in ("02_ddpm_theory.md", "02_ddpm_theory.ipynb", "jupytext.toml"):
        shutil.copy(ROOT / "notebooks" / name, nb_dir)
    shutil.copy(ROOT / "helpers" / "course" / "diffusion.py", mod_dir)
    monkeypatch.setattr(taught, "ROOT", tmp_path)
    monkeypatch.setattr(taught, "NOTEBOOKS", nb_dir)
    return nb_dir / "02_ddpm_theory.md", mod_dir / "diffusion.py"


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    os.utime(path, (time.time() + 5, time.time() + 5))      # the edited side is the newer one


def _cells(path):
    return "\n".join(c.source for c in jupytext.read(path).cells)


def test_make_notebooks_keeps_an_edit_of_the_md(course, capsys):
    """The issue's scenario: a comment added inside q_sample in the .md, then `make notebooks` (which runs
    `taught notebooks`): it fails naming the cell and the commands, and the edit stays in both files."""
    nb, mod = course
    assert taught.main(["notebooks"]) == 0          # in sync: records the baseline
    module_before = mod.read_text()
    _edit(nb, Q_LINE, "    # an author's note\n" + Q_LINE)
    assert taught.main(["notebooks"]) == 1
    err = capsys.readouterr().err
    assert "02_ddpm_theory.md cell" in err and "q_sample was edited in the cell" in err
    assert "python -m helpers.tools.taught pull 02" in err and "python -m helpers.tools.taught reset 02" in err
    assert "# an author's note" in nb.read_text()
    assert "# an author's note" in _cells(nb.with_suffix(".ipynb"))       # the pair was synced
    assert mod.read_text() == module_before
    # the command it names keeps the edit; then make notebooks passes
    assert taught.main(["pull", "02"]) == 0 and "# an author's note" in mod.read_text()
    assert taught.main(["notebooks"]) == 0 and taught.check() == []
    assert "# an author's note" in nb.read_text()


def test_make_notebooks_keeps_an_edit_of_the_ipynb(course):
    nb, mod = course
    ipynb = nb.with_suffix(".ipynb")
    _edit(ipynb, "    ab = alphas_cumprod.to(", "    # from JupyterLab\\n\",\n    \"    ab = alphas_cumprod.to(")
    with pytest.raises(taught.TaughtError, match="q_sample"):
        taught.make_notebooks()
    assert "# from JupyterLab" in nb.read_text() and "# from JupyterLab" not in mod.read_text()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_module_edit_still_reaches_the_cells(course):
    """The baseline of a fresh checkout is the last commit: a module edit goes into the cell (and the
    .ipynb); a second edit before committing goes in too (the recorded baseline of the last sync)."""
    nb, mod = course
    root = nb.parent.parent
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "course"], check=True)
    for note in ("# first module edit", "# second module edit"):
        _edit(mod, Q_LINE, f"    {note}\n" + Q_LINE)
        assert taught.make_notebooks() == [nb]
        assert note in nb.read_text() and note in _cells(nb.with_suffix(".ipynb"))
        assert taught.check() == []
    assert nb.stat().st_mtime >= nb.with_suffix(".ipynb").stat().st_mtime    # the .md stays the newer side


def test_an_edit_on_both_sides_is_refused_and_nothing_written(course):
    nb, mod = course
    taught.sync()                                   # in sync: records the baseline
    _edit(mod, Q_LINE, "    # module side\n" + Q_LINE)
    _edit(nb, Q_LINE, "    # cell side\n" + Q_LINE)
    before = nb.read_text(), mod.read_text()
    with pytest.raises(taught.TaughtError) as e:
        taught.sync()
    msg = "\n".join(e.value.problems)
    assert "q_sample was edited both in the cell and in the module helpers/course/diffusion.py" in msg
    assert "02_ddpm_theory.md cell" in msg and "pull 02" in msg and "reset 02" in msg
    assert (nb.read_text(), mod.read_text()) == before
    # reset drops the cell's edit (the module's version goes into the cell)
    assert taught.reset("02") == [nb] and "# module side" in nb.read_text() and "# cell side" not in nb.read_text()


NEW_FN = '''

def q_mean(x0, t, alphas_cumprod):
    """A new function written in the notebook."""
    return alphas_cumprod[t].sqrt() * x0'''


def test_pull_adds_a_new_function(course):
    nb, mod = course
    q_sample = taught.definitions(mod)["q_sample"]
    _edit(nb, q_sample, q_sample + "\n" + NEW_FN)
    problems = taught.check()                       # reports, never raises
    assert any("function q_mean is in the cell but not in the module" in p and "pull 02" in p for p in problems)
    with pytest.raises(taught.TaughtError, match="q_mean is in the cell but not in the module"):
        taught.sync()
    assert "def q_mean" in nb.read_text()
    assert taught.pull("02") == [mod]
    text = mod.read_text()
    assert q_sample + "\n" + NEW_FN + "\n\n\n" in text        # after the cell's previous function, blank lines kept
    ast.parse(text)
    assert taught.check() == [] and taught.sync() == []


def test_pull_is_all_or_nothing(course, capsys):
    """One good edit and one broken cell: pull writes no module and says why, without a traceback."""
    nb, mod = course
    _edit(nb, Q_LINE, "    # a good edit\n" + Q_LINE)
    p_sample = taught.definitions(mod)["p_sample"]
    _edit(nb, p_sample, p_sample.replace("def p_sample(", "def p_sample((", 1))
    before = mod.read_text()
    assert taught.main(["pull", "02"]) == 1
    err = capsys.readouterr().err
    assert "does not parse" in err and "nothing written" in err
    assert mod.read_text() == before
    problems = taught.check()
    assert any("does not parse" in p for p in problems) and any("q_sample" in p for p in problems)
    with pytest.raises(taught.TaughtError, match="does not parse"):
        taught.sync()


@pytest.mark.parametrize("cell, module, base, kind", [
    ("a", "a", set(), "same"),
    ("a", "b", {"a"}, "module"),       # the module moved: sync
    ("b", "a", {"a"}, "cell"),         # the cell moved: pull or reset
    ("b", None, {"a"}, "cell"),        # a new function in the cell
    ("a", None, {"a"}, "removed"),     # the module dropped a function the cell still shows
    ("b", "c", {"a"}, "both"),
    ("a", "b", set(), "unknown"),      # no baseline
    ("a", "b", {"a", "b"}, "unknown"),  # the last commit and the last sync disagree
])
def test_classify_tells_which_side_changed(cell, module, base, kind):
    assert taught.classify(cell, module, {taught.digest(t) for t in base}) == kind


def test_a_line_outside_the_functions_is_never_dropped(course):
    """A module holds only the functions: sync and pull refuse a cell with other lines, writing nothing."""
    nb, mod = course
    _edit(nb, "def q_sample(", "# a note above the function\ndef q_sample(")
    before = nb.read_text(), mod.read_text()
    for command in (taught.sync, lambda: taught.pull("02")):
        with pytest.raises(taught.TaughtError, match="outside its functions"):
            command()
        assert (nb.read_text(), mod.read_text()) == before


def test_pull_leaves_a_module_edit_alone(course):
    """pull moves the cells' edits only: a function that only the module changed keeps the module's text."""
    nb, mod = course
    taught.sync()                                   # in sync: records the baseline
    _edit(mod, Q_LINE, "    # module edit\n" + Q_LINE)
    p_sample = taught.definitions(mod)["p_sample"]
    first = p_sample.splitlines()[0]
    _edit(nb, first, first + "\n    # cell edit")
    assert taught.pull("02") == [mod]
    text = mod.read_text()
    assert "# module edit" in text and "# cell edit" in text
    assert taught.sync() == [nb] and taught.check() == []
