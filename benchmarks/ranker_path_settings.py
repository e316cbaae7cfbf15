"""The ranker path in process, as `llm4tag tag` runs it (``TaggingPipeline.tag_rows``), under settings
that change its speed and not its answers: the encoder's threads and the items per pipeline call.

    python -m benchmarks.ranker_path_settings --store STORE [--dataset banking77] [--threads 1,auto]
        [--calls 16,256] [--rounds 2]

Every combination opens its own pipeline on the same store (a ranked one: its plan sends nothing to
the LLM), is warmed up on 64 items, then tags the data set's whole test split; the combinations run
interleaved, round after round, in one process, so the machine's drift touches them alike. Prints per
round and combination the items/s, each stage's seconds and how many items got a right first tag (the
same in every row, or a setting changed the answers), then the best round of each with its ratio to
the first combination.
"""

from __future__ import annotations

import json
import time

from benchmarks._paths import add_data_arguments, add_dataset_argument, benchmark_parser, names
from llm4tag.config import Settings
from llm4tag.data import read_items
from llm4tag.evaluation.tables import format_table
from llm4tag.pipeline import TaggingPipeline


def threads_value(text: str) -> int | str:
    return text if text == "auto" else int(text)


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--store", required=True, help="a store with a fitted ranking")
    add_dataset_argument(parser)
    add_data_arguments(parser, cache=False)
    parser.add_argument("--threads", type=names, default=["1", "auto"], help="encoder.threads values")
    parser.add_argument(
        "--calls", type=names, default=["16", "256"], help="pipeline.ranker_batch_size values"
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    items = read_items(args.data / args.dataset / "items.jsonl.gz", split="test").items
    gold = {i.id: set(i.tags or ()) for i in items}
    cases = {}
    for threads in map(threads_value, args.threads):
        for call in map(int, args.calls):
            settings = Settings().with_overrides(
                {"encoder": {"threads": threads}, "pipeline": {"ranker_batch_size": call}}
            )
            pipeline = TaggingPipeline.open(args.store, settings, load_engine=False)
            if not pipeline.plan.sends_nothing:
                raise SystemExit(f"{args.store}: its plan sends items to the LLM: not the ranker path")
            pipeline.tag(items[:64])  # warm-up, untimed
            cases[(threads, call)] = pipeline
    best: dict[tuple, float] = {}
    for round_ in range(1, args.rounds + 1):
        for (threads, call), pipeline in cases.items():
            pipeline.times.seconds.clear()
            started = time.perf_counter()
            rows = list(pipeline.tag_rows(items))
            seconds = time.perf_counter() - started
            right = sum(bool(r["tags"]) and r["tags"][0]["tag"] in gold[r["id"]] for r in rows)
            rate = len(items) / seconds
            best[(threads, call)] = max(best.get((threads, call), 0.0), rate)
            stages = {k: round(v, 2) for k, v in pipeline.times.seconds.items()}
            print(
                f"# round {round_}: threads {threads}, {call} items per call: {rate:.1f} items/s "
                f"({seconds:.1f} s; {json.dumps(stages)}), right first tag {right}/{len(items)}",
                flush=True,
            )
    first = next(iter(best.values()))
    table = [
        {
            "encoder.threads": str(threads),
            "items per call": call,
            "items/s (best round)": f"{rate:.1f}",
            "× the first": f"{rate / first:.2f}",
        }
        for (threads, call), rate in best.items()
    ]
    print(f"\n{args.dataset} test split, n = {len(items)}, best of {args.rounds} rounds\n")
    print(format_table(table, list(table[0])))


if __name__ == "__main__":
    main()
