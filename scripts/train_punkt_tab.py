"""Make NLTK's ``punkt_tab`` data (english) with NLTK's own Punkt trainer, so Annif's analyzers run
without a download. Runs in .venv-annif (scripts/setup_annif.sh).

    python scripts/train_punkt_tab.py --out DIR items.jsonl[.gz] ...

Reads the ``text`` of every record whose ``split`` is ``train`` (or that has no split), trains
``PunktTrainer`` over them (unsupervised: it learns abbreviations, collocations and sentence
starters), and writes the four files ``PunktTokenizer`` loads into DIR/tokenizers/punkt_tab/english/
with ``nltk.tokenize.punkt.save_punkt_params``. With PYTHONHASHSEED=0 (as setup_annif.sh runs it) the
files depend only on the input texts, byte for byte (the parameters are sets).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def train_texts(paths: list[str]) -> list[str]:
    texts = []
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                if record.get("split", "train") == "train" and record.get("text"):
                    texts.append(" ".join(str(record["text"]).split()))
    return texts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="an NLTK data folder")
    parser.add_argument("items", nargs="+")
    args = parser.parse_args()
    from nltk.tokenize.punkt import PunktTrainer, save_punkt_params

    texts = train_texts(args.items)
    if not texts:
        print("no training texts found", file=sys.stderr)
        return 2
    trainer = PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True
    # One paragraph per item: Punkt reads a blank line as a paragraph break.
    trainer.train("\n\n".join(texts), finalize=True)
    params = trainer.get_params()
    target = args.out / "tokenizers" / "punkt_tab" / "english"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".english-", dir=target.parent))
    try:
        save_punkt_params(params, dir=str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"punkt_tab (english) from {len(texts)} texts: {len(params.abbrev_types)} abbreviations, "
        f"{len(params.collocations)} collocations, {len(params.sent_starters)} sentence starters -> {target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
