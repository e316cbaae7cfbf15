"""Settings as data: one YAML file (or none, for the defaults) configures every stage.

settings.py   the sections of the core (texts, pipeline, bulk, vocab, peers) and Settings
finetune.py   the `finetune:` section
"""

from llm4tag.config.finetune import FinetuneConfig
from llm4tag.config.settings import (
    BulkConfig,
    BulkStage,
    PeerPromptConfig,
    PeersConfig,
    PipelineConfig,
    Settings,
    TextConfig,
    VocabConfig,
    load_settings,
    settings_from_dict,
)
from llm4tag.tag_mode import MODES, MULTI_TAG_MEAN, resolve_mode

__all__ = [
    "MODES",
    "MULTI_TAG_MEAN",
    "BulkConfig",
    "BulkStage",
    "FinetuneConfig",
    "PeerPromptConfig",
    "PeersConfig",
    "PipelineConfig",
    "Settings",
    "TextConfig",
    "VocabConfig",
    "load_settings",
    "resolve_mode",
    "settings_from_dict",
]
