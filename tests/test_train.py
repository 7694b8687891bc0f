"""The shared training loop: exact resume, history, only trainable parameters change."""
import pytest
import torch

import helpers as H
from helpers.study.config import Config


class Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return {"x": torch.full((4,), float(i))}


def loss_fn(model, batch, g):
    noise = torch.randn(batch["x"].shape, generator=g)     # all randomness from the step's generator
    return ((model(batch["x"] / 20 + noise) - 1) ** 2).mean()


SPEC = Config(batch_size=4, lr=1e-2, num_epochs=3, max_steps=None, max_grad_norm=1.0, mixed_precision="no",
              checkpoint_every=2)


def _run(ckpt, stop=None, spec=SPEC):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.2), torch.nn.Linear(4, 1))
    model[0].bias.requires_grad_(False)
    frozen = model[0].bias.detach().clone()
    result = H.study.models.training.train(model, loss_fn, Numbers(), spec, ckpt, 0, torch.device("cpu"),
                                           max_steps=stop)
    return model, result, frozen


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    whole, r_whole, frozen = _run(tmp_path / "a")
    _run(tmp_path / "b", stop=7)                            # "killed" after 7 of 15 steps
    resumed, r_res, _ = _run(tmp_path / "b")
    assert r_whole.steps == r_res.steps == 15 and r_res.resumed_from == 7
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert r_whole.history == r_res.history and len(r_whole.history) == 15
    assert torch.equal(whole[0].bias, frozen)               # a frozen parameter never moves
    assert r_whole.trainable_params == r_whole.total_params - 4
    assert r_whole.history[-1]["loss"] < r_whole.history[0]["loss"]
    assert (tmp_path / "a" / "last.pt").is_file() and r_whole.images_per_s > 0


def test_a_second_training_in_the_same_process(tmp_path):
    """Accelerate's state is a process-wide singleton: a second training in the same notebook kernel
    reuses it and runs in full precision (the step's own autocast decides the precision)."""
    from accelerate.state import AcceleratorState

    _run(tmp_path / "a")
    _, result, _ = _run(tmp_path / "b")
    assert result.steps == 15 and AcceleratorState().mixed_precision == "no"


def test_asking_fewer_steps_than_a_finished_run_says_so(tmp_path, caplog):
    """The run's length is not in its fingerprint (a longer run resumes a shorter one): a shorter budget asked of a
    finished longer run gets the longer run's weights, and the warning says how many steps they are."""
    _run(tmp_path / "a")                                    # 15 steps
    with caplog.at_level("WARNING"):
        _, result, _ = _run(tmp_path / "a", spec=Config(**{**SPEC.to_dict(), "max_steps": 6}))
    assert result.steps == 15 and "has trained 15 steps, more than the 6 asked" in caplog.text


def test_images_per_second_counts_the_real_batch(tmp_path):
    """A set smaller than the batch gives short batches: they count as what they hold."""
    class Three(Numbers):
        def __len__(self):
            return 3

    model = torch.nn.Linear(4, 1)
    spec = Config({**SPEC, "checkpoint_every": None, "num_epochs": 2})
    r = H.study.models.training.train(model, lambda m, b, g: m(b["x"]).pow(2).mean(), Three(), spec, tmp_path, 0,
                               torch.device("cpu"))
    assert r.steps == 2
    assert abs(r.images_per_s * r.seconds - 6) < 1e-6


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")   # the planted pickle: expected
def test_a_foreign_or_mismatched_checkpoint_is_refused_by_name(tmp_path):
    import pickle

    import pytest

    _run(tmp_path / "a", stop=2)                               # a real checkpoint of this model

    # 1. another architecture: the trainable keys/shapes differ -> refused, nothing half-loaded
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    with pytest.raises(H.study.models.training.CheckpointMismatchError, match=r"last\.pt does not match.*missing"):
        H.study.models.training.train(other, loss_fn, Numbers(), SPEC, tmp_path / "a", 0, torch.device("cpu"))
    # 2. a planted pickle that would run code under weights_only=False -> refused, the code never runs
    planted = tmp_path / "p"
    planted.mkdir()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(planted / "last.pt", "wb") as f:
        pickle.dump({"model": Evil(), "optimizer": {}, "step": 1, "history": []}, f)
    with pytest.raises(H.study.models.training.CheckpointMismatchError, match=r"last\.pt cannot be loaded safely"):
        _run(planted)
    assert not marker.exists()
    # 3. a torch file of something else (a bare state dict) -> refused as not a training checkpoint
    bare = tmp_path / "b"
    bare.mkdir()
    torch.save({"weight": torch.zeros(2)}, bare / "last.pt")
    with pytest.raises(H.study.models.training.CheckpointMismatchError, match="not a study training checkpoint"):
        _run(bare)
    # 4. the real one still resumes
    _, result, _ = _run(tmp_path / "a")
    assert result.resumed_from == 2 and result.steps == 15


def test_loader_workers_are_capped_at_the_usable_cpus(monkeypatch):
    import os

    from helpers.study.models.training import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [loader_workers(n) for n in (0, 1, 2, 4, 16)] == [0, 1, 2, 2, 2]


# ---------------------------------------------------------------- what a run runs: its code
LOSS_SOURCE = """
def loss(model, batch, generator):
    return (model(batch["x"]) ** 2).mean(){edit}
"""


def _cell(source: str, **names):
    """A function as a notebook cell defines it: exec'd in a ``__main__`` namespace (no source file)."""
    ns = {"__name__": "__main__", **names}
    exec(source, ns)
    return ns["loss"]


def test_an_edited_loss_changes_the_run_fingerprint_the_same_code_keeps_it():
    fp = H.study.models.runs.code_fingerprint
    original, same, edited = _cell(LOSS_SOURCE.format(edit="")), _cell(LOSS_SOURCE.format(edit="")), \
        _cell(LOSS_SOURCE.format(edit=" * 2"))
    assert fp(original) == fp(same) and fp(original) != fp(edited)
    assert fp(loss_fn) == fp(loss_fn) != fp(original)                   # functions with a source file
    in_package = {"__name__": "helpers.course.copy"}
    exec(LOSS_SOURCE.format(edit=""), in_package)
    assert fp(in_package["loss"]) == fp(original)                       # a taught cell runs as its package copy
    step = H.course.ddpm_inpainting.training_step
    assert fp(original, step) != fp(edited, step) and fp(original, step) != fp(original)
    cfg = H.load_config("smoke")
    folder = lambda f: H.study.models.ddpm.checkpoint_dir(cfg, H.study.files.paths(cfg),
                                                   H.study.models.runs.code_hashes(loss_fn=f, step_fn=step))
    assert folder(original) == folder(same) != folder(edited)


def test_the_fingerprint_follows_the_course_and_notebook_functions_a_function_calls(monkeypatch):
    """A cell calling the course's loss (through a partial, a closure or a global name) changes with the course
    function the loss calls in turn (q_sample, monkeypatched), and with a notebook function it calls."""
    from functools import partial

    import helpers.course.ddpm_inpainting as course

    fp = H.study.models.runs.code_fingerprint
    via_global = _cell("def loss(model, batch, g):\n    return inpainting_loss(model, batch, g, None, 1.0, 0.05)\n",
                       inpainting_loss=course.inpainting_loss)
    via_partial = partial(course.inpainting_loss, lambda_mask=1.0, lambda_context=0.05)
    before = [fp(via_global), fp(via_partial), fp(course.ddim_inpaint)]
    edited_q_sample = _cell("def loss(x0, t, eps, alphas_cumprod):\n    return x0\n")
    monkeypatch.setattr(course, "q_sample", edited_q_sample)
    monkeypatch.setattr(course, "ddim_sample_loop", edited_q_sample)
    after = [fp(via_global), fp(via_partial), fp(course.ddim_inpaint)]      # ddim_inpaint: @torch.no_grad
    assert all(b != a for b, a in zip(before, after))
    helper = _cell("def loss(x):\n    return x\n")
    caller = _cell("def loss(model, batch, g):\n    return helper(batch)\n", helper=helper)
    changed = _cell("def loss(model, batch, g):\n    return helper(batch)\n", helper=edited_q_sample)
    assert fp(caller) != fp(changed)


def test_a_reused_or_new_run_says_which_and_why(tmp_path, capsys):
    announce = H.study.models.runs.announce_run
    first = tmp_path / "ckpt_a"
    assert "new run in" in announce(first, "settings", {"loss_fn": "1", "step_fn": "2"})
    (first / H.study.models.runs.CHECKPOINT).write_bytes(b"")
    assert announce(first, "settings", {"loss_fn": "1", "step_fn": "2"}).startswith(
        f"reusing the run in {tmp_path.name}/ckpt_a: same settings and same code")
    note = announce(tmp_path / "ckpt_b", "settings", {"loss_fn": "3", "step_fn": "2"})
    assert note == (f"the code differs from the previous run in {tmp_path.name}/ckpt_a (loss_fn changed): "
                    f"training starts anew in {tmp_path.name}/ckpt_b")
    assert "new run in" in announce(tmp_path / "ckpt_c", "other settings", {"loss_fn": "1", "step_fn": "2"})
    assert capsys.readouterr().out.count("\n") == 4


def test_a_new_run_of_changed_settings_names_them_and_the_run_it_keeps(tmp_path, capsys):
    """An edited setting starts a run of its own; the note names what changed against the latest earlier run
    and says that run stays (setting it back reuses it), as the preset's keys and a run's settings are stored."""
    tr = H.study.models.runs
    cfg = H.load_config("smoke")
    keys = H.study.models.ddpm.TRAJECTORY_KEYS
    code = {"loss_fn": "1", "step_fn": "2"}
    before = tr.run_settings(cfg, "ddpm", keys)
    assert tr.settings_hash(before) == tr.run_fingerprint(cfg, "ddpm", keys)       # the folder's name, as before
    tr.announce_run(tmp_path / "ckpt_a", before, code)
    edited = H.load_config("smoke", {"ddpm.lr": 0.5, "ddpm.lambda_context": 1.0})
    note = tr.announce_run(tmp_path / "ckpt_b", tr.run_settings(edited, "ddpm", keys), code)
    assert note == (f"new run in {tmp_path.name}/ckpt_b: settings differ from the latest run, in {tmp_path.name}/"
                    f"ckpt_a (ddpm.lambda_context {cfg.ddpm.lambda_context} -> 1.0; ddpm.lr {cfg.ddpm.lr} -> 0.5), "
                    "which is kept: setting them back reuses it")
    third = tr.run_settings(H.load_config("smoke", {"ddpm.lr": 0.25, "ddpm.lambda_context": 1.0}), "ddpm", keys)
    other_code = tr.announce_run(tmp_path / "ckpt_c", third, {"loss_fn": "edited", "step_fn": "2"})
    assert other_code.endswith("ckpt_b (ddpm.lr 0.5 -> 0.25), and so do loss_fn"), other_code
    # many changes: the first four by name, then how many more; a long value (a hash) by its name only
    many = tr.setting_changes({f"k{i}": i for i in range(6)} | {"captions": "a" * 64}, {"captions": "b" * 64})
    assert many == ["captions", "k0 0 -> unset", "k1 1 -> unset", "k2 2 -> unset", "3 more"]
    assert capsys.readouterr().out.count("\n") == 3


def test_base_weights_are_fingerprinted_by_content_wherever_they_lie(tmp_path):
    """Two copies of one weights folder share a fingerprint; a changed byte, or a file added, changes it; a file
    linked into the hub's cache counts by its blob's name (its hash); a hub id is taken as named."""
    wf = H.study.models.runs.weights_fingerprint
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    for folder in (a, b):
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "model.safetensors").write_bytes(b"\x00" * 64)
        (folder / "model_index.json").write_text("{}")
    assert wf(str(a)) == wf(str(b)) != wf("org/model")
    assert wf("org/model") == "org/model"
    (b / "unet" / "model.safetensors").write_bytes(b"\x00" * 65)   # another size: not an mtime tick
    assert wf(str(b)) != wf(str(a))
    (a / "extra.json").write_text("{}")
    assert wf(str(a)) != wf(str(b))
    blobs, snap = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "rev"
    blobs.mkdir(parents=True), snap.mkdir(parents=True)
    (blobs / "f00d").write_bytes(b"weights")
    (snap / "w.bin").symlink_to(blobs / "f00d")
    before = wf(str(snap))
    (blobs / "beef").write_bytes(b"other weights")
    (snap / "w.bin").unlink()
    (snap / "w.bin").symlink_to(blobs / "beef")
    assert wf(str(snap)) != before


def test_new_base_weights_or_data_start_a_new_run_and_say_so(tmp_path, capsys):
    """The DDPM's run folder follows the base weights' and the prepared data's content, not their path: the
    note of the new run names what changed."""
    import json

    from helpers.study.models import ddpm

    base = tmp_path / "base"
    (base / "unet").mkdir(parents=True)
    (base / "unet" / "model.safetensors").write_bytes(b"old")
    cfg = H.load_config("smoke", {"ddpm.pretrained_id": str(base)})
    P = H.study.files.paths(cfg, tmp_path / "root")
    P.data.mkdir(parents=True, exist_ok=True)     # paths() may make it
    (P.data / "index.json").write_text(json.dumps({"fingerprint": "data-1"}))
    first = ddpm.checkpoint_dir(cfg, P)
    code = {"loss_fn": "1", "step_fn": "2"}
    announce = H.study.models.runs.announce_run
    announce(first, "settings", code, ddpm.inputs_of(cfg, P))
    (base / "unet" / "model.safetensors").write_bytes(b"newer")
    second = ddpm.checkpoint_dir(cfg, P)
    assert second != first
    note = announce(second, "settings", code, ddpm.inputs_of(cfg, P))
    assert note.endswith(f"the base weights differ from those of the run in {first.parent.name}/{first.name}")
    (P.data / "index.json").write_text(json.dumps({"fingerprint": "data-2"}))
    third = ddpm.checkpoint_dir(cfg, P)
    assert third not in (first, second)
    assert "the prepared data differ" in announce(third, "settings", code, ddpm.inputs_of(cfg, P))
    (P.data / "index.json").write_text(json.dumps({"fingerprint": "data-3"}))
    both = announce(ddpm.checkpoint_dir(cfg, P), "settings", {**code, "loss_fn": "edited"}, ddpm.inputs_of(cfg, P))
    assert both.startswith(f"the code differs from the previous run in {third.parent.name}/{third.name} (loss_fn "
                           "changed), and so do the prepared data: training starts anew"), both
    assert "no earlier run" in announce(tmp_path / "other", "other settings", code, ddpm.inputs_of(cfg, P))
    capsys.readouterr()
