"""Every benchmark imports and answers --help, benchmarks/README.md indexes every one, and the docs
name only benchmarks that exist: a rename or a broken import fails here, not the next time someone
runs the script (pure: nothing is measured, no Ray, no model)."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))
BENCHMARKS = [name for name in MODULES if not name.startswith("_")]
# Where the project names a benchmark: the READMEs and docs, and comments in the code.
NAMING = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *(p for p in sorted(REPO.rglob("*.py")) if not {".venv", "out", ".bench-cache"} & set(p.parts)),
]


def test_there_are_benchmarks():
    assert len(BENCHMARKS) >= 15 and "_paths" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(f"benchmarks.{name}")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_answers_help_with_its_module_name_and_docstring(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as stopped:
        module.main(["--help"])
    assert stopped.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: python -m benchmarks.{name} ")
    assert module.__doc__.strip().splitlines()[0] in shown


def test_the_index_lists_every_benchmark():
    index = (REPO / "benchmarks" / "README.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", index, re.M))
    assert listed == set(BENCHMARKS), "benchmarks/README.md's table lists exactly the benchmarks"
    commands = set(re.findall(r"python -m benchmarks\.(\w+)", index))
    assert set(BENCHMARKS) <= commands, "the index gives a command for every benchmark"


def test_the_docs_and_code_name_only_benchmarks_that_exist():
    named: dict[str, set[str]] = {}
    for path in NAMING:
        text = path.read_text(encoding="utf-8")
        # Lower-case names: NAME in a command's pattern, __path__ and the like are not benchmarks.
        for module in re.findall(r"benchmarks[./]([a-z]\w*)", text):
            named.setdefault(module, set()).add(str(path.relative_to(REPO)))
    unknown = {m: sorted(where) for m, where in named.items() if m not in {*MODULES, "README"}}
    assert not unknown, f"benchmarks named but not there: {unknown}"


def test_commands_run_benchmarks_as_modules():
    # `python benchmarks/NAME.py` no longer finds the helpers (the package is imported from the root).
    documents = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
    for path in documents:
        assert not re.search(r"python3? benchmarks/\w+\.py", path.read_text(encoding="utf-8")), path


def test_annif_peer_needs_the_standard_library_alone():
    # It runs in Annif's own virtualenv, which has none of our dependencies: -S leaves them out.
    done = subprocess.run(
        [sys.executable, "-S", "-m", "benchmarks.annif_peer", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "usage: python -m benchmarks.annif_peer" in done.stdout, done.stderr
