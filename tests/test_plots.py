"""Tests of llm4tag.evaluation.plots: PNG files are written atomically into created folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from llm4tag.evaluation.plots import accuracy_coverage_plot, reliability_diagram
from llm4tag.evaluation.tagging import expected_calibration_error, threshold_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

GOLD = {"i1": ["a", "b", "c"], "i2": ["a"], "i3": ["b", "d"], "i4": ["e"]}
PRED = {
    "i1": [
        {"tag": "a", "confidence": 0.9},
        {"tag": "z", "confidence": 0.45},
        {"tag": "b", "confidence": 0.6},
    ],
    "i2": [{"tag": "q", "confidence": 0.35}, {"tag": "a", "confidence": 0.7}],
    "i3": [{"tag": "b", "confidence": 0.8}, {"tag": "d", "confidence": 0.15}],
}
THRESHOLDS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # the last one prunes everything: nan accuracy, skipped


def _check_png(path: Path, returned: Path) -> None:
    assert returned == path
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5000
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind


def test_reliability_diagram(tmp_path):
    result = expected_calibration_error(
        [(0.0, False), (0.05, True), (0.6, False), (0.7, True), (1.0, True), (0.95, True)], bins=5
    )
    path = tmp_path / "new" / "folder" / "reliability.png"
    _check_png(path, reliability_diagram(result, path, title="test"))
    # overwriting an existing file works too, and a str path is accepted
    first = path.read_bytes()
    _check_png(path, reliability_diagram(result, str(path)))
    assert path.read_bytes() != first  # another title


def test_reliability_diagram_empty_result(tmp_path):
    path = tmp_path / "empty" / "rel.png"
    _check_png(path, reliability_diagram(expected_calibration_error([]), path))


def test_accuracy_coverage_plot_multi(tmp_path):
    curves = {
        "ours": threshold_curve(GOLD, PRED, THRESHOLDS, task="multi"),
        "baseline": threshold_curve(GOLD, {"i1": ["a", "z"]}, THRESHOLDS, task="multi"),
    }
    path = tmp_path / "plots" / "multi" / "acc_cov.png"
    _check_png(path, accuracy_coverage_plot(curves, path, task="multi", title="figure 8"))


def test_accuracy_coverage_plot_single(tmp_path):
    gold = {"s1": ["x"], "s2": ["y"], "s3": ["z"]}
    pred = {
        "s1": [{"tag": "x", "confidence": 0.9}],
        "s2": [{"tag": "q", "confidence": 0.3}],
        "s3": [{"tag": "z", "confidence": 0.55}],
    }
    curves = {"ours": threshold_curve(gold, pred, THRESHOLDS, task="single")}
    path = tmp_path / "single" / "prec_cov.png"
    _check_png(path, accuracy_coverage_plot(curves, path, task="single"))


def test_accuracy_coverage_plot_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="task"):
        accuracy_coverage_plot({"x": []}, tmp_path / "x.png", task="auto")
    with pytest.raises(ValueError, match="at least one curve"):
        accuracy_coverage_plot({}, tmp_path / "x.png", task="multi")
    assert list(tmp_path.iterdir()) == []


def test_import_is_lazy():
    code = (
        "import sys, llm4tag.evaluation.plots, llm4tag.evaluation.tagging; print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
