"""Schemathesis against the served OpenAPI (issue 18, item 3): the app of tests/test_serve.py (its config:
auth on, limits, queues) serving the production shape, a store with a fitted ranker (the bundled
BANKING77 sample built with `ranking.enabled: on`; the LLM stages scaled to zero: nothing is routed
to them), on the session's local Ray cluster; every operation with a bounded number of examples, every
check (no 5xx; statuses, content types, headers and bodies as documented; schema-valid requests
accepted, invalid ones refused; the keyed routes answer 401 without the key). The LLM path's bodies
are the same schema; tests/test_serve.py checks them on the LLM. Schemathesis's configuration:
tests/schemathesis.toml.

    python -m pytest -s tests/test_fuzz_api.py     # prints operations, test cases, failures

LLM4TAG_FUZZ_EXAMPLES (default 10) and LLM4TAG_FUZZ_SEED (default 18) change the bound and the seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serve import ADMIN, serve_copy

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("LLM4TAG_FUZZ_EXAMPLES", "10"))
SEED = int(os.environ.get("LLM4TAG_FUZZ_SEED", "18"))


def schemathesis_run(url: str, key: str, report: Path, examples: int, seed: int) -> tuple[int, str, dict]:
    """Schemathesis's own command (its run report has the figures): exit code, output, the report."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
        "run", f"{url}/openapi.json",
        "--header", f"Authorization: Bearer {key}",
        "--max-examples", str(examples), "--seed", str(seed),
        "--workers", "1",  # one request at a time: the fuzz load is not an overload test
        "--request-timeout", "120",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr, json.loads(report.read_text())


@pytest.fixture(scope="module")
def served(ray_cluster, ranked_store, tmp_path_factory):
    from ray import serve

    yield serve_copy(ranked_store[0], tmp_path_factory.mktemp("fuzz"))
    serve.shutdown()


def test_every_operation_answers_as_documented(served, tmp_path):
    code, output, report = schemathesis_run(served["url"], ADMIN, tmp_path / "run.json", EXAMPLES, SEED)
    cases = report["test_cases"]
    print(
        f"\nschemathesis {report['schemathesis_version']}, seed {SEED}, "
        f"max {EXAMPLES} examples per operation: "
        f"{report['operations']['tested']}/{report['operations']['total']} operations, "
        f"{cases['generated']} test cases, {cases['unique_failures']} unique failures, "
        f"{len(report['errors'])} errors, {report['running_time']:.0f} s"
    )
    assert report["operations"]["tested"] == report["operations"]["total"] >= 18
    assert code == 0 and cases["unique_failures"] == 0 and not report["errors"], output[-20000:]
