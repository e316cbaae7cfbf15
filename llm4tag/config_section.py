"""The base of llm4tag's configuration sections: graph_store's ConfigModel (the one config mechanism)
raising ConfigError. Each section lives with the code it configures; llm4tag/config gathers them."""

from __future__ import annotations

from typing import ClassVar

from graph_store.config import ConfigModel
from llm4tag.errors import ConfigError


class Section(ConfigModel):
    error: ClassVar[type[Exception]] = ConfigError
