"""LoRA adapters in the engines (transformers/PEFT, vLLM, llama.cpp): one slot per role, swapped without
reloading the base model.

The generator adapter serves ``choose``/``generate`` and the calibrator adapter ``score_yes_no``; a role
with no adapter runs the base model. A swap loads the new adapter beside the old one and then switches
the slot; the switch happens between engine calls (transformers: under the lock every call holds; vLLM:
each call captures its role's ``LoRARequest`` once), so a request in flight finishes on the adapter it
started with and never fails because of a swap.
"""

from __future__ import annotations

import functools
import itertools
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llm4tag.errors import ModelError

ROLES = ("generator", "calibrator")
MANIFEST = "training_manifest.json"


@dataclass
class AdapterInfo:
    role: str
    path: str
    name: str  # the engine's name for it (unique per load)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    rank: int | None = None
    base_model: str | None = None
    data_hash: str | None = None
    trained: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_adapter(role: str, path: str | Path) -> dict[str, Any]:
    """What an adapter folder says about itself; ModelError for anything that is not one."""
    if role not in ROLES:
        raise ModelError(f"adapter role must be one of {', '.join(ROLES)}, got {role!r}")
    folder = Path(path).expanduser()
    config_path = folder / "adapter_config.json"
    if not config_path.is_file() or not any(folder.glob("adapter_model.*")):
        raise ModelError(f"{path} is not a LoRA adapter folder (adapter_config.json + adapter_model.*)")
    try:
        config = json.loads(config_path.read_text())
        manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    except ValueError as exc:
        raise ModelError(f"{path}: unreadable adapter metadata ({exc})") from exc
    trained_for = manifest.get("role")
    if trained_for and trained_for != role:
        raise ModelError(f"{path} is a {trained_for} adapter, not a {role} one")
    return {
        "rank": config.get("r"),
        "base_model": (manifest.get("base_model") or {}).get("path") or config.get("base_model_name_or_path"),
        "data_hash": (manifest.get("data") or {}).get("hash"),
        "trained": manifest.get("created"),
    }


def uses_adapter(role: str):
    """Decorate an engine method: it runs with ``role``'s adapter active (transformers engine)."""

    def wrap(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            with self.adapters.use(role):
                return method(self, *args, **kwargs)

        return run

    return wrap


class PeftAdapters:
    """Adapters on a transformers model through its PEFT integration (``load_adapter``/``set_adapter``)."""

    def __init__(self, model):
        self.model = model
        self.lock = threading.RLock()  # held by every engine call and by a swap
        self.slots: dict[str, AdapterInfo] = {}
        self._names = itertools.count(1)

    def load(self, role: str, path: str | Path | None) -> AdapterInfo | None:
        """Put the adapter at ``path`` into ``role``'s slot (None: back to the base model)."""
        if path is None:
            with self.lock:
                old = self.slots.pop(role, None)
                self._forget(old)
            return None
        meta = check_adapter(role, path)
        name = f"{role}_{next(self._names)}"
        with self.lock:
            try:
                self.model.load_adapter(str(Path(path).expanduser()), adapter_name=name)
            except Exception as exc:  # peft/transformers raise many types for a bad or mismatched adapter
                raise ModelError(f"cannot load adapter {path}: {exc}") from exc
            # New LoRA modules start in training mode: dropout would make answers random.
            self.model.eval()
            old = self.slots.get(role)
            self.slots[role] = AdapterInfo(role, str(path), name, **meta)
            self._forget(old)
        return self.slots[role]

    def _forget(self, old: AdapterInfo | None) -> None:
        if old is not None and old.name not in {a.name for a in self.slots.values()}:
            self.model.delete_adapter(old.name)

    @contextmanager
    def use(self, role: str):
        with self.lock:
            if self.slots:
                info = self.slots.get(role)
                if info is None:
                    self.model.disable_adapters()
                else:
                    self.model.enable_adapters()
                    self.model.set_adapter(info.name)
            yield

    def describe(self) -> dict[str, Any]:
        # No lock: a copy of the dict is consistent, and describing must not wait for a running batch.
        slots = dict(self.slots)
        return {role: (slots[role].to_dict() if role in slots else None) for role in ROLES}


class LoRARequests:
    """vLLM: one ``LoRARequest`` per role; a new load gets a new id, so vLLM loads the new weights while
    requests already submitted keep the old request (and its weights) until they finish."""

    def __init__(self, enabled: bool, max_rank: int):
        self.enabled = enabled
        self.max_rank = max_rank
        self.lock = threading.Lock()
        self.slots: dict[str, AdapterInfo] = {}
        self.requests: dict[str, Any] = {}
        self._ids = itertools.count(1)

    def load(self, role: str, path: str | Path | None) -> AdapterInfo | None:
        if path is None:
            with self.lock:
                self.slots.pop(role, None)
                self.requests.pop(role, None)
            return None
        if not self.enabled:
            raise ModelError("this vLLM engine was started without LoRA: set llm.enable_lora: true")
        meta = check_adapter(role, path)
        if meta["rank"] and meta["rank"] > self.max_rank:
            raise ModelError(f"adapter {path} has rank {meta['rank']} > llm.max_lora_rank={self.max_rank}")
        from vllm.lora.request import LoRARequest

        lora_id = next(self._ids)
        name = f"{role}_{lora_id}"
        request = LoRARequest(name, lora_id, str(Path(path).expanduser().resolve()))
        with self.lock:
            self.slots[role] = AdapterInfo(role, str(path), name, **meta)
            self.requests[role] = request
        return self.slots[role]

    def request(self, role: str):
        with self.lock:
            return self.requests.get(role)

    def describe(self) -> dict[str, Any]:
        # No lock: a copy of the dict is consistent, and describing must not wait for a running batch.
        slots = dict(self.slots)
        return {role: (slots[role].to_dict() if role in slots else None) for role in ROLES}


class LlamaLoras:
    """llama.cpp: one GGUF LoRA per role (a PEFT adapter is converted once, see lora_gguf.py), set on the
    context before each engine call. Saved prefix states are keyed by the active adapter, since a KV
    state computed under one adapter is wrong under another."""

    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.RLock()  # held by every engine call and by a swap
        self.slots: dict[str, AdapterInfo] = {}
        self.handles: dict[str, Any] = {}
        self.active = ""  # the adapter the context runs with ("" = base model)
        self._names = itertools.count(1)

    def load(self, role: str, path: str | Path | None) -> AdapterInfo | None:
        from llm4tag.engines.lora_gguf import peft_to_gguf

        if path is None:
            with self.lock:
                self.slots.pop(role, None)
                self._drop(self.handles.pop(role, None), role)
            return None
        meta = check_adapter(role, path)
        gguf = peft_to_gguf(Path(path).expanduser(), Path(self.engine.llm.model_path))
        lib = self.engine._lib
        handle = lib.llama_adapter_lora_init(self.engine.llm.model, str(gguf).encode("utf-8"))
        if not handle:
            raise ModelError(f"llama.cpp cannot load the adapter {path} (converted to {gguf})")
        name = f"{role}_{next(self._names)}"
        with self.lock:
            old = self.handles.get(role)
            self.slots[role] = AdapterInfo(role, str(path), name, **meta)
            self.handles[role] = handle
            self._drop(old, role)
        return self.slots[role]

    def _drop(self, handle, role: str) -> None:
        """Free a role's previous adapter, first taking it off the context if it is set there."""
        if handle is None:
            return
        if self.active.startswith(f"{role}_"):
            self._set(None, "")
        self.engine._lib.llama_adapter_lora_free(handle)

    def _set(self, handle, name: str) -> None:
        import ctypes

        lib, ctx = self.engine._lib, self.engine.llm.ctx
        if handle is None:
            code = lib.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(handle)
            code = lib.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if code:
            raise ModelError(f"llama.cpp refused to set the adapter {name or 'base'} ({code})")
        # The live context was computed under the previous adapter.
        self.engine.llm.n_tokens = 0
        self.active = name

    @contextmanager
    def use(self, role: str):
        with self.lock:
            info = self.slots.get(role)
            name = info.name if info is not None else ""
            if name != self.active:
                self._set(self.handles.get(role), name)
            yield

    def describe(self) -> dict[str, Any]:
        slots = dict(self.slots)
        return {role: (slots[role].to_dict() if role in slots else None) for role in ROLES}

    def close(self) -> None:
        with self.lock:
            for role in list(self.handles):
                self._drop(self.handles.pop(role), role)
            self.slots.clear()
