"""The from-scratch digits DDPM of notebook 02 (helpers.study.models.digits): a short run where the loss
falls and the known pixels are kept, the scores on hand-made cases, the checkpoint grid file."""
import math

import numpy as np
import pytest
import torch

import helpers as H

pytest.importorskip("sklearn")
D = H.study.models.digits

TINY = {                                       # a small U-Net and a step budget: seconds on 2 cores
    "digits.model.block_out_channels": [16, 16, 16],
    "digits.batch_size": 32,
    "digits.clock": "steps",
    "digits.budget": 40,
    "digits.checkpoints": [0],
    "digits.num_inference_steps": 2,
    "digits.bootstrap_samples": 50,
    "digits.grid_images": 4,
}


class MeanSign:
    """A classifier stub: digit 1 when the mean pixel is above 0, else 0."""
    def predict(self, x):
        return (np.asarray(x).mean(1) > 0).astype(int)


def _subset(data: dict, n: int) -> dict:
    return {k: (v[:n] if not k.startswith("train") else v) for k, v in data.items()}


@pytest.fixture(scope="module")
def short_run():
    d = H.load_config("smoke", TINY).digits
    data = _subset(D.load_data(d), 24)
    run = D.new_run(d, seed=0)
    records, completions = [], []
    history = H.course.diffusion.train_with_checkpoints(run, D.next_batch(data, d), d.checkpoints,
                                                        D.checkpoint_recorder(data, MeanSign(), records, completions),
                                                        H.course.ddpm_inpainting.inpainting_loss,
                                                        H.course.ddpm_inpainting.training_step)
    return d, data, run, history, records, completions


def test_data_split_and_holes_are_fixed():
    d = H.load_config("smoke").digits
    a, b = D.load_data(d), D.load_data(d)
    assert a["train_image"].shape == (1500, 1, 16, 16) and a["image"].shape == (297, 1, 16, 16)
    assert a["image"].min() >= -1 and a["image"].max() <= 1
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["x_T"], b["x_T"])
    sides = a["mask"].amax(2).sum((1, 2)), a["mask"].amax(3).sum((1, 2))
    assert all(((s >= 6) & (s <= 10)).all() for s in sides)
    assert torch.equal(a["x_masked"], a["image"] * (1 - a["mask"]))


def test_short_run_loss_falls_and_known_pixels_are_kept(short_run):
    d, data, run, history, records, completions = short_run
    losses = [h["loss"] for h in history]
    assert len(losses) == d.budget and run.step == d.budget
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    assert [r["steps"] for r in records] == [0, d.budget]             # checkpoint 0 and the end
    pred = D.complete(run, data)
    known = 1 - data["mask"]
    assert torch.equal(pred * known, data["x_masked"] * known)
    raw = D.complete(run, data, paste_back=False)
    assert torch.equal(D.paste_back(raw, data), pred)               # the same samples, composited
    assert pred.min() >= -1 and pred.max() <= 1


def test_scores_on_hand_made_cases():
    ones, mask = torch.ones(4, 1, 4, 4), torch.ones(4, 1, 4, 4)
    image = torch.cat([ones[:2], -ones[2:]])                          # digits 1, 1, 0, 0
    data = {"image": image, "label": torch.tensor([1, 1, 0, 0]), "mask": mask}
    perfect = D.score(image, data, MeanSign(), n_boot=100)
    assert perfect["accuracy"] == 1.0
    assert perfect["accuracy_low"] == pytest.approx(4 / (4 + 1.96 ** 2))   # Wilson at k = n
    grey = D.score(image * (1 - mask), data, MeanSign(), n_boot=100)   # hole = 0: read as digit 0
    assert grey["accuracy"] == 0.5
    assert grey["hole_psnr"] == pytest.approx(10 * math.log10(4.0))    # MSE 1 on a range of 2
    lo, hi = D.wilson_ci(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))


def test_telea_keeps_known_pixels():
    d = H.load_config("smoke").digits
    data = _subset(D.load_data(d), 8)
    filled = D.telea_1ch(data["x_masked"], data["mask"], 3)
    known = 1 - data["mask"]
    assert filled.shape == data["image"].shape
    assert torch.equal(filled * known, data["x_masked"] * known)


def test_checkpoint_grid_and_tables_are_written(short_run, tmp_path):
    d, data, run, history, records, completions = short_run
    rows, titles = D.grid_rows(data, data["x_masked"], records, completions, d.grid_images)
    assert len(rows) == 3 + len(records) and all(len(r) == d.grid_images for r in rows)
    H.report.figures.image_grid(rows, row_titles=titles, path=tmp_path / "grid.png", cell=0.8)
    assert (tmp_path / "grid.png").stat().st_size > 0
    table = D.results_table([{"method": "hole left grey", "accuracy": 0.5}], records)
    D.save_results(table, {"steps": run.step}, tmp_path)
    assert (tmp_path / "02_digits.csv").is_file() and (tmp_path / "02_digits.json").is_file()
    assert table.method.iloc[-1] == f"DDPM, {records[-1]['seconds']:.0f} s ({d.budget} steps)"
    full = D.results_table(D.baseline_rows(data, MeanSign(), d), records)       # the deck's slide (notebook 06)
    H.report.figures.digits_summary(tmp_path / "grid.png", full, path=tmp_path / "06_digits.png")
    assert (tmp_path / "06_digits.png").stat().st_size > 0
    # the learning curve: one point per checkpoint with its interval, each baseline a line
    fig = H.report.figures.digits_curve(full, path=tmp_path / "02_digits_curve.png")
    acc, psnr = fig.axes[:2]
    assert len(acc.lines[0].get_xdata()) == len(records) == len(psnr.lines[0].get_xdata())
    labels = {t.get_text() for t in psnr.get_legend().get_texts()}
    assert {"DDPM (from scratch)", "ground truth", "hole left grey"} <= labels and any("Telea" in x for x in labels)
    assert not H.report.figures.png_is_stamped(tmp_path / "02_digits_curve.png")
    by_steps = H.report.figures.digits_curve(full, clock="steps")           # mini's clock: the x axis counts steps
    assert by_steps.axes[0].get_xlabel() == "training steps" and acc.get_xlabel() == "training CPU-seconds"
    assert list(by_steps.axes[0].lines[0].get_xdata()) == [r["steps"] for r in records]


def test_the_notebook_s_own_definitions_reach_training_and_sampling(short_run):
    """Notebook 02 passes its own q_sample (through ``with_names``) and DDIM loop: an edit of either runs."""
    d, data, run, _, _, _ = short_run
    calls = []

    def q_sample(x0, t, eps, alphas_cumprod):                 # an "edited cell": counts its calls
        calls.append("q_sample")
        return H.course.diffusion.q_sample(x0, t, eps, alphas_cumprod)

    def sample_loop(*args, **kw):
        calls.append("loop")
        return H.course.diffusion.ddim_sample_loop(*args, **kw)

    loss = D.with_names(H.course.ddpm_inpainting.inpainting_loss, q_sample=q_sample)
    other = D.new_run(d, seed=0, budget=2)
    H.course.diffusion.train_with_checkpoints(other, D.next_batch(data, d), [], D.checkpoint_recorder(
        data, MeanSign(), [], [], sample_loop=sample_loop), loss, H.course.ddpm_inpainting.training_step)
    assert calls == ["q_sample", "q_sample", "loop"]
    assert H.course.ddpm_inpainting.inpainting_loss.__globals__["q_sample"] is H.course.diffusion.q_sample


def test_a_step_budget_reproduces_every_number_and_a_bad_clock_is_refused(short_run):
    """clock: steps (mini's): two runs from the same seed train the same steps and score the same, whatever the
    machine's speed; checkpoints count steps too. An unknown clock or an empty budget is refused at once."""
    d, data, _, _, _, _ = short_run
    runs = []
    for _ in range(2):
        run, records = D.new_run(d, seed=3, budget=4), []
        history = H.course.diffusion.train_with_checkpoints(
            run, D.next_batch(data, run.cfg), [2], D.checkpoint_recorder(data, MeanSign(), records, []),
            H.course.ddpm_inpainting.inpainting_loss, H.course.ddpm_inpainting.training_step)
        runs.append(([h["loss"] for h in history], [{k: v for k, v in r.items() if k not in ("seconds", "sampling_s")}
                                                     for r in records]))
    assert runs[0] == runs[1] and [r["steps"] for r in runs[0][1]] == [2, 4]
    assert D.budget_text(d) == f"{d.budget} steps" and D.nearest_checkpoint(
        [{"steps": 0, "seconds": 9.0}, {"steps": 40, "seconds": 1.0}], d, 30)["steps"] == 40
    for bad in ({"clock": "hours"}, {"budget": 0}):
        with pytest.raises(ValueError, match="clock must be one of"):
            D.new_run(d, seed=0, **bad)
