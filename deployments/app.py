"""The application builder: one composition graph of the stage deployments behind the ingress.

`serve run serve_config.yaml` and `llm4tag serve` both call build_app with the `args` of the config's
application; per-deployment options (replicas, autoscaling, resources) come from its `deployments`
list (Serve applies them by name) or, for `llm4tag serve`, from `args["deployment_options"]`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray.serve import Application

from deployments.calibrator import CalibratorDeployment
from deployments.encoder import EncoderDeployment
from deployments.generator import GeneratorDeployment
from deployments.graph_recall import GraphRecallDeployment
from deployments.ingress import IngressDeployment
from graph_store import read_vocabulary
from llm4tag.config import Settings, load_settings
from llm4tag.errors import ConfigError
from llm4tag.service.annif import AnnifSettings
from llm4tag.service.auth import ApiKeys
from llm4tag.service.review_queue import ReviewSettings
from llm4tag.service.settings import ServiceConfig

# journal: folder of the graph journals when not the store folder (shared storage on a cluster whose
# nodes hold node-local copies of the store; README: "Scaling out").
# review: the review queue (llm4tag/service/review_queue.py ReviewSettings); annif: the Annif-compatible API
# (llm4tag/service/annif.py AnnifSettings).
KNOWN_ARGS = {"store", "config", "settings", "service", "deployment_options", "journal", "review", "annif"}


def resolve_path(path: str, base: str | None = None) -> str:
    """Paths in the config are relative to LLM4TAG_BASE_DIR (set by `llm4tag serve` to the config's
    folder) or the working directory; replicas get absolute paths, whatever their own cwd."""
    expanded = Path(os.path.expandvars(os.path.expanduser(path)))
    if not expanded.is_absolute():
        expanded = Path(base or os.environ.get("LLM4TAG_BASE_DIR") or os.getcwd()) / expanded
    return str(expanded.resolve())


def build_app(args: dict[str, Any]) -> Application:
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown:
        raise ConfigError(
            f"unknown application argument(s): {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_ARGS))})"
        )
    if "store" not in args:
        raise ConfigError("the application needs 'store': the folder built by `llm4tag build`")
    store = resolve_path(str(args["store"]))
    # Validated here, before any replica starts; every deployment gets these typed settings.
    base = load_settings(resolve_path(str(args["config"]))) if args.get("config") else Settings()
    settings = base.with_overrides(args.get("settings") or {})
    service = ServiceConfig.load(args.get("service"))
    # Relative paths are the config folder's, as for the store ("~" is each node's home).
    if service.adapters_root is not None:
        service = service.model_copy(update={"adapters_root": resolve_path(service.adapters_root)})
    if not service.auth.keys_file.startswith("~"):
        auth = service.auth.model_copy(update={"keys_file": resolve_path(service.auth.keys_file)})
        service = service.model_copy(update={"auth": auth})
    if service.auth.enabled:
        ApiKeys.load(service.auth)  # a malformed or world-readable key file is refused before start-up
    journal = resolve_path(str(args["journal"])) if args.get("journal") else None
    vocabulary = read_vocabulary(store)
    # Checked here, before any replica starts, like the settings.
    review = ReviewSettings.load(args.get("review"))
    annif = AnnifSettings.load(args.get("annif"))
    options = args.get("deployment_options") or {}

    def opt(deployment, name: str):
        return (
            deployment.options(name=name, **options.get(name, {}))
            if name in options
            else deployment.options(name=name)
        )

    encoder = opt(EncoderDeployment, "Encoder").bind(settings, service.encoder, vocabulary.encoder_id)
    shards = []
    for index in range(vocabulary.num_shards):
        name = "GraphRecall" if vocabulary.num_shards == 1 else f"GraphRecall{index}"
        base = options.get("GraphRecall", {})
        shard_options = {**base, **options.get(name, {})}
        shards.append(
            GraphRecallDeployment.options(name=name, **shard_options).bind(
                store, index, vocabulary.num_shards, settings, journal
            )
        )
    generator = opt(GeneratorDeployment, "Generator").bind(
        store, settings, service.generator, service.llm_nice
    )
    calibrator = None
    # Judgments that continue the generation conversations run where those were computed, in the
    # Generator's call (one model in memory, only the question computed): no Calibrator deployment.
    if settings.pipeline.calibrate and not settings.judges_with_generation:
        calibrator = opt(CalibratorDeployment, "Calibrator").bind(
            store, settings, service.calibrator, service.llm_nice
        )
    return opt(IngressDeployment, "Ingress").bind(
        encoder,
        shards,
        generator,
        calibrator,
        {
            "tags": vocabulary.tags,
            "descriptions": vocabulary.descriptions,
            "meta": vocabulary.meta,
            "broader": vocabulary.broader,
            "modified": _modified(store),
        },
        settings,
        service,
        store,
        review,
        annif,
        vocabulary.encoder_id,
    )


def _modified(store: str) -> str | None:
    """When the store's live version was made (Annif's project modification_time)."""
    for pointer in (Path(store) / "CURRENT", Path(store) / "shards.json"):
        if pointer.exists():
            stamp = datetime.fromtimestamp(pointer.stat().st_mtime, tz=UTC)
            return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return None
