"""The review UI and its API, mixed into the ingress: the UI's files under /ui/, the review queue, the
knowledge behind a tagging (samples and snippets by id) and the vocabulary with its use counts.

GET  /ui/                       the web UI (Tag, Review queue, Vocabulary; plain HTML/JS/CSS)
GET  /v1/review/queue           entries by state (pending: most uncertain first), counts, band
GET  /v1/review/entries/{n}     one entry
POST /v1/feedback + header X-Review-Entry: n   decides entry n (ingress.py; llm4tag/service/review_queue.py)
GET  /v1/knowledge?samples=&snippets=          retrieved samples and snippets by id
GET  /v1/vocabulary?q=&limit=&offset=          tags with description, URI, hierarchy, stored-item count
                                               (none: the tag is new)

The queue logic is llm4tag/service/review_queue.py; here are the routes and the replica's desk
(ReviewDesk: the queue and its two hooks, queueing uncertain tags of a tagging and letting a feedback
write decide an entry).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from deployments.route_kit import LIMIT_BOUNDS, QUERY_BOUNDS, Replica, refusals
from llm4tag.service.refusal import Refusal
from llm4tag.service.review_queue import (
    MAX_ROW_NUMBER,
    REVIEW_HEADER,
    REVIEWER_HEADER,
    STATES,
    ReviewError,
    ReviewQueue,
    ReviewSettings,
    decision_of,
    uncertain_tags,
)
from llm4tag.synthetic import SyntheticExamples

log = logging.getLogger("ray.serve")
# The reviewer of a decision made without an X-Reviewer header where no keys are checked: the decision
# was still made in the review queue, by someone who looked at the entry.
UNNAMED_REVIEWER = "review-queue"
router = APIRouter()
UI_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
REVIEWER = re.compile(r"^[^\x00-\x1f]{1,100}\Z")


def ui_folder() -> Path:
    return Path(str(resources.files("deployments") / "ui"))


class ReviewDesk:
    """The review queue of one ingress replica, and its two hooks into tagging and feedback: queue the
    uncertain tags of a tagging, and let a feedback write decide an entry. ``ingress``: the replica's
    public API (write_feedback, parse_feedback)."""

    def __init__(self, ingress, store: str, settings: ReviewSettings, cut: float):
        self.ingress = ingress
        self.settings = settings
        self.band = settings.band_around(cut)
        self.cut = cut
        self.queue = ReviewQueue(settings.queue_path(store))

    async def enqueue(self, items: list, rows: list[dict], origin: str) -> None:
        """Queue the uncertain tags of a tagging (rows carry ``dropped``)."""
        if not self.settings.online:
            return
        found = [
            c
            for item, row in zip(items, rows, strict=True)
            for c in uncertain_tags(row, item.text, self.band, origin, dict(item.extra))
        ]
        if found:
            await asyncio.to_thread(self.queue.add, found)

    async def decided(self, request: Request, parsed, sender: str | None) -> Any:
        """Write the feedback (durably), sent by ``sender`` (the key's name); with an
        ``X-Review-Entry`` header the feedback decides that entry: recorded before the writes,
        finished after them, released if they fail. Another reviewer's decision on the same entry gets
        a 409 naming it. Only such a decision is reviewed feedback: its reviewer is the X-Reviewer
        header's, else the key's name."""
        header = request.headers.get(REVIEW_HEADER)
        if header is None:
            return await self.ingress.write_feedback(parsed, sender=sender)
        if not header.strip().isdigit():
            raise ReviewError(f"must be an entry number, got {header!r}", REVIEW_HEADER, 422)
        if len(parsed.items) != 1:
            raise ReviewError("feedback that decides a review entry carries exactly one item", "items", 422)
        reviewer = request.headers.get(REVIEWER_HEADER)
        if reviewer is not None and not REVIEWER.match(reviewer):
            raise ReviewError("must be 1-100 printable characters", REVIEWER_HEADER, 422)
        reviewer = reviewer or sender or UNNAMED_REVIEWER
        number = int(header)
        entry = await asyncio.to_thread(self.queue.get, number)
        item = parsed.items[0]
        decision, replacement = decision_of(entry, item.id, item.text, item.tags or (), parsed.incorrect[0])
        body = {
            "id": item.id,
            "text": item.text,
            **dict(item.extra),
            "tags": list(item.tags or ()),
            "incorrect": list(parsed.incorrect[0]),
        }
        await asyncio.to_thread(self.queue.begin, number, decision, replacement, reviewer, body)
        try:
            result = await self.ingress.write_feedback(parsed, sender=sender, reviewer=reviewer)
        except BaseException:
            await asyncio.to_thread(self.queue.abort, number)
            raise
        decided = await asyncio.to_thread(self.queue.finish, number)
        return {**result, "review": decided}

    async def recover(self) -> int:
        """Finish entries whose writer died between recording a decision and finishing it: their
        feedback is written again (it merges, so twice is once) and the entry finished."""
        stale = await asyncio.to_thread(self.queue.stale, self.settings.stale_s)
        for entry in stale:
            try:
                parsed = self.ingress.parse_feedback(json.loads(entry["feedback"]))
                await self.ingress.write_feedback(parsed, reviewer=entry["reviewer"] or UNNAMED_REVIEWER)
            except Exception as exc:  # the next look at the queue tries again
                log.warning("review entry %s: could not write its feedback again: %s", entry["entry"], exc)
                continue
            await asyncio.to_thread(self.queue.finish, entry["entry"])
        return len(stale)


# -- routes (module functions: the ingress replica comes in as a dependency)


@router.get("/ui", include_in_schema=False)
async def ui_root():
    return RedirectResponse("/ui/")


@router.get("/ui/", include_in_schema=False)
async def ui_index():
    return FileResponse(ui_folder() / "index.html", media_type="text/html")


@router.get("/ui/{name}", include_in_schema=False)
async def ui_file(name: str):
    if name not in UI_FILES:  # a fixed list: no path from the request reaches the file system
        return JSONResponse({"error": f"no file {name!r}", "field": "path"}, status_code=404)
    return FileResponse(ui_folder() / name, media_type=UI_FILES[name])


@router.get(
    "/v1/review/queue", summary="Review queue: entries by state, counts, band", responses=refusals(422)
)
async def review_queue(
    ingress: Replica,
    state: Annotated[str, Query(json_schema_extra={"enum": list(STATES)})] = "pending",
    limit: Annotated[int, Query(json_schema_extra={"minimum": 1, "maximum": 500})] = 50,
    offset: Annotated[int, Query(json_schema_extra={"minimum": 0, "maximum": MAX_ROW_NUMBER})] = 0,
):
    if not 1 <= limit <= 500 or offset < 0:
        raise ReviewError("limit must be within 1..500 and offset >= 0", "limit", 422)
    desk = ingress.review
    recovered = await desk.recover()
    entries = await asyncio.to_thread(desk.queue.entries, state, limit, offset, desk.cut)
    counts = await asyncio.to_thread(desk.queue.counts)
    return {
        "entries": entries,
        "counts": counts,
        "band": list(desk.band),
        "cut": desk.cut,
        "recovered": recovered,
    }


@router.get("/v1/review/entries/{entry}", summary="One review entry", responses=refusals(404))
async def review_entry(ingress: Replica, entry: int):
    return await asyncio.to_thread(ingress.review.queue.get, entry)


@router.get("/v1/knowledge", summary="Retrieved samples and knowledge snippets by id")
async def knowledge(ingress: Replica, samples: str = "", snippets: str = ""):
    sample_ids = [s for s in samples.split(",") if s][:100]
    snippet_ids = [s for s in snippets.split(",") if s][:100]
    return await asyncio.to_thread(ingress.calls.knowledge.entries, sample_ids, snippet_ids)


@router.get(
    "/v1/vocabulary",
    summary="The vocabulary: descriptions, URIs, hierarchy, stored-item counts",
    responses=refusals(422, 503),
)
async def vocabulary(
    ingress: Replica,
    q: Annotated[str, Query(json_schema_extra=QUERY_BOUNDS)] = "",
    limit: Annotated[int, Query(json_schema_extra=LIMIT_BOUNDS)] = 50,
    offset: Annotated[int, Query(json_schema_extra={"minimum": 0})] = 0,
    tag: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI copies defaults per request)
):
    """Tags matching ``q`` (as GET /v1/tags), or exactly the ``tag`` names given (repeatable)."""
    view = await ingress.follow_vocabulary()
    if not 1 <= limit <= ingress.limits.max_search_results or offset < 0:
        raise Refusal(f"must be within 1..{ingress.limits.max_search_results}", "limit", 422)
    view.search.check_query(q)  # also when ``tag`` is given and q is not searched (as documented)
    calls = ingress.calls
    per_shard = await asyncio.gather(*(calls.call("recall", s.tag_counts) for s in calls.shards))
    # A shard may hold a tag more than another while a tag is being added to every shard.
    counts = [sum(c) for c in itertools.zip_longest(*per_shard, fillvalue=0)]
    if tag:
        found = [t for t in dict.fromkeys(tag) if t in view.position][:limit]
    else:
        hits = await asyncio.to_thread(view.search.search, q, offset + limit)
        found = [hit["tag"] for hit in hits[offset:]]
    examples = await asyncio.to_thread(SyntheticExamples(ingress.store).by_tag)
    rows = [view.row(t, counts[view.position[t]], [e.text for e in examples.get(t, ())]) for t in found]
    return {"query": q, "tags": rows, "vocabulary_size": len(view.tags)}
