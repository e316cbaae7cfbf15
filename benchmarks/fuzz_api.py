"""Schemathesis against the served API: operations, test cases, failures (issue 18, item 3).

    python -m benchmarks.fuzz_api [--examples 20] [--seed 18]

Runs tests/test_fuzz_api.py (the real app on a private local Ray cluster: tiny LLM, the BANKING77 sample
store, auth on; Schemathesis's configuration in tests/schemathesis.toml) and shows the line it prints:
schemathesis version, seed, bound, operations tested, test cases generated, unique failures, errors,
seconds. The exit code is pytest's (non-zero when Schemathesis found anything).
"""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks._paths import REPO, add_seed_argument, benchmark_parser


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--examples", type=int, default=20, help="at most this many per operation")
    add_seed_argument(parser, 18, "Schemathesis's seed (default 18)")
    args = parser.parse_args(argv)
    env = os.environ | {"LLM4TAG_FUZZ_EXAMPLES": str(args.examples), "LLM4TAG_FUZZ_SEED": str(args.seed)}
    env.pop("RAY_ADDRESS", None)  # a private local cluster, never someone else's
    command = [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", "tests/test_fuzz_api.py"]
    return subprocess.run(command, cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
