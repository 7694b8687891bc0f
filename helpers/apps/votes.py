"""The vote store of the blind preference study ("Which looks real?"): one SQLite row per vote,
written in a transaction (concurrent raters and a killed server lose nothing answered), and the
scheduler that gives every method pair as many votes. The statistics of the votes are in
:mod:`helpers.report.preference`."""
from __future__ import annotations

import datetime as dt
import itertools
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from helpers.study.config import Config
from helpers.study.files import paths
from helpers.study.methods import short_label

DB_NAME = "human_eval.sqlite"


GROUND_TRUTH = "ground_truth"


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
    return "real photo" if method == GROUND_TRUTH else short_label(method)


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
