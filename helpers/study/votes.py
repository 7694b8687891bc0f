"""The vote store of the blind preference study ("Which looks real?"): its schema and its storage,
one SQLite row per vote, written in a transaction (concurrent raters and a killed server lose
nothing answered). The demo writes it (its pair scheduler is :mod:`helpers.apps.votes`), the
statistics of the votes (:mod:`helpers.report.preference`) read it: both sit above the study."""
from __future__ import annotations

import datetime as dt
import sqlite3
from collections import Counter
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
