"""Long-term knowledge injection (paper figure 7): the pipeline with neither adapter, the generator
adapter, the calibrator adapter, and both, on the same test sample of a shared data set.

Training data comes from the data set's train split only (`train-data`: cross-fitted stores, so no
item sees itself); the test sample (seed 0) is scored by a pipeline whose store is the train split.
Prints training time, steps, loss before/after, peak memory, the metrics of the four configurations
and the calibration ECE before/after.

    flock /tmp/llm4tag-cpu.lock python benchmarks/finetune.py --datasets banking77 --n 50 \
        --train-items 200 --steps 40 --model default

GPU: --device cuda uses finetune.gpu settings (bf16, bigger batches, epochs over the data).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _datasets import DEFAULT_CACHE, DEFAULT_DATA, REPO, load_dataset

from llm4tag.config import settings_from_dict
from llm4tag.encoder import Encoder
from llm4tag.finetune.data import build_examples, write_training_data
from llm4tag.finetune.retrain import evaluate_adapters
from llm4tag.finetune.train import train
from llm4tag.metrics import format_table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="banking77")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "finetune")
    parser.add_argument("--n", type=int, default=100, help="test items (fixed sample, seed 0)")
    parser.add_argument("--train-items", type=int, default=500, help="items to build examples for")
    parser.add_argument("--steps", type=int, help="optimiser steps per adapter (default: config)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--config", type=Path, help="extra settings YAML merged over the data set's")
    args = parser.parse_args()

    for name in args.datasets.split(","):
        data = yaml.safe_load((REPO / "benchmarks" / "configs" / f"{name}.yaml").read_text()) or {}
        if args.config:
            extra = yaml.safe_load(args.config.read_text()) or {}
            for key, value in extra.items():
                data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        data["llm"] = {**data.get("llm", {}), "model": args.model}
        finetune = data.setdefault("finetune", {})
        finetune["device"] = args.device
        finetune.setdefault("data", {})["max_items"] = args.train_items
        if args.steps:
            for machine in ("cpu", "gpu"):
                finetune.setdefault(machine, {})["max_steps"] = args.steps
        settings = settings_from_dict(data)
        encoder = Encoder(settings.encoder)
        ds = load_dataset(name, args.data, settings, encoder, args.cache)
        test_ids = {i.id for i in ds.test}
        assert not test_ids & {i.id for i in ds.train}, "train and test splits overlap"
        sample = random.Random(0).sample(ds.test, min(args.n, len(ds.test)))
        out = args.out / args.model / name
        out.mkdir(parents=True, exist_ok=True)

        started = time.perf_counter()
        gen, cal, stats = build_examples(ds.train, ds.tags, settings, encoder)
        leaked = {e.id for e in gen + cal} & test_ids
        assert not leaked, f"test items in the training data: {sorted(leaked)[:5]}"
        manifest = write_training_data(
            out / "data", {"generator": gen, "calibrator": cal}, {"mode": stats.mode, "dataset": name}
        )
        print(
            f"\n## {name}: training data {manifest['counts']} in {time.perf_counter() - started:.1f} s "
            f"(gold not recalled: {stats.gold_not_recalled}, injected: {stats.injected})",
            flush=True,
        )

        adapters, training = {}, []
        for role in ("generator", "calibrator"):
            target = out / f"{role}-adapter"
            if (target / "training_manifest.json").is_file():
                result = json.loads((target / "training_manifest.json").read_text())
                if result["data"]["hash"] != manifest["hash"]:
                    raise SystemExit(f"{target} was trained on other data: remove it to retrain")
            else:
                result = train(role, out / "data", target, settings)
            adapters[role] = str(target)
            training.append(
                {
                    "adapter": role,
                    "steps": result["steps"],
                    "examples": result["data"]["used"],
                    "loss before": round(result["loss_before"], 4),
                    "loss after": round(result["loss_after"], 4),
                    "train s": result["seconds"],
                    "peak MB": result["peak_memory_mb"],
                    "device": result["device"],
                }
            )
        print(format_table(training, list(training[0])))

        from llm4tag.finetune.retrain import eval_pipeline

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
                            for k in ("precision", "recall", "f1", "acc@1", "coverage@1", "ece", "seconds")
                        },
                    }
                )
                print(f"# {label}: done in {report['seconds']} s", flush=True)
        finally:
            engine.close()
        print(
            f"\n{name}: {len(sample)} test items (seed 0), model {args.model}, "
            f"{platform.machine()} {platform.processor() or ''}".rstrip()
        )
        print(format_table(rows, list(rows[0])))
        (out / "results.json").write_text(
            json.dumps(
                {"training": training, "results": rows, "n": len(sample), "stats": stats.__dict__}, indent=2
            )
        )


if __name__ == "__main__":
    main()
