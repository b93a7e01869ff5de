"""openimagen: Imagen-style cascaded text-to-image diffusion in PyTorch.

    import openimagen
    result = openimagen.run(openimagen.GenerateRequest(prompt="a red circle above a blue square"))

Importing this package is cheap and touches no network: the public names below are looked up on first
use, and heavy pieces (torch, transformers, accelerate, webdataset) are imported by the code that needs them.
"""
__version__ = "0.1.0"

_PUBLIC = {
    "Cascade": "cascade", "CascadeOutput": "cascade", "load_model": "load",
    "GenerateRequest": "api", "GenerateResult": "api", "run": "api", "write_pngs": "api",
    "GenerationCancelled": "sampling", "sample_stage": "sampling",
    "EditRequest": "edit_request", "run_edit": "edit_request",
    "img2img": "editing", "inpaint": "editing", "outpaint": "editing", "upscale": "editing",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'openimagen' has no attribute {name!r}")
