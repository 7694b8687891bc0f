"""Statistics of the blind preference study: win rates with 95 % Wilson intervals, a Bradley-Terry
ranking with bootstrap intervals, and the tables of notebook 06. The votes come from
:mod:`helpers.study.votes`."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.study.config import Config
from helpers.study.methods import METHODS
from helpers.study.votes import COLUMNS, GROUND_TRUTH, VoteStore, db_path, label

# ---------------------------------------------------------------- statistics
Z95 = 1.959963984540054


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float, float]:
    """(k/n, lo, hi): the Wilson score interval for a proportion (NaNs when n = 0)."""
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    # centre = (p + z^2 / 2n) / (1 + z^2 / n);  half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _wins(votes: pd.DataFrame) -> pd.DataFrame:
    """One row per vote: winner, loser."""
    loser = np.where(votes["choice"] == "left", votes["right_method"], votes["left_method"])
    return pd.DataFrame({"winner": votes["chosen_method"].to_numpy(), "loser": loser})


def methods_in(votes: pd.DataFrame) -> list[str]:
    """Methods that appear in the votes, in the study's order, the ground truth last."""
    seen = set(votes["left_method"]) | set(votes["right_method"])
    order = [*METHODS, GROUND_TRUTH]
    return [m for m in order if m in seen] + sorted(seen - set(order))


def win_rates(votes: pd.DataFrame, z: float = Z95) -> pd.DataFrame:
    """For every method and opponent that met: wins, n, win rate and its Wilson interval."""
    w = _wins(votes)
    rows = []
    for a, b in itertools.permutations(methods_in(votes), 2):
        k = int(((w["winner"] == a) & (w["loser"] == b)).sum())
        n = k + int(((w["winner"] == b) & (w["loser"] == a)).sum())
        if n:
            p, lo, hi = wilson(k, n, z)
            rows.append({"method": a, "opponent": b, "wins": k, "n": n, "win_rate": p, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["method", "opponent", "wins", "n", "win_rate", "lo", "hi"])


def overall_rates(votes: pd.DataFrame, z: float = Z95) -> pd.DataFrame:
    """Each method against all its opponents together: wins, n, win rate, Wilson interval."""
    w = _wins(votes)
    rows = []
    for m in methods_in(votes):
        k = int((w["winner"] == m).sum())
        n = k + int((w["loser"] == m).sum())
        p, lo, hi = wilson(k, n, z)
        rows.append({"method": m, "wins": k, "n": n, "win_rate": p, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["method", "wins", "n", "win_rate", "lo", "hi"])


def win_counts(votes: pd.DataFrame, methods: Sequence[str]) -> np.ndarray:
    """W[i, j] = times methods[i] was chosen over methods[j]."""
    idx = {m: i for i, m in enumerate(methods)}
    W = np.zeros((len(methods), len(methods)))
    for a, b in zip(*_wins(votes).to_numpy().T):
        W[idx[a], idx[b]] += 1
    return W


def bradley_terry(W: np.ndarray, prior: float = 0.5, iters: int = 10_000, tol: float = 1e-12) -> np.ndarray:
    """Bradley-Terry log-strengths theta (mean 0) from a win matrix, P(i beats j) = p_i / (p_i + p_j).

    Hunter's MM update: p_i <- W_i / sum_j n_ij / (p_i + p_j), with W_i the wins of i and n_ij the
    comparisons of i and j, after adding ``prior`` virtual wins each way to every compared pair."""
    W = np.asarray(W, dtype=float).copy()
    compared = (W + W.T) > 0
    W = W + prior * compared
    N = W + W.T                                   # n_ij
    wins = W.sum(1)                               # W_i
    p = np.ones(len(W))
    for _ in range(iters):
        # p_i <- W_i / sum_j n_ij / (p_i + p_j)
        denom = (N / (p[:, None] + p[None, :])).sum(1)
        new = np.where(denom > 0, wins / np.where(denom > 0, denom, 1), p)
        new = new / np.exp(np.log(np.maximum(new, 1e-300)).mean())   # fix the scale: geometric mean 1
        done = np.max(np.abs(np.log(np.maximum(new, 1e-300)) - np.log(np.maximum(p, 1e-300)))) < tol
        p = new
        if done:
            break
    theta = np.log(np.maximum(p, 1e-300))
    return theta - theta.mean()


def ranking(votes: pd.DataFrame, prior: float = 0.5, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Bradley-Terry ranking: log-strength theta (mean 0) with a percentile-bootstrap 95 % interval
    (votes resampled with replacement), and P(beats an average method) = 1 / (1 + exp(-theta))."""
    methods = methods_in(votes)
    theta = bradley_terry(win_counts(votes, methods), prior)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        sample = votes.iloc[rng.integers(0, len(votes), len(votes))]
        boots.append(bradley_terry(win_counts(sample, methods), prior))
    lo, hi = (np.percentile(boots, [2.5, 97.5], axis=0) if boots else (theta * np.nan, theta * np.nan))
    df = pd.DataFrame({"method": methods, "theta": theta, "lo": lo, "hi": hi,
                       "p_beats_average": 1 / (1 + np.exp(-theta))})
    df = df.sort_values("theta", ascending=False, kind="stable").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df


def counts(votes: pd.DataFrame) -> dict:
    return {"votes": len(votes), "raters": int(votes["rater"].nunique()) if len(votes) else 0,
            "images": int(votes["image"].nunique()) if len(votes) else 0}


# ---------------------------------------------------------------- the slide of notebook 06
HOW_TO_COLLECT = """No votes yet. To collect them, start the demo (`make demo PRESET={preset}` or notebook 07)
and open the tab **Which looks real?**:
each rater types an id (or gets a random one) and, for each masked test image, picks which of two
completions looks like the real photo. The pairs (two methods, or one method and the real photo)
are shown in random order and drawn so every method pair gets as many votes. Votes land in
`reports/{preset}/{db}`; run this notebook again to see the win rates, their 95 % intervals and a \
Bradley-Terry ranking."""


def _fmt_rate(p, lo, hi) -> str:
    return "n/a" if p != p else f"{p:.0%} [{lo:.0%}, {hi:.0%}]"


def preference_tables(votes: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The slide's tables, formatted for people (overall win rates, the pairwise matrix, the ranking),
    and the numbers behind them (``raw_*``). {} without votes."""
    if votes.empty:
        return {}
    overall = overall_rates(votes)
    overall_fmt = pd.DataFrame({"method": [label(m) for m in overall["method"]], "votes": overall["n"],
                                "chosen as real": overall["wins"],
                                "win rate [95 % Wilson]": [_fmt_rate(*r) for r in
                                                           overall[["win_rate", "lo", "hi"]].to_numpy()]})
    pw = win_rates(votes)
    methods = methods_in(votes)
    matrix = pd.DataFrame("-", index=[label(m) for m in methods], columns=[label(m) for m in methods])
    for r in pw.itertuples():
        matrix.loc[label(r.method), label(r.opponent)] = f"{_fmt_rate(r.win_rate, r.lo, r.hi)} (n={r.n})"
    matrix.index.name = "row beats column"
    rank = ranking(votes, n_boot=n_boot, seed=seed)
    rank_fmt = pd.DataFrame({"rank": rank["rank"], "method": [label(m) for m in rank["method"]],
                             "Bradley-Terry log-strength [95 % bootstrap]":
                                 [f"{t:+.2f} [{lo:+.2f}, {hi:+.2f}]" for t, lo, hi in
                                  rank[["theta", "lo", "hi"]].to_numpy()],
                             "P(beats an average method)": [f"{v:.0%}" for v in rank["p_beats_average"]]})
    return {"overall": overall_fmt, "pairwise": matrix, "ranking": rank_fmt, "raw_pairwise": pw,
            "raw_ranking": rank, "raw_overall": overall}


# ---------------------------------------------------------------- notebook 06: read, save, show
def load_votes(cfg: Config, root: Path | None = None) -> pd.DataFrame:
    """Every vote the demo stored for this preset (an empty table when there is no vote store yet)."""
    path = db_path(cfg, root)
    return VoteStore(path).votes() if path.is_file() else pd.DataFrame(columns=COLUMNS)


def save_preference_tables(tables: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    """The numbers of :func:`preference_tables` as ``folder/06_human_{overall,pairwise,ranking}.csv``
    (nothing without votes). Returns the files written."""
    out = []
    for key in ("raw_overall", "raw_pairwise", "raw_ranking"):
        if key in tables:
            out.append(Path(folder) / f"06_human_{key.removeprefix('raw_')}.csv")
            tables[key].to_csv(out[-1], index=False)
    return out


def preference_slide(cfg: Config, votes: pd.DataFrame, tables: dict[str, pd.DataFrame]):
    """Notebook 06's "human preference" slide, display only: with votes, their counts, the win rates
    with 95 % intervals and the Bradley-Terry ranking of :func:`preference_tables`; without, how to
    collect them. Returns an IPython HTML object."""
    from IPython.display import HTML

    return HTML(_slide_html(cfg, votes, tables))


def _slide_html(cfg: Config, votes: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> str:
    from html import escape

    if votes.empty:
        text = HOW_TO_COLLECT.format(preset=cfg.preset, db=db_path(cfg).name)
        return "<p>" + escape(text).replace("`", "").replace("**", "").replace("\n", " ") + "</p>"
    c = counts(votes)
    head = (f"<p><b>{c['votes']}</b> votes from <b>{c['raters']}</b> rater(s) on <b>{c['images']}</b> test "
            f"image(s) (blind two-alternative choice: which completion looks real?). Win rate = how often "
            f"a method's completion was taken for the real photo against the other side of its pairs.</p>")
    smoke = ("<p><i>Smoke preset: tiny random models, the completions are noise; these votes test the "
             "pipeline, not the methods.</i></p>" if cfg.preset == "smoke" else "")
    with pd.option_context("display.max_colwidth", None):
        body = "".join(f"<h4>{escape(t)}</h4>" + tables[k].to_html(index=k == "pairwise", escape=True)
                       for t, k in (("Win rate against all opponents", "overall"),
                                    ("Pairwise: how often the row was chosen over the column", "pairwise"),
                                    ("Bradley-Terry ranking", "ranking")))
    return head + smoke + body
