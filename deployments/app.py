"""The application builder: one composition graph of the stage deployments behind the ingress.

`serve run serve_config.yaml` and `llm4tag serve` both call build_app with the `args` of the config's
application (llm4tag/service/app_args.py: AppArgs); per-deployment options (replicas, autoscaling,
resources) come from its `deployments` list (Serve applies them by name) or, for `llm4tag serve`, from
`args.deployment_options`.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.calibrator import CalibratorDeployment
from deployments.encoder import EncoderDeployment
from deployments.generator import GeneratorDeployment
from deployments.graph_recall import GraphRecallDeployment
from deployments.ingress import IngressDeployment
from graph_store import read_vocabulary
from llm4tag.ranking.store_routing import routes_nothing
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
    vocabulary = read_vocabulary(store, args.journal)
    options = args.deployment_options
    # A store whose route plan sends nothing to the LLM starts its LLM stages with no replica: one
    # starts when an item is routed to them (a refit, a cascade fit, a new tag), and they go back to
    # none when idle.
    llm_on_demand = routes_nothing(store, vocabulary.encoder_id, route=settings.pipeline.route)

    def opt(deployment, name: str):
        return deployment.options(name=name, **options.get(name, {}))

    def llm_opt(deployment, name: str):
        chosen = options.get(name, {})
        return deployment.options(name=name, **(on_demand(chosen) if llm_on_demand else chosen))

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
    generator = llm_opt(GeneratorDeployment, "Generator").bind(
        store, settings, service.generator, args.journal, service.llm_nice
    )
    calibrator = None
    # Judgments that continue the generation conversations run where those were computed, in the
    # Generator's call (one model in memory, only the question computed): no Calibrator deployment.
    if settings.pipeline.calibrate and not settings.judges_with_generation:
        calibrator = llm_opt(CalibratorDeployment, "Calibrator").bind(
            store, settings, service.calibrator, args.journal, service.llm_nice
        )
    return opt(IngressDeployment, "Ingress").bind(
        encoder,
        shards,
        generator,
        calibrator,
        args.journal,
        settings,
        service,
        store,
        args.review,
        args.annif,
        vocabulary.encoder_id,
        llm_on_demand,
        0 if llm_on_demand else starting_replicas(options.get("Generator", {})),
    )


def starting_replicas(options: dict[str, Any]) -> int:
    """The replicas a deployment starts with, from its Serve options (Serve's defaults otherwise)."""
    autoscaling = options.get("autoscaling_config")
    if autoscaling:
        start = autoscaling.get("initial_replicas")
        return int(start if start is not None else autoscaling.get("min_replicas", 1))
    replicas = options.get("num_replicas", 1)
    return replicas if isinstance(replicas, int) else 1


def on_demand(options: dict[str, Any]) -> dict[str, Any]:
    """An LLM deployment's Serve options with no replica at start and none when idle: Serve's
    autoscaling from zero (``min_replicas: 0``, ``initial_replicas: 0``), up to the replicas the
    config asks for (``num_replicas``, or its autoscaling ``max_replicas``). Ray Serve 2.60 starts a
    replica as soon as a request waits for a deployment that has none (its cold-start path skips
    ``upscale_delay_s``); the request waits in the caller's handle meanwhile, within its deadline.
    A deployment left idle goes back to none after ``downscale_to_zero_delay_s`` (else
    ``downscale_delay_s``, 600 s by default)."""
    chosen = {k: v for k, v in options.items() if k != "num_replicas"}
    autoscaling = dict(options.get("autoscaling_config") or {})
    replicas = options.get("num_replicas")
    most = autoscaling.get("max_replicas") or (replicas if isinstance(replicas, int) else 1)
    autoscaling.update(min_replicas=0, initial_replicas=0, max_replicas=max(1, int(most)))
    chosen["autoscaling_config"] = autoscaling
    return chosen
