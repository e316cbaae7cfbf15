"""`llm4tag eval`: score the output of `llm4tag tag` or `llm4tag recall` against gold annotations."""

from __future__ import annotations

from pathlib import Path

from llm4tag.cli.common import write_report
from llm4tag.evaluation.predictions import evaluate_predictions, write_plots


def register(verbs) -> None:
    evaluate = verbs.add_parser("eval", help="score predictions against gold annotations")
    evaluate.add_argument("--gold", required=True, help="items with their gold 'tags'")
    evaluate.add_argument("--pred", required=True, help="output of `llm4tag tag` or `llm4tag recall`")
    evaluate.add_argument("-k", type=int, default=20, help="recall output: candidates scored (default 20)")
    evaluate.add_argument("--split", help="score only gold items of this split")
    evaluate.add_argument("--task", choices=["auto", "single", "multi"], default="auto")
    evaluate.add_argument("--plots", help="tag output: write reliability and accuracy-coverage PNGs here")
    evaluate.add_argument("--output", help="also write the metrics as JSON here")
    evaluate.set_defaults(run=run)


def run(args) -> int:
    evaluation = evaluate_predictions(args.gold, args.pred, k=args.k, split=args.split, task=args.task)
    print(evaluation.table)
    if args.plots and evaluation.kind == "tags":
        write_plots(evaluation, args.plots)
        folder = Path(args.plots)
        print(f"plots: {folder / 'reliability.png'}, {folder / 'accuracy_coverage.png'}")
    if args.output:
        write_report(args.output, evaluation.report)
    return 0
