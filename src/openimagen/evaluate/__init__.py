"""Prompt fidelity on the shapes world: `score(image, caption)` per attribute, `score_many` accuracy."""
from openimagen.evaluate.benchmark import load_benchmark_prompts
from openimagen.evaluate.scorer import ATTRIBUTES, FidelityReport, score, score_many

__all__ = ["ATTRIBUTES", "FidelityReport", "score", "score_many", "load_benchmark_prompts"]
