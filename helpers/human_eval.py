"""The blind human preference study ("Which looks real?"): the vote store, the pair schedule and
the statistics. Votes are collected by the demo app (:mod:`helpers.demo`, notebook 07, ``make
demo``); notebook 06 presents them on its "human preference" slide.

One trial shows a masked test image and two completions of it, from two methods or from one
method and the real photo (``ground_truth``), in random left/right order; the rater picks the one
that looks real. Every vote is one row of ``reports/<preset>/human_eval.sqlite``::

    time (UTC)  rater  image  left_method  right_method  choice (left|right)  chosen_method  response_ms  trial_id

Writes are SQLite transactions in WAL mode with ``synchronous=FULL``: a vote is on disk when
:meth:`VoteStore.add` returns, so concurrent raters and a killed server lose nothing answered.

Statistics (all from the vote table, nothing else):

* win rate of each method against each opponent, k wins in n votes, with the Wilson score
  interval (Wilson 1927): centre (p + z^2/2n) / (1 + z^2/n), half-width
  z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), z = 1.96 for 95 %;
* a Bradley-Terry ranking (Bradley & Terry 1952): P(i beats j) = p_i / (p_i + p_j), fitted by
  Hunter's (2004) MM iteration, with ``prior`` virtual wins each way on every compared pair so a
  method that never lost keeps a finite strength; percentile-bootstrap 95 % intervals over votes.
"""
from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import data as D
from .common import paths
from .config import Config

DB_NAME = "human_eval.sqlite"
GROUND_TRUTH = "ground_truth"
LABELS = {**D.SHORT_LABELS, GROUND_TRUTH: "real photo"}
CHOICES = ("left", "right")
COLUMNS = ["id", "time", "rater", "image", "left_method", "right_method", "choice", "chosen_method",
           "response_ms", "trial_id"]
SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time          TEXT NOT NULL,                -- UTC, ISO 8601, when the vote was recorded
    rater         TEXT NOT NULL,                -- the id the rater typed, or a random one
    image         TEXT NOT NULL,                -- test image name (data/<preset>/images/test/<image>.png)
    left_method   TEXT NOT NULL,                -- method shown on the left (or 'ground_truth')
    right_method  TEXT NOT NULL,
    choice        TEXT NOT NULL CHECK (choice IN ('left', 'right')),
    chosen_method TEXT NOT NULL,                -- the method the rater took for the real photo
    response_ms   REAL,                         -- from the server sending the pair to the vote arriving
    trial_id      TEXT UNIQUE                   -- one vote per shown pair (a double click counts once)
);
CREATE INDEX IF NOT EXISTS votes_pair ON votes (left_method, right_method);
"""


def db_path(cfg: Config, root: Path | None = None) -> Path:
    """reports/<preset>/human_eval.sqlite."""
    return paths(cfg, root).reports / DB_NAME


def label(method: str) -> str:
    return LABELS.get(method, method)


# ---------------------------------------------------------------- the vote store
class VoteStore:
    """The votes in one SQLite file. Every call opens its own connection, so any thread (or
    process) may call it; each vote is one ``BEGIN IMMEDIATE ... COMMIT`` transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")      # readers never block the writer; kept in the file
            conn.executescript(SCHEMA)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        # autocommit mode: transactions are explicit; wait up to 30 s for another writer
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")          # COMMIT returns once the vote is on disk
        return conn

    def add(self, rater: str, image: str, left_method: str, right_method: str, choice: str,
            response_ms: float | None = None, trial_id: str | None = None, when: str | None = None) -> bool:
        """Record one vote; returns False when ``trial_id`` was already answered (not counted twice)."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be 'left' or 'right', got {choice!r}")
        if not str(rater).strip():
            raise ValueError("a vote needs a rater id")
        if left_method == right_method:
            raise ValueError(f"a trial compares two different methods, got {left_method!r} twice")
        chosen = left_method if choice == "left" else right_method
        when = when or dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "INSERT OR IGNORE INTO votes (time, rater, image, left_method, right_method, choice, chosen_method,"
                " response_ms, trial_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (when, str(rater).strip(), image, left_method, right_method, choice, chosen, response_ms, trial_id))
            conn.execute("COMMIT")
            return cur.rowcount == 1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def votes(self) -> pd.DataFrame:
        """Every vote, oldest first, as a DataFrame with :data:`COLUMNS`."""
        conn = self._connect()
        try:
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM votes ORDER BY id").fetchall()
        finally:
            conn.close()
        return pd.DataFrame(rows, columns=COLUMNS)

    def __len__(self) -> int:
        conn = self._connect()
        try:
            return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
        finally:
            conn.close()

    def pair_image_counts(self) -> Counter:
        """{(sorted method pair, image): votes}."""
        conn = self._connect()
        try:
            rows = conn.execute("SELECT left_method, right_method, image, COUNT(*) FROM votes "
                                "GROUP BY left_method, right_method, image").fetchall()
        finally:
            conn.close()
        out: Counter = Counter()
        for a, b, image, n in rows:
            out[(pair_key(a, b), image)] += n
        return out

    def seen_by(self, rater: str) -> set:
        """{(sorted method pair, image)} this rater has already answered."""
        conn = self._connect()
        try:
            rows = conn.execute("SELECT left_method, right_method, image FROM votes WHERE rater = ?",
                                (rater,)).fetchall()
        finally:
            conn.close()
        return {(pair_key(a, b), image) for a, b, image in rows}


def pair_key(a: str, b: str) -> tuple[str, str]:
    return tuple(sorted((a, b)))


# ---------------------------------------------------------------- which pair to show next
@dataclass
class Trial:
    """One shown pair; kept on the server (the page never learns which method is which)."""
    image: str
    left: str
    right: str
    trial_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    shown_at: float = field(default_factory=time.time)


class PairScheduler:
    """Draws trials so every method pair is covered evenly.

    ``candidates`` maps a test image to the methods that have a completion of it (the ground
    truth included). The next trial takes the method pair with the fewest votes (plus trials
    handed out in the last ``pending_s`` seconds and not yet answered: concurrent raters), then,
    among the images both methods have, one this rater has not answered, with the fewest votes
    for that pair; ties are broken at random, and the left/right order is random."""

    def __init__(self, candidates: dict[str, Sequence[str]], store: VoteStore, seed: int | None = None,
                 pending_s: float = 600.0):
        self.candidates = {img: sorted(set(ms)) for img, ms in candidates.items() if len(set(ms)) >= 2}
        self.store, self.pending_s = store, pending_s
        self.rng = random.Random(seed)
        self.pending: dict[str, tuple[tuple[str, str], str, float]] = {}
        self.lock = threading.Lock()
        self.images_of: dict[tuple[str, str], list[str]] = {}
        for img, ms in sorted(self.candidates.items()):
            for a, b in itertools.combinations(ms, 2):
                self.images_of.setdefault((a, b), []).append(img)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return sorted(self.images_of)

    def next(self, rater: str | None = None) -> Trial | None:
        """The next trial, or None when no image has two completions."""
        if not self.images_of:
            return None
        with self.lock:
            now = time.time()
            self.pending = {k: v for k, v in self.pending.items() if now - v[2] < self.pending_s}
            counts = self.store.pair_image_counts()
            for pair, image, _ in self.pending.values():
                counts[(pair, image)] += 1
            seen = self.store.seen_by(rater) if rater else set()
            per_pair = Counter()
            for (pair, _), n in counts.items():
                per_pair[pair] += n
            # 1. the least-covered method pair
            low = min(per_pair[p] for p in self.pairs)
            pair = self.rng.choice([p for p in self.pairs if per_pair[p] == low])
            # 2. an image of it: unseen by this rater first, then the least voted
            images = self.images_of[pair]
            score = {img: ((pair, img) in seen, counts[(pair, img)]) for img in images}
            best = min(score.values())
            image = self.rng.choice([img for img in images if score[img] == best])
            # 3. random order on screen
            left, right = pair if self.rng.random() < 0.5 else pair[::-1]
            trial = Trial(image, left, right)
            self.pending[trial.trial_id] = (pair, image, now)
            return trial

    def answered(self, trial_id: str) -> None:
        with self.lock:
            self.pending.pop(trial_id, None)


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
    order = [*D.METHODS, GROUND_TRUTH]
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
`reports/{preset}/{db}`; run this notebook again to see the win rates, their 95 % intervals and a Bradley-Terry ranking."""


def _fmt_rate(p, lo, hi) -> str:
    return "n/a" if p != p else f"{p:.0%} [{lo:.0%}, {hi:.0%}]"


def preference_tables(votes: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The slide's tables, formatted for people: overall win rates, the pairwise matrix, the ranking."""
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


def preference_slide(cfg: Config, root: Path | None = None):
    """Notebook 06's "human preference" slide: with votes, their counts, the win rates with 95 %
    intervals and the Bradley-Terry ranking (also saved to tables/06_human_*.csv); without, how to
    collect them. Returns an IPython HTML object."""
    from IPython.display import HTML

    P = paths(cfg, root)
    path = db_path(cfg, root)
    votes = VoteStore(path).votes() if path.is_file() else pd.DataFrame(columns=COLUMNS)
    return HTML(_slide_html(cfg, votes, path, P))


def _slide_html(cfg: Config, votes: pd.DataFrame, path: Path, P) -> str:
    from html import escape

    if votes.empty:
        text = HOW_TO_COLLECT.format(preset=cfg.preset, db=path.name)
        return "<p>" + escape(text).replace("`", "").replace("**", "").replace("\n", " ") + "</p>"
    c = counts(votes)
    tables = preference_tables(votes, cfg.eval.bootstrap_samples, cfg.seed)
    for key in ("raw_overall", "raw_pairwise", "raw_ranking"):
        tables[key].to_csv(P.tables / f"06_human_{key.removeprefix('raw_')}.csv", index=False)
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
