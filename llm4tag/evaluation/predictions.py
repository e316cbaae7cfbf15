"""Scoring a prediction file (what `llm4tag tag` or `llm4tag recall` wrote) against gold annotations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm4tag.data import read_items, read_records
from llm4tag.errors import DataError, LLM4TagError
from llm4tag.evaluation.plots import accuracy_coverage_plot, reliability_diagram
from llm4tag.evaluation.recall_metrics import recall_metrics
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import evaluate_tagging

RECALL_KEYS = ["items", "k", "right", "hr1", "hr2", "hr3", "missing_predictions"]
RECALL_HEADERS = {"right": "#Right", "hr1": "HR#1", "hr2": "HR#2", "hr3": "HR#3"}


@dataclass
class Predictions:
    kind: str | None  # "tags" (output of `llm4tag tag`) or "candidates" (of `llm4tag recall`)
    predicted: dict[str, list] = field(default_factory=dict)
    dropped: dict[str, list] = field(default_factory=dict)  # tags calibration dropped (--dropped)


@dataclass
class Evaluation:
    kind: str | None
    report: dict[str, Any]  # every figure (written by --output)
    table: str  # the printed summary


def _list_field(path, line: int, row: dict, name: str) -> list:
    value = row[name]
    if isinstance(value, str):  # CSV holds lists as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not a JSON list: {exc.msg}", line=line, field=name) from exc
    if not isinstance(value, list):
        raise DataError(path, "must be a list", line=line, field=name)
    return value


def read_predictions(path: str | Path) -> Predictions:
    out = Predictions(None)
    for line, row in read_records(path):
        if "id" not in row:
            raise DataError(path, "missing id", line=line, field="id")
        row_kind = "tags" if "tags" in row else "candidates" if "candidates" in row else None
        if row_kind is None:
            raise DataError(
                path,
                "missing tags (output of `llm4tag tag`) or candidates (output of `llm4tag recall`)",
                line=line,
                field="tags",
            )
        if out.kind is not None and row_kind != out.kind:
            raise DataError(path, f"mixes rows with {out.kind} and rows with {row_kind}", line=line)
        out.kind = row_kind
        out.predicted[str(row["id"])] = _list_field(path, line, row, row_kind)
        if "dropped" in row:
            out.dropped[str(row["id"])] = _list_field(path, line, row, "dropped")
    return out


def evaluate_predictions(
    gold_path: str | Path,
    pred_path: str | Path,
    *,
    k: int = 20,
    split: str | None = None,
    task: str = "auto",
) -> Evaluation:
    """Recall output: the paper's #Right and HR#1/2/3 (table 2). Tag output: Acc@k or P/R/F1,
    Coverage@k, ECE; tags written with --dropped come back in below the threshold for the curve."""
    if k < 1:
        raise LLM4TagError(f"-k must be at least 1, got {k}")
    gold_items = read_items(gold_path, split=split, require_tags=True)
    gold = {item.id: set(item.tags or ()) for item in gold_items}
    predictions = read_predictions(pred_path)
    if predictions.kind == "tags":
        return _evaluate_tags(pred_path, gold, predictions, task)
    metrics = recall_metrics(gold, predictions.predicted, k=k)
    table = format_table([metrics], RECALL_KEYS)
    for key, header in RECALL_HEADERS.items():
        table = table.replace(f"| {key} |", f"| {header} |")
    return Evaluation(predictions.kind, metrics, table)


def _evaluate_tags(pred_path, gold, predictions: Predictions, task: str) -> Evaluation:
    try:
        report = evaluate_tagging(gold, predictions.predicted, task=task)
        if predictions.dropped:
            # The threshold curve re-admits what the calibrator dropped at lower thresholds.
            everything = {
                i: list(predictions.predicted.get(i, [])) + list(predictions.dropped.get(i, []))
                for i in set(predictions.predicted) | set(predictions.dropped)
            }
            full = evaluate_tagging(gold, everything, task=report["task"])
            report["threshold_curve"] = full["threshold_curve"]
            report["calibration"] = full["calibration"]
    except ValueError as exc:
        raise LLM4TagError(f"cannot score {pred_path}: {exc}") from exc
    keys = (
        ["items", "precision", "recall", "f1"]
        if report["task"] == "single"
        else ["items", "acc@1", "acc@2", "acc@3"]
    )
    keys += ["coverage@1", "coverage@2", "coverage@3", "tags_per_item"]
    row = {k: report.get(k) for k in keys}
    if report.get("calibration"):
        row["ECE"] = report["calibration"]["ece"]
    table = f"task: {report['task']}\n" + format_table([row], list(row))
    return Evaluation("tags", report, table)


def write_plots(evaluation: Evaluation, folder: str | Path) -> list[Path]:
    """Tag output: the reliability diagram and the accuracy-versus-coverage curve as PNGs."""
    folder = Path(folder)
    report = evaluation.report
    written = []
    if report.get("calibration"):
        written.append(reliability_diagram(report["calibration"], folder / "reliability.png"))
    written.append(
        accuracy_coverage_plot(
            {"llm4tag": report["threshold_curve"]}, folder / "accuracy_coverage.png", report["task"]
        )
    )
    return written
