"""Progress of long work, one way for every command: a tqdm bar where stderr is a terminal, and one
log line when a step starts and one when it ends (items, seconds, items/s) wherever the output goes,
so a build or a bulk job run under a scheduler says what it is doing without a bar's carriage returns
in its log.

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
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

log = logging.getLogger("llm4tag.progress")
_outer: ContextVar[tuple[str, ...]] = ContextVar("llm4tag_progress_steps", default=())


def bars_shown() -> bool:
    """Bars only on a terminal; logs and pipes get the start and end lines alone."""
    return sys.stderr.isatty()


class Bar:
    """The step's counter and, on a terminal, its tqdm bar (a disabled tqdm does not count)."""

    def __init__(self, bar: tqdm):
        self.bar, self.n = bar, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)

    def set_postfix_str(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)


@contextmanager
def step(name: str, total: int | None = None, unit: str = "item") -> Iterator[Bar]:
    """One step of long work: a bar on a terminal, a log line at its start and at its end. ``total``:
    the items it will do (None: unknown, the bar counts up). Update the bar with ``update(n)``."""
    path = (*_outer.get(), name)
    token = _outer.set(path)
    label = " / ".join(path)
    sized = f" ({total:,} {unit}s)" if total is not None else ""
    log.info("%s: started%s", label, sized)
    started = time.perf_counter()
    bar = Bar(
        tqdm(
            total=total,
            desc=label,
            unit=unit,
            disable=not bars_shown(),
            leave=len(path) == 1,
            dynamic_ncols=True,
            file=sys.stderr,
        )
    )
    try:
        yield bar
    finally:
        bar.bar.close()
        _outer.reset(token)
        seconds = time.perf_counter() - started
        done = bar.n
        rate = f", {done / seconds:,.1f} {unit}s/s" if done and seconds > 0 else ""
        count = f"{done:,} {unit}s in " if done else ""
        log.info("%s: done, %s%.1f s%s", label, count, seconds, rate)
