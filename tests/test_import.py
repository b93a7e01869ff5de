"""`import openimagen` is fast and touches no network."""
import subprocess
import sys
import time

NO_NETWORK = """
import socket
def refuse(*a, **k):
    raise RuntimeError("network access during import")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


def test_import_is_fast_and_offline():
    code = NO_NETWORK + "import time; t = time.perf_counter(); import openimagen; print(time.perf_counter() - t)"
    subprocess.run([sys.executable, "-c", "import openimagen"], check=True)  # warm the bytecode cache
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert float(out.stdout.strip()) < 2.0


def test_library_modules_import_without_network_or_heavy_dependencies():
    code = NO_NETWORK + (
        "import sys, openimagen.cascade, openimagen.cli, openimagen.load, openimagen.text, openimagen.diffusion\n"
        "heavy = [m for m in ('transformers', 'diffusers', 'accelerate', 'webdataset') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "", f"imported at module load: {out.stdout.strip()}"


def test_public_names_resolve_on_first_use():
    import openimagen
    from openimagen.api import GenerateRequest
    from openimagen.cascade import Cascade

    assert openimagen.Cascade is Cascade and openimagen.GenerateRequest is GenerateRequest
    assert all(getattr(openimagen, name) is not None for name in openimagen.__all__)
