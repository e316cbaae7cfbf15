"""The configuration reference (docs/configuration.md), generated from the sections' field defaults
and descriptions, so that the documentation cannot drift from the code (tests/test_config.py checks
the committed file against this):

    python -m llm4tag.config_reference > docs/configuration.md
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from graph_store.config import ConfigModel
from llm4tag.config.settings import Settings
from llm4tag.prompts import AugmentPromptConfig, PeerPromptConfig, PromptConfig
from llm4tag.service.annif import AnnifSettings
from llm4tag.service.app_args import AppArgs
from llm4tag.service.review_queue import ReviewSettings
from llm4tag.service.settings import ServiceConfig

HEADER = """# Configuration reference

Generated from the settings' field descriptions (`python -m llm4tag.config_reference >
docs/configuration.md`; `tests/test_config.py` checks this file against them). Edit the descriptions in
the code, not here.

One YAML file, every section and every key optional (`--config FILE`, or `config:` / `settings:` in a
Serve config's `args`); an unknown key is an error naming it. The values below are the defaults.
"""

# Templates: their defaults are long texts in these files, shown there rather than here.
TEMPLATE_DEFAULTS = {
    PromptConfig: "llm4tag/prompts/default.yaml",
    PeerPromptConfig: "llm4tag/prompts/peers.yaml",
    AugmentPromptConfig: "llm4tag/prompts/augment.yaml",
}
TEMPLATE_FIELDS = {"domain", "item_kind", "item_kind_plural", "layout"}


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return (
            json.dumps(value)
            if value == "" or not value.replace("_", "").replace("-", "").isalnum()
            else value
        )
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return str(value)


def _lines(model: BaseModel, indent: int) -> list[str]:
    out = []
    pad = " " * indent
    templates = TEMPLATE_DEFAULTS.get(type(model))
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        description = field.description or ""
        if isinstance(value, ConfigModel):
            out.append(f"{pad}{name}:".ljust(40) + f"  # {description}")
            out.extend(_lines(value, indent + 2))
        elif templates and isinstance(value, str) and name not in TEMPLATE_FIELDS:
            out.append(f"{pad}{name}: ...".ljust(40) + f"  # {description} (default in {templates})")
        else:
            out.append(f"{pad}{name}: {_scalar(value)}".ljust(40) + f"  # {description}")
    return out


def render() -> str:
    settings = Settings()
    parts = [HEADER]
    for name, field in Settings.model_fields.items():
        section = getattr(settings, name)
        parts.append(f"## `{name}`: {field.description}\n")
        doc = (type(section).__doc__ or "").strip().splitlines()[0]
        parts.append(f"{doc}\n")
        parts.append("```yaml\n" + "\n".join([f"{name}:", *_lines(section, 2)]) + "\n```\n")
    parts.append(f"## `args`: {AppArgs.__doc__.strip().splitlines()[0]}\n")
    example = AppArgs(store="stores/production")
    lines = ["args:"]
    for name, field in AppArgs.model_fields.items():
        value = getattr(example, name)
        shown = "..." if isinstance(value, ConfigModel) else _scalar(value)
        below = " (its section below)" if isinstance(value, ConfigModel) else ""
        lines.append(f"  {name}: {shown}".ljust(40) + f"  # {field.description}{below}")
    parts.append("```yaml\n" + "\n".join(lines) + "\n```\n")
    parts.append("## `service`: the HTTP service (a Serve config's `args.service`)\n")
    parts.append("```yaml\n" + "\n".join(["service:", *_lines(ServiceConfig(), 2)]) + "\n```\n")
    for name, section in (("review", ReviewSettings()), ("annif", AnnifSettings())):
        doc = (type(section).__doc__ or "").strip().splitlines()[0]
        parts.append(f"## `{name}`: {doc}\n")
        parts.append("```yaml\n" + "\n".join([f"{name}:", *_lines(section, 2)]) + "\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
