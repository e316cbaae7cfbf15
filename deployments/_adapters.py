"""Adapter swaps in the LLM stages: follow llm.adapters_file (active.json) between batches.

A replica checks the file before each batch and on describe(); a changed path is loaded beside the old
adapter and the engine switches between batches (llm4tag/engines/adapters.py), so requests queued or
in flight are answered, by the old adapter or the new one, and none fails because of the swap. A bad
adapter is refused: the old one stays and the error shows in /readyz. A replica whose LLM is not
loaded yet (nothing was routed to it) reads the file when it loads the engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from deployments.serve_metrics import adapter_metrics
from llm4tag.finetune.registry import ActiveAdapters

log = logging.getLogger("ray.serve")


class AdapterFollower:
    def __init__(self, engine: Callable[[], Any], role: str, adapters_file: str | None):
        """``engine``: the replica's engine now (None while its LLM is not loaded)."""
        self.engine = engine
        self.role = role
        self.file = ActiveAdapters(adapters_file) if adapters_file else None
        self.swaps = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self.gauge, self.counter = adapter_metrics()
        self._shown: str | None = None
        # A replica that starts (or restarts) after a swap serves what the file names, not the config's
        # llm.*_adapter: the file records the later decision.
        self.sync()
        self._show()

    def current(self) -> dict | None:
        adapters = getattr(self.engine(), "adapters", None)
        return adapters.describe().get(self.role) if adapters is not None else None

    def _show(self) -> None:
        info = self.current()
        name = info["path"] if info else "base"
        if self._shown is not None and self._shown != name:
            self.gauge.set(0, tags={"role": self.role, "adapter": self._shown})
        self.gauge.set(1, tags={"role": self.role, "adapter": name})
        self._shown = name

    def sync(self) -> bool:
        """Load the file's adapter for this role if it changed; True when a swap happened."""
        engine = self.engine()
        if self.file is None or engine is None:
            return False
        with self._lock:
            data = self.file.changed()
            if data is None:
                return False
            wanted = data.get(self.role)
            info = self.current()
            if (info["path"] if info else None) == wanted:
                return False
            try:
                engine.adapters.load(self.role, wanted)
            except Exception as exc:  # keep serving with the adapter we have
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("adapter swap to %s refused: %s", wanted, exc)
                return False
            self.last_error = None
            self.swaps += 1
            self.counter.inc(tags={"role": self.role})
            self._show()
            return True

    def describe(self) -> dict:
        return {
            "adapter": self.current(),
            "adapters_file": str(self.file.path) if self.file else None,
            "swaps": self.swaps,
            "error": self.last_error,
        }
