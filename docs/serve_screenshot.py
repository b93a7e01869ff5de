"""Rewrite docs/serve-page.png, the README's picture of `openimagen serve`: the bundled model, a few
candidates in the gallery, taken by Debian's chromium through Playwright (as the page tests do).

    PYTHONPATH=src .venv/bin/python docs/serve_screenshot.py
"""
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def main():
    import torch
    from playwright.sync_api import sync_playwright
    from serve_helpers import Server, sse_events

    from openimagen.load import load_model
    from openimagen.serve import Settings

    torch.set_num_threads(1)
    server = Server(Settings(out_dir=tempfile.mkdtemp(prefix="serve-shot-")), None, load_model(None))
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            for prompt, seed in [("a red circle above a blue square", 1), ("two green triangles", 2),
                                 ("a yellow star on the left", 3)]:
                job = c.post("/api/v1/jobs", json={"prompt": prompt, "seed": seed, "num_images": 2}).json()
                sse_events(c, job["events_url"])
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                       args=FLAGS, viewport={"width": 1280, "height": 720})
            page = ctx.new_page()
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']")
            page.fill("#prompt", "a blue square below a red circle")
            page.fill("#seed", "5")
            page.fill("#steps", "40")
            page.click("#generate")
            page.wait_for_selector("#status[data-state='completed']", timeout=300000)
            time.sleep(0.5)
            page.screenshot(path=str(ROOT / "docs" / "serve-page.png"))
            ctx.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
