"""Which learned-recall model: measured on a held-out fold of each shared set's TRAIN split.

    python -m benchmarks.learned_recall [--datasets banking77,...] [--folds 5]

Fits each candidate model (llm4tag.ranking.learned) on the other folds of train and scores fold 0
(never the test split): top-1 precision (single-tag sets) or Acc@1/Acc@3 (multi-tag), hit rate of
the gold tag among the top 20 (what recall needs), fit seconds and ms per item to predict.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks._datasets import load_dataset
from benchmarks._paths import add_data_arguments, add_datasets_argument, benchmark_parser, names
from llm4tag.config import Settings
from llm4tag.encoder import Encoder
from llm4tag.evaluation.recall_metrics import recall_metrics
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import evaluate_tagging
from llm4tag.ranking.crossfit import assign_folds
from llm4tag.ranking.learned import LearnedConfig, LearnedRecall

VARIANTS = {
    "omikuji words": LearnedConfig(kind="omikuji", embeddings=False, ngram_max=1),
    "omikuji words 1-2": LearnedConfig(kind="omikuji", embeddings=False),
    "omikuji words 1-2 + embedding": LearnedConfig(kind="omikuji", embeddings=True),
    "linear words 1-2 + embedding": LearnedConfig(kind="linear", embeddings=True),
}


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__file__, __doc__)
    add_data_arguments(parser)
    add_datasets_argument(parser)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--variants", type=names, default=list(VARIANTS), help=", ".join(VARIANTS))
    args = parser.parse_args(argv)
    settings = Settings()
    encoder = Encoder(settings.encoder)
    rows = []
    for name in args.datasets:
        ds = load_dataset(name, args.data, settings, encoder, args.cache)
        ids = [i.id for i in ds.train]
        fold = assign_folds(ids, args.folds)
        fit_idx, val_idx = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)
        gold = {ds.train[i].id: set(ds.train[i].tags or ()) for i in val_idx}
        for label in args.variants:
            config = VARIANTS[label]
            model = LearnedRecall.fit(
                ids=[ids[i] for i in fit_idx],
                texts=[ds.train[i].text for i in fit_idx],
                vectors=ds.train_vectors[fit_idx],
                item_tags=[list(ds.train[i].tags or ()) for i in fit_idx],
                tags=[t.tag for t in ds.tags],
                encoder_id=encoder.id,
                config=config,
                exclude_ids=[ids[i] for i in val_idx],
            )
            started = time.perf_counter()
            preds = model.predict([ds.train[i].text for i in val_idx], ds.train_vectors[val_idx], 20)
            predict_s = time.perf_counter() - started
            ranked = {ids[i]: [t for t, _ in p] for i, p in zip(val_idx, preds, strict=True)}
            report = evaluate_tagging(gold, {k: v[: 1 if len(v) else 0] for k, v in ranked.items()})
            multi = evaluate_tagging(gold, {k: v[:5] for k, v in ranked.items()}, task="multi")
            hits = recall_metrics(gold, ranked, k=20)
            rows.append(
                {
                    "data set": name,
                    "model": label,
                    "held-out items": len(val_idx),
                    "P@1 / Acc@1": report["precision"],
                    "Acc@3": multi["acc@3"],
                    "HR#1@20": hits["hr1"],
                    "#Right@20": hits["right"],
                    "fit s": round(model.fit_seconds, 1),
                    "ms/item": round(1000 * predict_s / len(val_idx), 2),
                }
            )
            print(rows[-1], flush=True)
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
