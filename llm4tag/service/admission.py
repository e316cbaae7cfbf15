"""Deadline-aware admission: whether a tag request can be answered within its deadline, decided when
it arrives, so that a client gets a fast 503 it can retry elsewhere instead of a place in a queue that
will not reach it in time.

The LLM stage (generation and its judgments) is the whole cost of an item that reaches it: on every
configuration we ship, encoding, recall and ranking take milliseconds where the LLM takes seconds. So the
estimate is

    wait = (LLM items ahead + this request's expected LLM items) / LLM capacity + other stages' time

* **capacity** (items/s) is the sum over the Generator replicas that reported in the last
  ``replica_ttl_s`` of 1 / their recent seconds per item (each replica measures its own batches'
  compute time, not the time its requests queued), so a replica added by autoscaling counts once it
  has answered, and one that went away stops counting;
* **items ahead** is the larger of the items this ingress admitted and has not seen through the LLM,
  and the queue the replicas last reported (which also holds other ingress replicas' work), less what
  each replica has computed since at its pace (a report is not refreshed while a replica gets no work);
* a request's **expected LLM items** are its items times the recent share that routing sent to the LLM
  (1 until measured: routing off sends every item);
* **other stages' time** is the recent time of a request outside the LLM.

A request is admitted when the estimate is within ``headroom`` (0.8) of its budget. The items of one
LLM batch finish together, so an estimate a little short pushes a whole batch past the deadline at
once: a burst of 60 one-item requests at a 10 s deadline on the 2-core CPU config (tiny model)
admitted 12 on the bare estimate, and 10 of them ran to 10.15 s, past it.

Before any replica has reported (a cold start, or LLM stages scaled to zero) the capacity is unknown:
one expected LLM item per LLM replica is let in (or one request, when nothing is ahead), and the
first answers measure it. (Letting a batch's worth per replica in before any measure admitted bursts
that the first, slow batches could not finish in time.) The share routed to the LLM starts from the
store's route plan (1, or 0 when it sends nothing), and again when the plan changes, until requests
measure it. Pure logic with an injectable clock: the ingress
holds one per replica and feeds it what the Generator replicas report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llm4tag.service.http_schema import RequestError

DEADLINE_HEADER = "X-Deadline-Ms"


def request_deadline_s(header: str | None, cap_s: float) -> float:
    """The request's time budget in seconds: its ``X-Deadline-Ms`` (milliseconds, a positive integer),
    capped by the service's ``deadline_s``; without the header, ``deadline_s``."""
    if header is None:
        return cap_s
    text = header.strip()
    if not text.isdigit() or int(text) <= 0:
        raise RequestError(
            f"is {header[:40]!r}: give a positive integer of milliseconds", DEADLINE_HEADER, 400
        )
    return min(int(text) / 1000, cap_s)


@dataclass
class ReplicaLoad:
    """What one Generator replica reported with its last batch."""

    item_s: float  # recent compute seconds per item (its batches' time / their sizes)
    queued: int  # items waiting in its batcher then
    at: float  # when it was received (the admission clock)


@dataclass
class Verdict:
    admitted: bool
    wait_s: float  # the estimated time to answer the request
    retry_after_s: int  # when capacity is expected to free up (for a refusal's Retry-After)
    # The request alone, with nothing ahead of it, would not finish in time: a retry cannot help
    # (fewer items or a longer deadline can).
    too_large: bool = False
    alone_s: float = math.nan  # the estimated time of the request alone


@dataclass
class Admission:
    """One ingress replica's admission control (see the module's docstring)."""

    llm_replicas: int = 1  # LLM replicas the app starts with (0: scaled to zero): one request each, cold
    replica_ttl_s: float = 60.0
    smoothing: float = 0.3  # weight of the newest measure in the running averages
    clock: Callable[[], float] = time.monotonic
    replicas: dict[str, ReplicaLoad] = field(default_factory=dict)
    pending: float = 0.0  # expected LLM items admitted here and not yet through the LLM
    llm_share: float = 1.0
    other_s: float = 0.0
    headroom: float = 0.8  # the share of a budget an estimate may fill (see the module's docstring)

    def live(self) -> list[tuple[ReplicaLoad, float]]:
        """The replicas heard from recently that have measured their pace, with the seconds since."""
        now = self.clock()
        return [
            (r, now - r.at)
            for r in self.replicas.values()
            if now - r.at <= self.replica_ttl_s and r.item_s > 0
        ]

    def capacity(self) -> float:
        """LLM items per second, over the replicas heard from recently (0: none yet)."""
        return sum(1.0 / r.item_s for r, _ in self.live())

    def ahead(self) -> float:
        # What each replica reported queued, less what it has computed since at its pace.
        reported = sum(max(0.0, r.queued - since / r.item_s) for r, since in self.live())
        return max(self.pending, reported)

    def expected_llm_items(self, items: int) -> float:
        return items * self.llm_share

    def decide(self, items: int, budget_s: float) -> Verdict:
        """Whether a request of ``items`` items can be answered within ``budget_s`` seconds."""
        need = self.expected_llm_items(items)
        ahead = self.ahead()
        capacity = self.capacity()
        if need == 0:
            return Verdict(self.other_s <= budget_s, self.other_s, 1)
        if capacity == 0:
            # Nothing measured yet: one expected item per replica (at least one) is let in, to measure.
            room = max(1, self.llm_replicas, len(self.replicas))
            return Verdict(self.pending + need <= room or self.pending == 0, math.nan, 1)
        wait = (ahead + need) / capacity + self.other_s
        retry = max(1, math.ceil(ahead / capacity))
        alone = need / capacity + self.other_s
        room = budget_s * self.headroom
        return Verdict(wait <= room, wait, retry, too_large=alone > room, alone_s=alone)

    def admit(self, items: int) -> float:
        """Count an admitted request's expected LLM items as ahead of later ones; the caller gives the
        returned amount back to :meth:`release` when its items are through the LLM (or dropped)."""
        need = self.expected_llm_items(items)
        self.pending += need
        return need

    def release(self, amount: float) -> None:
        self.pending = max(0.0, self.pending - amount)

    def plan_changed(self, sends_items: bool) -> None:
        """The store's route plan (at start, or a new one): until requests measure it, every item is
        expected to reach the LLM (none where the plan sends nothing)."""
        self.llm_share = 1.0 if sends_items else 0.0

    def observe_replica(self, replica: str, item_s: float, queued: int) -> None:
        if not (item_s > 0 and math.isfinite(item_s)):
            return
        previous = self.replicas.get(replica)
        if previous is not None:
            item_s = self.smoothing * item_s + (1 - self.smoothing) * previous.item_s
        self.replicas[replica] = ReplicaLoad(item_s, max(0, int(queued)), self.clock())

    def observe_request(self, items: int, sent_to_llm: int, other_s: float) -> None:
        """A finished request: how many of its items the LLM took and its time outside the LLM."""
        if items > 0:
            share = sent_to_llm / items
            self.llm_share = self.smoothing * share + (1 - self.smoothing) * self.llm_share
        if other_s >= 0 and math.isfinite(other_s):
            self.other_s = self.smoothing * other_s + (1 - self.smoothing) * self.other_s

    def describe(self) -> dict:
        capacity = self.capacity()
        return {
            "llm_items_per_s": round(capacity, 4),
            "llm_replicas": len(self.replicas),
            "items_ahead": round(self.ahead(), 2),
            "llm_share": round(self.llm_share, 3),
            "other_stages_s": round(self.other_s, 4),
        }
