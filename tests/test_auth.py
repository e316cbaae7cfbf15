"""API keys of the HTTP service (llm4tag/service/auth.py) and the adapter swap's adapters root (no Ray)."""

from __future__ import annotations

import os
import stat

import pytest

import llm4tag.service.auth
from llm4tag.engines.adapters import OutsideAdaptersRoot, under_adapters_root
from llm4tag.errors import ConfigError
from llm4tag.service.auth import ApiKeys, Auth, AuthError, ensure_key_file
from llm4tag.service.settings import ServiceConfig

WRITER = "writer-key-0123456789"
ADMIN = "admin-key-0123456789abc"
KEYS = f"# comment\nwrite:{WRITER}\nwrite,admin:{ADMIN}  # the operator\n"


def status(keys: ApiKeys, header: str | None, scope: str | None) -> int:
    try:
        keys.check(header, scope)
    except AuthError as exc:
        return exc.status
    return 200


def test_missing_wrong_and_wrong_scope_keys_are_401_401_403():
    keys = ApiKeys.parse(KEYS, "test")
    assert status(keys, f"Bearer {ADMIN}", "admin") == 200
    assert status(keys, f"bearer {WRITER}", "write") == 200
    assert status(keys, f"Bearer {WRITER}", None) == 200
    assert status(keys, None, "write") == 401
    assert status(keys, "", "write") == 401
    assert status(keys, "Bearer ", "write") == 401
    assert status(keys, f"Basic {WRITER}", "write") == 401
    assert status(keys, f"Bearer {WRITER}x", "write") == 401
    assert status(keys, f"Bearer {WRITER[:-1]}", "write") == 401
    assert status(keys, f"Bearer {WRITER}", "admin") == 403
    # No keys at all: the routes stay closed.
    assert status(ApiKeys.parse("", "nowhere"), f"Bearer {ADMIN}", "write") == 401


def test_a_key_names_its_holder_or_is_named_by_its_fingerprint():
    keys = ApiKeys.parse(f"labeller.ann-1=write:{WRITER}\nwrite,admin:{ADMIN}", "test")
    assert keys.check(f"Bearer {WRITER}", "write") == "labeller.ann-1"
    fingerprint = keys.check(f"Bearer {ADMIN}", "admin")
    assert fingerprint.startswith("key-") and len(fingerprint) == 12 and ADMIN not in fingerprint
    assert fingerprint == ApiKeys.parse(f"admin:{ADMIN}", "again").check(f"Bearer {ADMIN}", None)  # stable
    for bad in (f"=write:{WRITER}", f"a b=write:{WRITER}", f"{'n' * 65}=write:{WRITER}", f"é=write:{WRITER}"):
        with pytest.raises(ConfigError):
            ApiKeys.parse(bad, "test")


def test_every_key_is_compared_in_constant_time(monkeypatch):
    compared = []

    def compare(a, b):
        compared.append((len(a), len(b)))
        return a == b

    monkeypatch.setattr(llm4tag.service.auth.hmac, "compare_digest", compare)
    keys = ApiKeys.parse(KEYS, "test")
    assert keys.scopes_of(f"Bearer {WRITER}") == {"write"}  # the first key matches...
    assert compared == [(32, 32), (32, 32)]  # ...and the second is compared too, digest to digest


@pytest.mark.parametrize(
    "bad",
    [f"{WRITER}", f"read:{WRITER}", f":{WRITER}", "write:", "write:short", f"write,root:{WRITER}"],
)
def test_malformed_key_entries_are_refused(bad):
    with pytest.raises(ConfigError, match=r"keys\.txt"):
        ApiKeys.parse(bad, "keys.txt")


def test_keys_come_from_the_variable_first_then_a_private_file(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    auth = Auth(keys_env="TEST_LLM4TAG_KEYS", keys_file=str(path))
    monkeypatch.delenv("TEST_LLM4TAG_KEYS", raising=False)
    assert ApiKeys.load(auth).digests == ()  # neither: no keys (every guarded route answers 401)
    path.write_text(KEYS)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        ApiKeys.load(auth)
    path.chmod(0o600)
    assert len(ApiKeys.load(auth).digests) == 2
    monkeypatch.setenv("TEST_LLM4TAG_KEYS", f"admin:{ADMIN}")
    keys = ApiKeys.load(auth)
    assert keys.source == "$TEST_LLM4TAG_KEYS" and keys.scopes_of(f"Bearer {ADMIN}") == {"admin"}


def test_serve_writes_a_key_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_LLM4TAG_KEYS", raising=False)
    path = tmp_path / "config" / "llm4tag" / "api-keys"
    auth = Auth(keys_env="TEST_LLM4TAG_KEYS", keys_file=str(path))
    assert ensure_key_file(auth) == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys = ApiKeys.load(auth)
    key = next(line.split(":", 1)[1] for line in path.read_text().splitlines() if not line.startswith("#"))
    assert keys.scopes_of(f"Bearer {key}") == {"write", "admin"} and len(key) > 40
    before = path.read_text()
    assert ensure_key_file(auth) is None and path.read_text() == before  # never overwritten
    monkeypatch.setenv("TEST_LLM4TAG_KEYS", f"write:{WRITER}")
    other = Auth(keys_env="TEST_LLM4TAG_KEYS", keys_file=str(tmp_path / "unused"))
    assert ensure_key_file(other) is None and not (tmp_path / "unused").exists()
    assert ensure_key_file(Auth(enabled=False, keys_file=str(tmp_path / "off"))) is None


def test_auth_is_on_unless_turned_off_explicitly():
    assert ServiceConfig.load({}).auth.enabled
    for off in (False, "off", "OFF"):
        assert not ServiceConfig.load({"auth": off}).auth.enabled
    for bad in (True, "no", "on", {"enable": False}):
        with pytest.raises(ConfigError):
            ServiceConfig.load({"auth": bad})


def test_adapter_swaps_load_only_folders_under_the_root(tmp_path):
    root = tmp_path / "adapters"
    (root / "generator-v2").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    assert under_adapters_root(root, "generator-v2") == (root / "generator-v2").resolve()
    assert under_adapters_root(root, str(root / "generator-v2")) == (root / "generator-v2").resolve()
    for bad in ("../elsewhere", str(tmp_path / "elsewhere"), "escape", ".", "/etc", "generator-v2/../.."):
        with pytest.raises(OutsideAdaptersRoot, match="adapters root"):
            under_adapters_root(root, bad)
