"""The demo's pair scheduler of the blind preference study: which pair of completions to show next,
so that every method pair gets as many votes. The votes themselves (schema and storage) are the
study's :mod:`helpers.study.votes`."""
from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from helpers.study.votes import VoteStore


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
