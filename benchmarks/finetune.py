"""Long-term knowledge injection (paper figure 7): the pipeline with neither adapter, the generator
adapter, the calibrator adapter, and both, on the same test sample of a shared data set.

Training data comes from the data set's train split only (`train-data`: cross-fitted stores, so no
item sees itself); the test sample (seed 0) is scored by a pipeline whose store is the train split.
Prints training time, steps, loss before/after, peak memory, the metrics of the four configurations
and the calibration ECE before/after.

    flock /tmp/llm4tag-cpu.lock python -m benchmarks.finetune --datasets banking77 --limit 50 \
        --train-items 200 --steps 40 --model default

The three stages can run apart, on different machines (training on a GPU machine that has neither
the shared data nor faiss/igraph; `--stage train` imports only torch, transformers and peft):

    python -m benchmarks.finetune --stage data  --datasets banking77 --train-items 4000 --model tiny \
        --config configs/finetune_tiny.yaml
    python -m benchmarks.finetune --stage train --datasets banking77 --model tiny --device cuda \
        --base /path/to/hf-folder --steps 250 --calibrator-steps 250
    python -m benchmarks.finetune --stage eval  --datasets banking77 --model tiny --limit 100

`--device cuda` trains with the finetune.gpu settings (bf16, bigger batches, epochs over the data).
"""

from __future__ import annotations

import json
import platform
import random
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from benchmarks._paths import (
    OUT,
    REPO,
    add_data_arguments,
    add_datasets_argument,
    add_limit_argument,
    add_out_argument,
    add_seed_argument,
    benchmark_parser,
)

ROLES = ("generator", "calibrator")
SETTINGS_FILE = "settings.json"


def merged_settings(name: str, args) -> dict:
    """The data set's benchmark config, then --config over it, then the command line's choices (read
    here, not with _datasets.dataset_config: the train stage runs where only torch, transformers and
    peft are installed)."""
    data = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()) or {}
    if args.config:
        extra = yaml.safe_load(args.config.read_text()) or {}
        for key, value in extra.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    data["llm"] = {**data.get("llm", {}), "model": args.model}
    finetune = data.setdefault("finetune", {})
    finetune["device"] = args.device
    finetune.setdefault("data", {})["max_items"] = args.train_items
    return data


def stage_data(name: str, out: Path, args) -> None:
    from benchmarks._datasets import load_dataset
    from llm4tag.config import settings_from_dict
    from llm4tag.encoder import Encoder
    from llm4tag.finetune.examples import write_training_data
    from llm4tag.finetune.training_data import build_examples

    raw = merged_settings(name, args)
    settings = settings_from_dict(raw)
    encoder = Encoder(settings.encoder)
    ds = load_dataset(name, args.data, settings, encoder, args.cache)
    test_ids = {i.id for i in ds.test}
    assert not test_ids & {i.id for i in ds.train}, "train and test splits overlap"
    started = time.perf_counter()
    gen, cal, stats = build_examples(ds.train, ds.tags, settings, encoder)
    leaked = {e.id for e in gen + cal} & test_ids
    assert not leaked, f"test items in the training data: {sorted(leaked)[:5]}"
    if (out / "data").exists():
        raise SystemExit(f"{out / 'data'} exists: remove it (and the adapters trained on it) to rebuild")
    manifest = write_training_data(
        out / "data", {"generator": gen, "calibrator": cal}, {"mode": stats.mode, "dataset": name}
    )
    # The train stage may run where the data set and faiss are not: it reads its settings from here.
    (out / SETTINGS_FILE).write_text(json.dumps(raw, indent=1) + "\n")
    print(
        f"\n## {name}: training data {manifest['counts']} in {time.perf_counter() - started:.1f} s "
        f"(pool {stats.pool}, selected {stats.selected}, gold not recalled: {stats.gold_not_recalled}, "
        f"injected: {stats.injected})",
        flush=True,
    )


def stage_train(name: str, out: Path, args) -> list[dict]:
    from llm4tag.config.finetune import FinetuneConfig
    from llm4tag.finetune.examples import read_training_data
    from llm4tag.finetune.train import train

    raw = json.loads((out / SETTINGS_FILE).read_text())
    section = dict(raw.get("finetune") or {})
    section["device"] = args.device
    data_hash = read_training_data(out / "data", "generator")[1]["hash"]
    training = []
    for role in ROLES:
        steps = args.calibrator_steps if role == "calibrator" and args.calibrator_steps else args.steps
        role_section = json.loads(json.dumps(section))
        if steps:
            for machine in ("cpu", "gpu"):
                role_section.setdefault(machine, {})["max_steps"] = steps
        settings = SimpleNamespace(
            finetune=FinetuneConfig.load(role_section), llm=SimpleNamespace(model=args.model)
        )
        target = out / f"{role}-adapter"
        if (target / "training_manifest.json").is_file():
            result = json.loads((target / "training_manifest.json").read_text())
            if result["data"]["hash"] != data_hash:
                raise SystemExit(f"{target} was trained on other data: remove it to retrain")
        else:
            result = train(role, out / "data", target, settings, model=args.base, progress=args.progress)
        training.append(
            {
                "adapter": role,
                "steps": result["steps"],
                "examples": result["data"]["used"],
                "seen": result["examples_seen"],
                "loss before": round(result["loss_before"], 4),
                "loss after": round(result["loss_after"], 4),
                "train s": result["seconds"],
                "peak MB": result["peak_memory_mb"],
                "device": result["device"],
            }
        )
        print(f"# {name} {role}: {training[-1]}", flush=True)
    (out / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    return training


def stage_eval(name: str, out: Path, args) -> None:
    from benchmarks._datasets import load_dataset
    from llm4tag.config import settings_from_dict
    from llm4tag.encoder import Encoder
    from llm4tag.evaluation.tables import format_table
    from llm4tag.finetune.retrain import eval_pipeline, evaluate_adapters

    raw = json.loads((out / SETTINGS_FILE).read_text())
    raw["llm"] = {**raw.get("llm", {}), "model": args.model}
    raw["finetune"]["device"] = "auto"
    settings = settings_from_dict(raw)
    encoder = Encoder(settings.encoder)
    ds = load_dataset(name, args.data, settings, encoder, args.cache)
    sample = random.Random(args.seed).sample(ds.test, min(args.limit, len(ds.test)))
    adapters = {role: str(out / f"{role}-adapter") for role in ROLES}
    pipeline, engine = eval_pipeline(settings, ds.train, ds.tags)
    rows = []
    try:
        for label, chosen in (
            ("neither", {}),
            ("generator adapter", {"generator": adapters["generator"]}),
            ("calibrator adapter", {"calibrator": adapters["calibrator"]}),
            ("both", adapters),
        ):
            report = evaluate_adapters(pipeline, engine, sample, chosen)
            rows.append(
                {
                    "configuration": label,
                    **{
                        k: report[k]
                        for k in (
                            *("precision", "recall", "f1", "acc@1", "acc@2", "acc@3"),
                            *("coverage@1", "tags_per_item", "ece", "seconds"),
                        )
                    },
                }
            )
            print(f"# {label}: done in {report['seconds']} s", flush=True)
    finally:
        engine.close()
    training_file = out / "training.json"
    training = json.loads(training_file.read_text()) if training_file.is_file() else []
    print(
        f"\n{name}: {len(sample)} test items (seed 0), model {args.model}, "
        f"{platform.machine()} {platform.processor() or ''}".rstrip()
    )
    if training:
        print(format_table(training, list(training[0])))
    print(format_table(rows, list(rows[0])))
    (out / "results.json").write_text(
        json.dumps({"training": training, "results": rows, "n": len(sample)}, indent=2) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_datasets_argument(parser, ["banking77"])
    parser.add_argument("--stage", default="all", choices=["all", "data", "train", "eval"])
    add_data_arguments(parser)
    add_out_argument(parser, OUT / "finetune")
    add_limit_argument(parser, 100, "test items (a fixed sample; default 100)")
    add_seed_argument(parser)
    parser.add_argument("--train-items", type=int, default=500, help="items to build examples for")
    parser.add_argument("--steps", type=int, help="optimiser steps per adapter (default: config)")
    parser.add_argument("--calibrator-steps", type=int, help="the calibrator's steps (default: --steps)")
    parser.add_argument("--model", default="default", help="the bundled model the results are named by")
    parser.add_argument(
        "--base", help="train stage: the base model's HF folder, where --model is not installed"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--config", type=Path, help="extra settings YAML merged over the data set's")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)

    for name in args.datasets:
        out = args.out / args.model / name
        out.mkdir(parents=True, exist_ok=True)
        if args.stage in ("all", "data") and not (out / "data" / "manifest.json").is_file():
            stage_data(name, out, args)
        if args.stage in ("all", "train"):
            stage_train(name, out, args)
        if args.stage in ("all", "eval"):
            stage_eval(name, out, args)


if __name__ == "__main__":
    main()
