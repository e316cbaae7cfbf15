"""A worker node lost under load on a real multi-node Ray cluster (cluster/drill.py, tiny LLM).

The drill runs in its own process: it starts its own cluster (head + 3 worker nodes, then a 4th), which
must not meet the session's single-node cluster of the other Serve tests in this interpreter. Its
figures are printed and kept in the report (pytest -s shows them).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_node_loss_under_load_loses_no_acknowledged_feedback(tmp_path, tiny_llm, ray_multinode):
    out = tmp_path / "report.json"
    run = subprocess.run(
        [*ray_multinode, "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    print(run.stdout[-6000:])
    assert out.exists(), run.stderr[-4000:]
    report = json.loads(out.read_text())
    requests, feedback = report["requests"], report["feedback"]

    # No acknowledged feedback is lost: every acked item is in every replica of its shard.
    assert feedback["acked"] > 0 and feedback["acked_before_kill"] > 0
    assert feedback["found_in_every_replica_of_its_shard"] == feedback["acked"], feedback["missing"]
    assert run.returncode == 0, run.stderr[-4000:]

    # Requests kept succeeding: the node loss cost retries, not answers.
    total = requests["total"]
    assert total["sent"] == total["succeeded"] + total["failed"]
    assert total["succeeded"] >= 0.95 * total["sent"], requests
    assert requests["tag"]["succeeded"] > 0

    # The shards' lost replicas came back on the new node, with the journal replayed: each holds
    # as many contents as the survivor of its shard.
    replicas = report["replicas_after"]
    by_shard: dict[str, list[dict]] = {}
    for replica in replicas.values():
        by_shard.setdefault(replica["shard"], []).append(replica)
    for shard, members in by_shard.items():
        assert len(members) == 2, (shard, members)
        assert {m["node"] for m in members} == {"cpu-1", "cpu-3"}, (shard, members)
        assert any(m["new"] for m in members)
        assert len({m["contents"] for m in members}) == 1, (shard, members)
        assert all(m["acked_found"] == m["acked_of_shard"] for m in members), (shard, members)
