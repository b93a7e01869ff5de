"""openimagen: Imagen-style cascaded text-to-image diffusion in PyTorch.

Importing this package is cheap and touches no network: heavy pieces (transformers, accelerate,
webdataset) are imported lazily by the functions that need them.
"""
__version__ = "0.1.0"
