"""The Serve application's arguments (a Serve config's ``applications[].args``), one typed model:
``deployments/app.py:build_app`` takes it, ``serve run`` and ``llm4tag serve`` both fill it from the
config file, and an unknown or malformed argument is refused before any replica starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from llm4tag.config import Settings, load_settings
from llm4tag.config_section import Section
from llm4tag.service.annif import AnnifSettings
from llm4tag.service.review_queue import ReviewSettings
from llm4tag.service.settings import ServiceConfig


def resolve_path(path: str, base: str | None = None) -> str:
    """Paths in the config are relative to LLM4TAG_BASE_DIR (set by `llm4tag serve` to the config's
    folder) or the working directory; replicas get absolute paths, whatever their own cwd ("~" is
    each node's home)."""
    expanded = Path(os.path.expandvars(os.path.expanduser(path)))
    if not expanded.is_absolute():
        expanded = Path(base or os.environ.get("LLM4TAG_BASE_DIR") or os.getcwd()) / expanded
    return str(expanded.resolve())


class AppArgs(Section):
    """The Serve application's arguments (a Serve config's `applications[].args`)."""

    section: ClassVar[str] = "args"

    store: str = Field(
        ..., description="the store folder built by `llm4tag build` (shared storage on a cluster)"
    )
    config: str | None = Field(None, description="a settings YAML file (every section optional)")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="settings laid over `config` (the same sections)"
    )
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="the HTTP service")
    review: ReviewSettings = Field(default_factory=ReviewSettings, description="the review queue")
    annif: AnnifSettings = Field(default_factory=AnnifSettings, description="the Annif-compatible API")
    journal: str | None = Field(
        None,
        description=(
            "folder of the graph journals when not the store's (shared storage on a cluster whose "
            "nodes hold node-local copies of the store)"
        ),
    )
    deployment_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Serve options per deployment name (`llm4tag serve` fills it from the config's list)",
    )

    def resolved(self) -> AppArgs:
        """The same arguments with every path absolute (the replicas run elsewhere)."""
        service = self.service
        if service.adapters_root is not None:
            service = service.model_copy(update={"adapters_root": resolve_path(service.adapters_root)})
        if not service.auth.keys_file.startswith("~"):
            auth = service.auth.model_copy(update={"keys_file": resolve_path(service.auth.keys_file)})
            service = service.model_copy(update={"auth": auth})
        return self.model_copy(
            update={
                "store": resolve_path(self.store),
                "config": resolve_path(self.config) if self.config else None,
                "journal": resolve_path(self.journal) if self.journal else None,
                "service": service,
            }
        )

    def load_settings(self) -> Settings:
        """The settings every deployment gets: `config`, then `settings` over it (validated here)."""
        return load_settings(self.config).with_overrides(self.settings)
