"""The application builder: one composition graph of the stage deployments behind the ingress.

`serve run serve_config.yaml` and `llm4tag serve` both call build_app with the `args` of the config's
application (llm4tag/service/app_args.py: AppArgs); per-deployment options (replicas, autoscaling,
resources) come from its `deployments` list (Serve applies them by name) or, for `llm4tag serve`, from
`args.deployment_options`.
"""

from __future__ import annotations

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
from llm4tag.service.app_args import AppArgs
from llm4tag.service.auth import ApiKeys


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """The application of a Serve config's ``args`` (:class:`AppArgs`; a plain mapping is validated
    into it, naming a bad or unknown argument before any replica starts)."""
    if not isinstance(args, AppArgs):
        args = AppArgs.load(args)
    args = args.resolved()
    store, service = args.store, args.service
    # Validated here, before any replica starts; every deployment gets these typed settings.
    settings = args.load_settings()
    if service.auth.enabled:
        ApiKeys.load(service.auth)  # a malformed or world-readable key file is refused before start-up
    vocabulary = read_vocabulary(store)
    options = args.deployment_options

    def opt(deployment, name: str):
        return deployment.options(name=name, **options.get(name, {}))

    encoder = opt(EncoderDeployment, "Encoder").bind(settings, service.encoder, vocabulary.encoder_id)
    shards = []
    for index in range(vocabulary.num_shards):
        name = "GraphRecall" if vocabulary.num_shards == 1 else f"GraphRecall{index}"
        shard_options = {**options.get("GraphRecall", {}), **options.get(name, {})}
        shards.append(
            GraphRecallDeployment.options(name=name, **shard_options).bind(
                store, index, vocabulary.num_shards, settings, args.journal
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
        args.review,
        args.annif,
        vocabulary.encoder_id,
    )


def _modified(store: str) -> str | None:
    """When the store's live version was made (Annif's project modification_time)."""
    for pointer in (Path(store) / "CURRENT", Path(store) / "shards.json"):
        if pointer.exists():
            stamp = datetime.fromtimestamp(pointer.stat().st_mtime, tz=UTC)
            return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return None
