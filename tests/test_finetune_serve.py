"""Adapter swap in the served app under load: a real local Ray cluster, the tiny LLM, two real (tiny,
one-step) LoRA adapters. Every request sent while the adapters change is answered 200."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from llm4tag.config import settings_from_dict

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "banking77"
DOMAIN = REPO / "configs" / "banking77.yaml"
QUERIES = [
    "my card still has not arrived",
    "how do I top up with a cheque",
    "why was I charged a fee for a cash withdrawal",
    "I forgot my passcode",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ADMIN = "test-admin-key-0123456789"
WRITER = "test-writer-key-0123456789"


def call(url: str, body=None, timeout: float = 300, key: str | None = ADMIN):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def adapters(sample_store, tmp_path_factory):
    """One generator and one calibrator adapter, trained for one step on 8 sample items."""
    from llm4tag.finetune.train import train
    from llm4tag.finetune.training_data import build_data, read_pool

    folder = tmp_path_factory.mktemp("adapters")
    settings = settings_from_dict(
        {
            **yaml.safe_load(DOMAIN.read_text()),
            "llm": {"model": "tiny"},
            "finetune": {
                "data": {"max_items": 8},
                "cpu": {"max_steps": 1, "batch_size": 1, "grad_accum": 1, "eval_examples": 1},
            },
        }
    )
    items, tags = read_pool(str(SAMPLE / "train.jsonl"), str(SAMPLE / "tags.jsonl"), None)
    build_data(settings, items, tags, folder / "data")
    for role in ("generator", "calibrator"):
        train(role, folder / "data", folder / role, settings, progress=False)
    return folder


@pytest.fixture(scope="module")
def served(ray_cluster, sample_store, adapters, tmp_path_factory):
    from ray import serve

    from deployments.launch import deploy, wait_ready

    folder = tmp_path_factory.mktemp("serve-adapters")
    store = folder / "store"
    shutil.copytree(sample_store, store)
    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    config["http_options"]["port"] = free_port()
    app = config["applications"][0]
    app["args"]["config"] = str(DOMAIN)
    for deployment in app["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    keys = folder / "api-keys"
    keys.write_text(f"write,admin:{ADMIN}\nwrite:{WRITER}\n")
    keys.chmod(0o600)
    app["args"]["service"] = {"auth": {"keys_file": str(keys)}, "adapters_root": str(adapters)}
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    active = folder / "active.json"  # absent at start: the base model serves both roles
    llm = {"model": "tiny", "batch_size": 4, "adapters_file": str(active)}
    url = deploy(path, store=str(store), settings={"llm": llm})
    wait_ready(url, timeout=300)
    yield {"url": url, "active": active}
    serve.shutdown()


def test_adapters_swap_under_load_without_failing_a_request(served, adapters):
    url = served["url"]
    status, ready = call(f"{url}/readyz")
    assert status == 200
    assert (
        ready["stages"]["generator"]["adapter"] is None and ready["stages"]["calibrator"]["adapter"] is None
    )

    # One request first: a cold app admits one LLM request per replica until its first answers
    # measure the replicas' pace (llm4tag/service/admission.py); the swap is tested under load after.
    assert call(f"{url}/v1/tag", {"id": "warm-up", "text": QUERIES[0]})[0] == 200
    results: list[int] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        n = offset
        while not stop.is_set():
            text = QUERIES[n % len(QUERIES)]
            status, _ = call(f"{url}/v1/tag", {"id": f"q{offset}-{n}", "text": text})
            results.append(status)
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 240
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        swapped_at = len(results)
        status, body = call(
            f"{url}/v1/admin/adapter", {"role": "generator", "path": str(adapters / "generator")}
        )
        assert status == 200, body
        assert body["replica"]["adapter"]["path"] == str(adapters / "generator")
        status, body = call(
            f"{url}/v1/admin/adapter", {"role": "calibrator", "path": str(adapters / "calibrator")}
        )
        assert status == 200, body
        while len(results) < swapped_at + 4 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
    assert len(results) >= swapped_at + 4
    assert set(results) == {200}, results

    status, ready = call(f"{url}/readyz")
    generator, calibrator = ready["stages"]["generator"], ready["stages"]["calibrator"]
    assert generator["adapter"]["path"] == "generator" and generator["swaps"] == 1
    assert calibrator["adapter"]["path"] == "calibrator" and calibrator["swaps"] == 1
    assert generator["adapter"]["data_hash"] and generator["error"] is None
    active = json.loads(served["active"].read_text())
    assert active["generator"] == str((adapters / "generator").resolve()) and active["by"] == "admin"

    # Back to the base model for the generator; the calibrator keeps its adapter.
    status, body = call(f"{url}/v1/admin/adapter", {"role": "generator", "path": None})
    assert status == 200 and body["replica"]["adapter"] is None
    assert call(f"{url}/v1/tag", {"id": "after", "text": QUERIES[0]})[0] == 200


def test_a_bad_adapter_request_is_refused_with_the_field_named(served, adapters):
    url = served["url"]
    status, body = call(
        f"{url}/v1/admin/adapter", {"role": "generator", "path": str(adapters / "calibrator")}
    )
    assert status == 422 and body["field"] == "path" and "calibrator adapter" in body["error"]
    status, body = call(f"{url}/v1/admin/adapter", {"role": "judge", "path": None})
    assert status == 422 and body["field"] == "role"
    # Only adapters under service.adapters_root, and only with an admin key.
    for outside in ("/nonexistent", str(adapters.parent), "../"):
        status, body = call(f"{url}/v1/admin/adapter", {"role": "calibrator", "path": outside})
        assert status == 403 and body["field"] == "path" and "adapters root" in body["error"], outside
    for key, expected in ((None, 401), (WRITER, 403)):
        status, body = call(f"{url}/v1/admin/adapter", {"role": "calibrator", "path": None}, key=key)
        assert (status, body["field"]) == (expected, "authorization")
    status, ready = call(f"{url}/readyz")
    assert ready["stages"]["calibrator"]["adapter"]["path"] == "calibrator"  # /readyz shows no paths
