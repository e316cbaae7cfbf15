"""Deadline-aware admission (llm4tag/service/admission.py): pure logic on a fake clock."""

from __future__ import annotations

import math

import pytest

from llm4tag.service.admission import Admission, request_deadline_s
from llm4tag.service.http_schema import RequestError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(llm_replicas: int = 1) -> tuple[Admission, Clock]:
    clock = Clock()
    return Admission(llm_replicas=llm_replicas, clock=clock), clock


def test_the_deadline_header_may_only_shorten_the_services_deadline():
    assert request_deadline_s(None, 30) == 30
    assert request_deadline_s("2500", 30) == 2.5
    assert request_deadline_s(" 90000 ", 30) == 30
    for bad in ("", "0", "-5", "1.5", "soon", "1e3"):
        with pytest.raises(RequestError) as caught:
            request_deadline_s(bad, 30)
        assert caught.value.field == "X-Deadline-Ms" and caught.value.status == 400


def test_before_any_measure_one_item_per_replica_is_let_in():
    control, _ = admission(llm_replicas=2)
    assert control.capacity() == 0
    assert control.decide(8, 30).admitted  # nothing ahead: a request is let in to measure
    first = control.admit(8)
    assert not control.decide(1, 30).admitted  # 8 items ahead already
    control.release(first)
    one = control.admit(1)
    assert control.decide(1, 30).admitted  # the second replica's
    two = control.admit(1)
    refused = control.decide(1, 30)
    assert not refused.admitted and refused.retry_after_s >= 1  # a cold burst waits for a measure
    control.release(one)
    assert control.decide(1, 30).admitted  # a replica is free again
    control.release(two)
    assert control.pending == 0
    # Scaled to zero (no replica yet): one request starts one and waits for it.
    cold, _ = admission(llm_replicas=0)
    cold.admit(1)
    assert not cold.decide(1, 30).admitted
    # A plan that sends nothing to the LLM: nothing is expected for it, every request goes in.
    ranker, _ = admission(llm_replicas=0)
    ranker.plan_changed(sends_items=False)
    for _ in range(50):
        assert ranker.decide(4, 30).admitted
        ranker.admit(4)


def test_a_new_route_plan_is_expected_to_send_every_item_until_measured():
    control, _ = admission()
    control.observe_replica("g1", item_s=1.0, queued=0)
    for _ in range(30):  # the ranker settled every item
        control.observe_request(items=4, sent_to_llm=0, other_s=0.0)
    assert control.decide(40, 10).admitted  # nothing expected for the LLM
    control.plan_changed(sends_items=True)  # a refit routes items to the LLM now
    assert not control.decide(40, 10).admitted  # 40 items at 1 item/s: not within 10 s
    control.plan_changed(sends_items=False)
    assert control.decide(40, 10).admitted


def test_the_wait_is_items_ahead_over_the_replicas_capacity():
    control, clock = admission()
    control.observe_replica("g1", item_s=2.0, queued=0)
    control.observe_replica("g2", item_s=2.0, queued=0)
    assert control.capacity() == pytest.approx(1.0)  # two replicas, 0.5 item/s each
    control.admit(10)
    verdict = control.decide(1, 30)
    assert verdict.admitted and verdict.wait_s == pytest.approx(11.0)
    verdict = control.decide(1, 10)
    assert not verdict.admitted and verdict.retry_after_s == 10  # when the 10 ahead are through
    assert not verdict.too_large  # it would fit once those are through: a retry can succeed
    alone = control.decide(12, 10)
    assert alone.too_large and alone.alone_s == pytest.approx(12.0)  # no retry fits a 10 s deadline
    # Work queued at the replicas by other ingress replicas counts too,
    control.observe_replica("g1", item_s=2.0, queued=30)
    assert control.ahead() == 30
    assert not control.decide(1, 30).admitted
    # less what the replica has computed since it reported (no new report comes while it gets no work).
    clock.now += 40
    assert control.ahead() == pytest.approx(10)
    clock.now += 30
    assert control.ahead() == 10  # the items this ingress admitted


def test_a_replica_that_stopped_reporting_stops_counting():
    control, clock = admission()
    control.observe_replica("g1", item_s=1.0, queued=0)
    clock.now += 30
    control.observe_replica("g2", item_s=1.0, queued=0)
    assert control.capacity() == pytest.approx(2.0)
    clock.now += 45  # g1 last heard 75 s ago, past the 60 s window
    assert control.capacity() == pytest.approx(1.0)


def test_routing_share_and_other_stages_enter_the_estimate():
    control, _ = admission()
    control.observe_replica("g1", item_s=1.0, queued=0)
    for _ in range(30):  # the ranker settles every item: nothing reaches the LLM
        control.observe_request(items=4, sent_to_llm=0, other_s=0.2)
    assert control.llm_share < 0.01 and control.other_s == pytest.approx(0.2, rel=0.01)
    control.admit(100)  # mostly expected to be settled by the ranker
    assert control.decide(4, 1.0).admitted
    control.observe_request(items=4, sent_to_llm=4, other_s=0.2)  # routing off: every item
    assert control.llm_share > 0.29


def test_bad_measures_are_ignored():
    control, _ = admission()
    for bad in (0.0, -1.0, math.nan, math.inf):
        control.observe_replica("g", item_s=bad, queued=3)
    assert control.replicas == {}
    control.release(5)
    assert control.pending == 0


def test_a_replica_that_has_not_measured_its_pace_counts_for_neither_capacity_nor_queue():
    control, _ = admission()
    control.observe_replica("r1", item_s=0.0, queued=5)  # answered before its first timed batch
    assert control.capacity() == 0 and control.ahead() == 0
    control.observe_replica("r2", item_s=2.0, queued=3)
    assert control.capacity() == pytest.approx(0.5) and control.ahead() == pytest.approx(3)


def test_a_burst_is_admitted_up_to_the_headroom_of_its_deadline():
    # The items of one LLM batch finish together: an estimate a little short would push the whole
    # batch past the deadline, so only what fits in 80% of it is admitted.
    control, _ = admission()
    control.observe_replica("g1", item_s=2.0, queued=0)
    control.observe_replica("g2", item_s=2.0, queued=0)  # 1 item/s
    admitted = 0
    for _ in range(60):  # each decided and, if admitted, counted before the next arrives
        if control.decide(1, 10).admitted:
            control.admit(1)
            admitted += 1
    assert admitted == 8
    bare = Admission(headroom=1.0, clock=control.clock, replicas=dict(control.replicas))
    assert bare.capacity() == 1.0 and bare.decide(10, 10).admitted  # the bare estimate: 10 s of 10
    assert control.decide(9, 10).too_large  # 9 s alone: past 80% of 10 s, so no retry can fit
