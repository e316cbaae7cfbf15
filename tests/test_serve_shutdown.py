"""`kill -TERM` of `llm4tag serve`: the requests in flight are answered, the command exits 0 and says so
in one line, with no trace (Ray's own handler of a local cluster's node tore it down at once and
exited 1). The command starts its own local cluster in a child process, so the test is marked ray by
hand (no fixture of tests/conftest.py gives it); the store is the sample store with a ranking."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from test_serve import DOMAIN, QUERIES, REPO, call, free_port

from llm4tag.data import read_items

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_sigterm_answers_the_requests_in_flight_and_exits_0_with_one_line(ranked_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(ranked_store[0], store)
    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["config"] = str(DOMAIN)
    app["args"]["service"]["auth"] = "off"
    app["args"]["settings"]["llm"] = {"model": "tiny", "engine": "llamacpp", "threads": 1}
    for deployment in app["deployments"]:
        deployment["ray_actor_options"] = {"num_cpus": 0.1}
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster of its own
    command = [sys.executable, "-m", "llm4tag", "serve", "--config", str(path), "--store", str(store)]
    server = subprocess.Popen(
        [*command, "--metrics-port", str(free_port())],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("serving at") for line in lines):
            assert server.poll() is None and time.monotonic() < deadline, lines
            lines.append(server.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        items = [{"id": i.id, "text": i.text} for i in read_items(QUERIES).items[:32]]
        sent: list[tuple[float, float, int]] = []  # (sent, answered, status)
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = call(f"{url}/v1/tag", {"items": items}, timeout=120, key=None)[0]
                except OSError:
                    status = 0  # refused: the service is gone
                sent.append((started, time.monotonic(), status))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(5)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=180)
        stop.set()
        for thread in clients:
            thread.join(150)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    in_flight = [status for started, answered, status in sent if started < signalled < answered]
    # Requests in flight at SIGTERM were answered (one that had not reached the ingress yet may be
    # refused with a 503, never failed).
    assert 200 in in_flight and set(in_flight) <= {200, 503}, sent
    assert {status for started, _, status in sent if started < signalled} <= {200, 503}, sent
    assert server.returncode == 0, err[-2000:]
    said = [line for line in out.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("llm4tag serve: stopped on SIGTERM"), out
    assert "Traceback" not in err and "SIGTERM" not in err, err[-2000:]
