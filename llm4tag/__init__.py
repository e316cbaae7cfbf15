"""llm4tag: automatic content tagging after LLM4Tag (graph recall, knowledge-enhanced LLM, calibration)."""

__version__ = "0.1.0"
