"""`openimagen serve`: a local web page and HTTP API over one warm model (the optional `serve` extra).

    from openimagen.serve import Settings, create_app
    app = create_app(Settings(out_dir="gallery/"), model=None)   # the bundled model; uvicorn.run(app)

Layout: settings.py (limits and flags), jobs.py (the bounded queue and one worker thread per device),
gallery.py (finished images on disk and their index), inputs.py (request bodies -> library requests),
api_v1.py (our API), compat_a1111.py and compat_openai.py (existing clients), security.py (host, origin,
token, body limits), app.py (assembly), static/ (the page). FastAPI is imported only by app.py and the
route modules, so `import openimagen` stays light.
"""
from .settings import Settings


def create_app(*args, **kwargs):
    from .app import create_app as create

    return create(*args, **kwargs)


__all__ = ["Settings", "create_app"]
