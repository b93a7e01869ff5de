"""Reading checkpoints that are not ours: diffusers folders (`diffusers.py`) and the hub (`hub.py`).

Nothing is imported here, so `import openimagen.io.hub` stays light; `errors.py` holds the typed errors.
"""
