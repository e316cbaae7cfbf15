"""Diverse beam search (Vijayakumar et al., 2016: groups of beams with a Hamming diversity penalty) as
pure logic over per-step log-probabilities, so engines only run the model and reorder their caches.

transformers 5 moved its group beam search (``num_beam_groups`` / ``diversity_penalty``) to a Hub
repository (transformers-community/group-beam-search) that no machine of ours can reach; BETag's
diverse multi-beam generation needs it, so the algorithm lives here.

Groups are searched in order at every step; group g's scores are lowered by ``diversity_penalty``
times the number of beams of groups 0..g-1 that chose the same token at this step. Within a group it
is ordinary beam search with length-normalised finished hypotheses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Group:
    # Live beams: (generated tokens, summed log-prob); finished: (normalised score, tokens).
    beams: list[tuple[list[int], float]]
    finished: list[tuple[float, list[int]]] = field(default_factory=list)
    done: bool = False


class DiverseBeamSearch:
    """State of one prompt's search. Rows are ``group * beams_per_group + beam``.

    ``step(logprobs)`` takes the next-token log-probabilities of every row (``num_beams x vocab``;
    rows of a group with fewer live beams, or of a finished group, are ignored) and returns, for every
    row of the next step, the row it continues and the token it appends. The first call, right after
    the prompt, may pass a single row: every group then starts from it.
    """

    def __init__(
        self,
        num_beams: int,
        num_groups: int,
        end_ids: Sequence[int],
        diversity_penalty: float = 1.0,
        length_penalty: float = 1.0,
        pad_id: int = 0,
    ):
        if num_beams < 1 or num_groups < 1 or num_beams % num_groups:
            raise ValueError(
                f"num_beams ({num_beams}) must be a positive multiple of num_beam_groups ({num_groups})"
            )
        self.per_group = num_beams // num_groups
        self.num_beams = num_beams
        self.end_ids = set(end_ids)
        self.penalty = diversity_penalty
        self.length_penalty = length_penalty
        self.pad_id = pad_id
        self.groups = [_Group(beams=[([], 0.0)]) for _ in range(num_groups)]
        self.steps = 0

    @property
    def done(self) -> bool:
        return all(g.done for g in self.groups)

    def _normalised(self, score: float, length: int) -> float:
        return score / (max(length, 1) ** self.length_penalty)

    def step(self, logprobs: np.ndarray) -> tuple[list[int], list[int]]:
        logprobs = np.asarray(logprobs, dtype=np.float64)
        first = logprobs.shape[0] == 1
        chosen_now: Counter[int] = Counter()
        sources: list[int] = []
        tokens: list[int] = []
        k = self.per_group
        for g, group in enumerate(self.groups):
            base = g * k
            if group.done:
                sources += [base + b for b in range(k)]
                tokens += [self.pad_id] * k
                continue
            rows = [0 if first else base + b for b in range(len(group.beams))]
            scores = logprobs[rows] + np.array([s for _, s in group.beams])[:, None]
            if chosen_now and self.penalty:
                penalised = np.fromiter(chosen_now.keys(), dtype=np.int64)
                counts = np.fromiter(chosen_now.values(), dtype=np.float64)
                scores[:, penalised] -= self.penalty * counts
            flat = scores.ravel()
            take = min(2 * k, flat.size)
            top = np.argpartition(-flat, take - 1)[:take]
            top = top[np.argsort(-flat[top], kind="stable")]
            live: list[tuple[list[int], float, int]] = []
            for rank, index in enumerate(top.tolist()):
                beam, token = divmod(index, scores.shape[1])
                prefix, _ = group.beams[beam]
                # The diversity penalty steers the choice; the beam keeps its true log-probability.
                true_score = group.beams[beam][1] + float(logprobs[rows[beam], token])
                if token in self.end_ids:
                    # As in transformers: an end token counts only when it ranks among the top k.
                    if rank < k:
                        group.finished.append((self._normalised(true_score, len(prefix) + 1), prefix))
                    continue
                live.append(([*prefix, token], true_score, rows[beam]))
                if len(live) == k:
                    break
            group.finished.sort(key=lambda f: -f[0])
            del group.finished[k:]
            group.beams = [(t, s) for t, s, _ in live]
            length = self.steps + 1
            if not group.beams:
                group.done = True
            elif len(group.finished) >= k:
                best_live = max((s for _, s in group.beams), default=-math.inf)
                group.done = group.finished[-1][0] >= self._normalised(best_live, length)
            for t, _, _ in live:
                chosen_now[t[-1]] += 1
            while len(live) < k:  # fewer live beams than slots: pad with a dead row
                live.append(([self.pad_id], -math.inf, base))
            sources += [source for _, _, source in live]
            tokens += [t[-1] for t, _, _ in live]
        self.steps += 1
        return sources, tokens

    def results(self) -> list[list[list[int]]]:
        """Per group, its best ``beams_per_group`` hypotheses (token lists), best first."""
        out = []
        for group in self.groups:
            pool = list(group.finished)
            pool += [(self._normalised(s, len(t)), t) for t, s in group.beams if s > -math.inf]
            pool.sort(key=lambda f: -f[0])
            out.append([t for _, t in pool[: self.per_group]])
        return out
