"""DeepFloyd IF checkpoints (diffusers format) on the openimagen engine."""
