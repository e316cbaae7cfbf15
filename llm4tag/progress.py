"""Progress of long work, one way for every command: a tqdm bar where stderr is a terminal, and one
log line when a step starts and one when it ends (items, seconds, items/s) wherever the output goes,
so a build or a bulk job run under a scheduler says what it is doing without a bar's carriage returns
in its log. Where no bar is drawn, a step that runs long also logs where it is every
``LOG_EVERY_S`` seconds (done of total, items/s, time left).

    with step("encode items", total=len(texts), unit="item") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

A step nested in another is shown as "outer / inner" in the log.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("llm4tag.progress")
LOG_EVERY_S = 30.0
T = TypeVar("T")
_outer: ContextVar[tuple[str, ...]] = ContextVar("llm4tag_progress_steps", default=())


def bars_shown() -> bool:
    """Bars only on a terminal; logs and pipes get the start and end lines alone."""
    return sys.stderr.isatty()


class Bar:
    """The step's counter and, on a terminal, its tqdm bar (a disabled tqdm does not count); off a
    terminal, a log line every LOG_EVERY_S seconds instead."""

    def __init__(self, bar: tqdm, label: str, unit: str, initial: int = 0):
        self.bar, self.label, self.unit = bar, label, unit
        self.n, self.initial, self.postfix = initial, initial, ""
        self.started = self.logged = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.bar.disable and now - self.logged >= LOG_EVERY_S:
            self.logged = now
            log.info("%s: %s", self.label, self.where(now))

    def counted(self, things: Iterable[T]) -> Iterator[T]:
        """``things`` as they are, each one counted as it passes (rows a writer consumes)."""
        for thing in things:
            yield thing
            self.update(1)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        self.bar.set_postfix_str(text, refresh=False)

    def where(self, now: float) -> str:
        """Done (of total), the rate of this run, and the time left at that rate."""
        total = self.bar.total
        done = f"{self.n:,}/{total:,} {self.unit}s" if total else f"{self.n:,} {self.unit}s"
        rate = (self.n - self.initial) / max(now - self.started, 1e-9)
        parts = [done, _rate(rate, self.unit)]
        if total and rate > 0:
            parts.append(f"{_duration((total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)


def _rate(per_second: float, unit: str) -> str:
    """Items a second, or seconds an item where that reads better (an LLM's items)."""
    if 0 < per_second < 1:
        return f"{1 / per_second:,.1f} s/{unit}"
    return f"{per_second:,.1f} {unit}s/s"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@contextmanager
def step(
    name: str, total: int | None = None, unit: str = "item", *, initial: int = 0, bar: bool = True
) -> Iterator[Bar]:
    """One step of long work: a bar on a terminal, a log line at its start and at its end. ``total``:
    the items it will do (None: unknown, the bar counts up); ``initial``: those done before (a resumed
    step: not counted in its rate); ``bar=False``: log lines only, even on a terminal. Update the bar
    with ``update(n)``."""
    path = (*_outer.get(), name)
    token = _outer.set(path)
    label = " / ".join(path)
    sized = f" ({total:,} {unit}s)" if total is not None else ""
    resumed = f", {initial:,} done before" if initial else ""
    log.info("%s: started%s%s", label, sized, resumed)
    started = time.perf_counter()
    shown = Bar(
        tqdm(
            total=total,
            initial=initial,
            desc=label,
            unit=unit,
            disable=not (bar and bars_shown()),
            leave=len(path) == 1,
            dynamic_ncols=True,
            file=sys.stderr,
        ),
        label,
        unit,
        initial,
    )
    try:
        yield shown
    finally:
        shown.bar.close()
        _outer.reset(token)
        seconds = time.perf_counter() - started
        done = shown.n - initial
        rate = f", {_rate(done / seconds, unit)}" if done and seconds > 0 else ""
        count = f"{done:,} {unit}s in " if done else ""
        log.info("%s: done, %s%.1f s%s", label, count, seconds, rate)
