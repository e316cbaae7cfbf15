#!/usr/bin/env bash
# Idempotent set-up of Annif (the peer users already run) in its own virtualenv, .venv-annif:
# its pins (numpy, scikit-learn, click...) need not agree with ours. Annif's analyzers tokenise with
# NLTK's punkt_tab data, which no package registry we reach ships, so NLTK's own Punkt trainer
# learns it from training texts (the train splits of the shared data, else the bundled sample)
# and writes it where NLTK looks first inside this virtualenv (.venv-annif/nltk_data).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ANNIF_VERSION=1.4.3
if [ ! -x .venv-annif/bin/python ]; then
    "$PYTHON" -m venv .venv-annif
fi
stamp=.venv-annif/.annif-installed
want=$(echo "$ANNIF_VERSION" | cat - scripts/setup_annif.sh scripts/train_punkt_tab.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv-annif/bin/annif ]; then
    exit 0
fi
.venv-annif/bin/python -m pip install -q --upgrade pip 2> >(grep -v "WARNING: Location" >&2 || true)
.venv-annif/bin/python -m pip install -q "annif[omikuji]==$ANNIF_VERSION" 2> >(grep -v "WARNING: Location" >&2 || true)
texts=()
for name in banking77 debian_debtags flipkart_products; do
    if [ -f "../shared/data/$name/items.jsonl.gz" ]; then texts+=("../shared/data/$name/items.jsonl.gz"); fi
done
if [ ${#texts[@]} -eq 0 ]; then
    texts=(data/sample/banking77/train.jsonl data/sample/debtags/train.jsonl)
fi
PYTHONHASHSEED=0 .venv-annif/bin/python scripts/train_punkt_tab.py --out .venv-annif/nltk_data "${texts[@]}"
# The analyzer must now find the data instead of trying to download it.
echo "tokenised: $(.venv-annif/bin/python -c 'import nltk; print(nltk.word_tokenize("Mr. Smith paid twice. Why?"))')"
echo "$want" > "$stamp"
