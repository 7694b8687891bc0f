"""The human preference study: the SQLite vote store (concurrent writers, a killed writer), the
balanced pair schedule, and the statistics against hand computations and an independent fit."""
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import helpers as H

A, B, GT = "ddpm_finetuned", "sd_lora", H.study.votes.GROUND_TRUTH


def _small_table(store: H.study.votes.VoteStore) -> None:
    """9 votes, by hand: A vs B: A chosen 3 times, B once; B vs GT: B once, GT twice; A vs GT: GT twice."""
    plan = [("r1", "img0", A, B, "left"), ("r1", "img1", B, A, "right"), ("r2", "img0", A, B, "left"),
            ("r3", "img1", A, B, "right"),                                   # A: 3 wins over B, B: 1 over A
            ("r1", "img0", B, GT, "left"), ("r2", "img1", GT, B, "left"), ("r3", "img0", B, GT, "right"),
            ("r2", "img0", GT, A, "left"), ("r3", "img1", A, GT, "right")]
    for i, (rater, image, left, right, choice) in enumerate(plan):
        assert store.add(rater, image, left, right, choice, response_ms=100.0 * i, trial_id=f"t{i}")


def test_store_rows_hold_every_field(tmp_path):
    store = H.study.votes.VoteStore(tmp_path / "v.sqlite")
    assert store.add("ann", "img0", A, GT, "right", response_ms=812.5, trial_id="x1")
    assert not store.add("ann", "img0", A, GT, "right", trial_id="x1"), "a double click counts once"
    v = store.votes()
    assert len(v) == 1 and list(v.columns) == H.study.votes.COLUMNS
    row = v.iloc[0]
    assert (row.rater, row.image, row.left_method, row.right_method, row.choice, row.chosen_method) == \
        ("ann", "img0", A, GT, "right", GT)
    assert row.response_ms == 812.5 and row.time.endswith("+00:00")
    with pytest.raises(ValueError, match="left' or 'right"):
        store.add("ann", "img0", A, GT, "middle")
    with pytest.raises(ValueError, match="two different"):
        store.add("ann", "img0", A, A, "left")


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "v.sqlite"
    H.study.votes.VoteStore(path)
    n_threads, per_thread = 8, 30
    errors = []

    def rater(k: int) -> None:
        store = H.study.votes.VoteStore(path)          # each rater its own handle, as each server request is
        try:
            for i in range(per_thread):
                store.add(f"r{k}", f"img{i % 3}", A, B, "left" if (i + k) % 2 else "right", trial_id=f"{k}-{i}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=rater, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    v = H.study.votes.VoteStore(path).votes()
    assert len(v) == n_threads * per_thread
    assert set(v["trial_id"]) == {f"{k}-{i}" for k in range(n_threads) for i in range(per_thread)}
    assert Counter(v["rater"]) == {f"r{k}": per_thread for k in range(n_threads)}


def test_a_killed_writer_loses_no_answered_vote(tmp_path):
    """A process that is SIGKILLed mid-stream: every vote whose add() had returned is in the file."""
    path = tmp_path / "v.sqlite"
    code = textwrap.dedent(f"""
        import sys
        from helpers.study.votes import VoteStore
        store = VoteStore({str(path)!r})
        for i in range(100000):
            store.add("r", "img", "telea", "ground_truth", "left", trial_id=str(i))
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(H.__file__).parent.parent)
    answered = []
    for line in proc.stdout:
        answered.append(line.strip())
        if len(answered) == 40:
            proc.kill()
            break
    proc.wait()
    saved = set(H.study.votes.VoteStore(path).votes()["trial_id"])
    assert len(answered) == 40 and set(answered) <= saved


def test_wilson_interval_matches_the_quadratic():
    """Wilson's interval: the p with (p_hat - p)^2 = z^2 p (1 - p) / n, solved as a quadratic."""
    z = 1.959963984540054
    for k, n in ((7, 10), (0, 5), (5, 5), (31, 97)):
        p_hat = k / n
        a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat ** 2
        lo, hi = sorted(np.roots([a, b, c]).real)
        p, wlo, whi = H.report.preference.wilson(k, n)
        assert p == pytest.approx(p_hat) and wlo == pytest.approx(max(lo, 0), abs=1e-12)
        assert whi == pytest.approx(min(hi, 1), abs=1e-12)
    assert H.report.preference.wilson(7, 10)[1] == pytest.approx(0.3968, abs=1e-4)
    assert H.report.preference.wilson(7, 10)[2] == pytest.approx(0.8922, abs=1e-4)
    assert np.isnan(H.report.preference.wilson(0, 0)[0])


def test_statistics_equal_the_hand_computation(tmp_path):
    store = H.study.votes.VoteStore(tmp_path / "v.sqlite")
    _small_table(store)
    v = store.votes()
    assert H.report.preference.counts(v) == {"votes": 9, "raters": 3, "images": 2}
    pw = H.report.preference.win_rates(v).set_index(["method", "opponent"])
    expect = {(A, B): (3, 4), (B, A): (1, 4), (B, GT): (1, 3), (GT, B): (2, 3), (GT, A): (2, 2), (A, GT): (0, 2)}
    assert len(pw) == len(expect)
    for key, (k, n) in expect.items():
        assert (pw.loc[key, "wins"], pw.loc[key, "n"]) == (k, n)
        assert pw.loc[key, "win_rate"] == pytest.approx(k / n)
        assert (pw.loc[key, "lo"], pw.loc[key, "hi"]) == pytest.approx(H.report.preference.wilson(k, n)[1:])
    overall = H.report.preference.overall_rates(v).set_index("method")
    assert overall.loc[A, ["wins", "n"]].tolist() == [3, 6]
    assert overall.loc[B, ["wins", "n"]].tolist() == [2, 7]
    assert overall.loc[GT, ["wins", "n"]].tolist() == [4, 5]


def test_bradley_terry_two_methods_closed_form():
    """Two methods: the MLE with the virtual wins is p_A / p_B = (W_AB + prior) / (W_BA + prior)."""
    W = np.array([[0.0, 3.0], [1.0, 0.0]])         # W[i, j]: i chosen over j; A beat B 3 times, B beat A once
    theta = H.report.preference.bradley_terry(W, prior=0.5)
    assert theta[0] - theta[1] == pytest.approx(np.log(3.5 / 1.5), abs=1e-9)
    assert theta.sum() == pytest.approx(0, abs=1e-12)


def test_bradley_terry_matches_a_direct_likelihood_fit(tmp_path):
    """Three methods from the hand table: MM agrees with maximising the log-likelihood by scipy."""
    from scipy.optimize import minimize

    store = H.study.votes.VoteStore(tmp_path / "v.sqlite")
    _small_table(store)
    v = store.votes()
    methods = H.report.preference.methods_in(v)
    assert methods == [A, B, GT]
    W = H.report.preference.win_counts(v, methods)
    assert W.tolist() == [[0, 3, 0], [1, 0, 1], [2, 2, 0]]
    prior = 0.5
    Wp = W + prior * ((W + W.T) > 0)

    def nll(t):   # -sum_ij W_ij log(p_i / (p_i + p_j)) with p = exp(t)
        t = np.append(t, -t.sum())
        return -sum(Wp[i, j] * (t[i] - np.logaddexp(t[i], t[j])) for i in range(3) for j in range(3) if i != j)

    res = minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-10})
    direct = np.append(res.x, -res.x.sum())
    assert H.report.preference.bradley_terry(W, prior) == pytest.approx(direct, abs=1e-5)
    rank = H.report.preference.ranking(v, prior, n_boot=50, seed=0)
    assert rank["method"].tolist() == [methods[i] for i in np.argsort(-direct)]
    assert (rank["lo"] <= rank["theta"] + 1e-9).all() and (rank["theta"] <= rank["hi"] + 1e-9).all()


def test_scheduler_covers_every_pair_evenly(tmp_path):
    store = H.study.votes.VoteStore(tmp_path / "v.sqlite")
    cands = {f"img{i}": [A, B, GT] + (["ddpm_repaint"] if i < 2 else []) for i in range(4)}
    sched = H.apps.votes.PairScheduler(cands, store, seed=0)
    assert len(sched.pairs) == 6
    rng = np.random.default_rng(0)
    sides = Counter()
    for _ in range(60):
        t = sched.next("solo")
        assert t.left != t.right and t.image in cands and {t.left, t.right} <= set(cands[t.image])
        sides[t.left] += 1
        store.add("solo", t.image, t.left, t.right, "left" if rng.random() < 0.5 else "right", trial_id=t.trial_id)
        sched.answered(t.trial_id)
    pairs_voted = store.votes()[["left_method", "right_method"]].to_numpy()
    per_pair = Counter(H.study.votes.pair_key(a, b) for a, b in pairs_voted)
    assert set(per_pair) == set(sched.pairs) and set(per_pair.values()) == {10}
    assert min(sides.values()) > 5, "both sides are used for every method"
    # a new rater is first shown (pair, image) items they have not answered; concurrent trials spread out
    first = [sched.next("other") for _ in range(6)]
    assert len({H.study.votes.pair_key(t.left, t.right) for t in first}) == 6


def _slide(cfg):
    votes = H.report.preference.load_votes(cfg)
    tables = H.report.preference.preference_tables(votes, cfg.eval.bootstrap_samples, cfg.seed)
    return votes, tables, H.report.preference.preference_slide(cfg, votes, tables).data


def test_preference_slide_with_and_without_votes(tmp_root, smoke_cfg):
    P = H.study.files.paths(smoke_cfg)
    votes, tables, html = _slide(smoke_cfg)
    assert "No votes yet" in html and "make demo" in html
    assert tables == {} and H.report.preference.save_preference_tables(tables, P.tables) == []
    _small_table(H.study.votes.VoteStore(H.study.votes.db_path(smoke_cfg)))
    before = sorted(P.tables.glob("*"))
    votes, tables, html = _slide(smoke_cfg)
    assert "<b>9</b> votes from <b>3</b> rater(s)" in html and "Bradley-Terry" in html and "75% [" in html
    assert sorted(P.tables.glob("*")) == before, "showing the slide writes no file"
    H.report.preference.save_preference_tables(tables, P.tables)
    saved = pd.read_csv(P.tables / "06_human_pairwise.csv")
    assert len(saved) == 6 and saved["n"].sum() == 18
