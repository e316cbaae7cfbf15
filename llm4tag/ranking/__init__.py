"""Learning from the annotations: learned recall, a fitted and calibrated ranker, routing rules.

No Ray here; the store's graph recall (graph_store) and the encoder's vectors are inputs. The
entry points are in :mod:`llm4tag.ranking.models`.
"""

from llm4tag.ranking.crossfit import (
    Annotated,
    HeldOut,
    assign_folds,
    held_out_candidates,
    plan_held_out_tags,
)
from llm4tag.ranking.features import FEATURES, FEW, LEARNED, CandidateFeatures, CandidateSet, FewTags
from llm4tag.ranking.learned import LearnedConfig, LearnedRecall
from llm4tag.ranking.models import RankingModels, ScoredTag, fit_ranking, is_multi
from llm4tag.ranking.provenance import LeakError
from llm4tag.ranking.ranker import Ranker, RankerConfig
from llm4tag.ranking.routing import TauChoice, choose_tau, precision_cut

__all__ = [
    "FEATURES",
    "FEW",
    "LEARNED",
    "Annotated",
    "CandidateFeatures",
    "CandidateSet",
    "FewTags",
    "HeldOut",
    "LeakError",
    "LearnedConfig",
    "LearnedRecall",
    "Ranker",
    "RankerConfig",
    "RankingModels",
    "ScoredTag",
    "TauChoice",
    "assign_folds",
    "choose_tau",
    "fit_ranking",
    "held_out_candidates",
    "is_multi",
    "plan_held_out_tags",
    "precision_cut",
]
