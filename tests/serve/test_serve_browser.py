"""The page in a real headless browser: Debian's chromium driven by Playwright for Python (never
`playwright install`, which downloads). A missing browser fails the run; it never skips.

Every test checks that the page logged no console error and asked nothing of a non-loopback address."""
import base64
import io
import os
import shutil
import tempfile
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("OPENIMAGEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y --no-install-recommends chromium "
                    "(the page tests never skip)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                       viewport={"width": 1280, "height": 800})
        yield context
        context.close()


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    return start_server(tmp_path_factory.mktemp("browser-gallery"), max_queue=4)


@pytest.fixture
def page(browser):
    page = browser.new_page()
    problems, page.expected_console = [], []  # a test that provokes an error response names it
    page.on("console", lambda m: m.type == "error" and not any(x in m.text for x in page.expected_console)
            and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def only_loopback(route):
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            return route.continue_()
        problems.append(f"non-loopback request: {route.request.url}")
        return route.abort()

    page.route("**/*", only_loopback)
    yield page
    page.close()
    assert problems == []


def _open(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)


def test_generate_shows_progress_a_preview_and_the_image(page, server):
    _open(page, server.url)
    page.fill("#prompt", "a red circle above a blue square")
    page.fill("#seed", "7")
    page.fill("#steps", "6")
    page.click("#generate")
    page.wait_for_selector("#status[data-state='completed']", timeout=30000)
    assert _result_widths(page, 1) == [16]
    assert page.eval_on_selector("#preview", "i => !i.hidden && i.src.includes('/preview.png')")
    assert page.eval_on_selector("#progress", "p => p.value") == 1
    assert page.locator("#gallery figure").count() >= 1
    page.screenshot(path=str(server.app.state.ctx.settings.out_dir / "page.png"))


def _result_widths(page, n: int) -> list[int]:
    """The result images' pixel widths, once n of them have loaded: the status flips when the job ends,
    and the <img> elements load on their own after it."""
    page.wait_for_function("n => { const xs = [...document.querySelectorAll('#result img')];"
                           " return xs.length === n && xs.every(i => i.complete && i.naturalWidth > 0); }",
                           arg=n, timeout=15000)
    return page.eval_on_selector_all("#result img", "xs => xs.map(i => i.naturalWidth)")


def test_quick_candidates_then_upscale_one_from_the_gallery(page, server):
    _open(page, server.url)
    page.fill("#steps", "2")
    page.click("#candidates")
    page.wait_for_selector("#status[data-state='completed']", timeout=30000)
    assert _result_widths(page, 4) == [8, 8, 8, 8]
    page.evaluate("() => { document.querySelector('#status').dataset.state = ''; }")
    page.locator("#gallery figure").first.get_by_role("button", name="upscale").click()
    page.wait_for_selector("#status[data-state='completed']", timeout=30000)
    assert _result_widths(page, 1) == [16]


def test_a_full_queue_shows_the_servers_429_and_a_reload_reattaches(page, server):
    page.expected_console.append("status of 429")  # Chrome logs every error response; this one is the point
    _open(page, server.url)
    page.fill("#steps", "400")
    try:
        for _ in range(6):  # 1 running + max_queue 4 waiting, then 429
            page.click("#generate")
            page.wait_for_timeout(150)
        page.wait_for_selector("#error:not([hidden])", timeout=10000)
        assert "the queue is full; try again in" in page.text_content("#error")
        assert page.locator("#queue li").count() == 5
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_function("document.querySelector('#status').textContent.includes('step')", timeout=20000)
    finally:
        for job in server.queue.snapshot()["pending"] + server.queue.snapshot()["running"]:
            server.queue.cancel(job["id"])
    page.wait_for_function("document.querySelectorAll('#queue li').length === 0", timeout=20000)


def test_cancel_stops_the_running_job_and_empties_the_queue(page, server):
    _open(page, server.url)
    page.fill("#steps", "400")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.includes('step')", timeout=20000)
    page.click("#cancel")
    page.wait_for_selector("#status[data-state='cancelled']", timeout=10000)
    page.wait_for_function("document.querySelectorAll('#queue li').length === 0", timeout=10000)
    assert "cancelled at stage 0" in page.text_content("#status")


def _png_file(tmp_path, size=16):
    img = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8"))
    path = tmp_path / "input.png"
    img.save(path)
    return path


@pytest.mark.parametrize("zoom", [1, 1.5])
def test_a_mask_stroke_arrives_in_image_coordinates(page, server, tmp_path, zoom):
    _open(page, server.url)
    page.select_option("#mode", "inpaint")
    page.set_input_files("#image-file", str(_png_file(tmp_path)))
    page.wait_for_function("document.querySelector('#mask-canvas').width === 16")
    page.fill("#brush", "2")
    page.fill("#steps", "2")
    page.evaluate("z => { document.documentElement.style.zoom = z; }", str(zoom))
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()  # viewport CSS px, zoom included
    assert abs(box["width"] - 256 * zoom) < 2  # the 16 px image is drawn 256 CSS px wide, times the zoom
    y = box["y"] + box["height"] * 0.5  # image row 8.0
    page.mouse.move(box["x"] + box["width"] * 0.25, y)  # image column 4
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=8)  # to column 12
    page.mouse.up()
    with page.expect_request(lambda r: r.url.endswith("/api/v1/jobs") and r.method == "POST") as req:
        page.click("#generate")
    sent = req.value.post_data_json
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(sent["mask"].split(",", 1)[1]))).convert("L"))
    assert mask.shape == (16, 16) and sent["kind"] == "inpaint"
    ys, xs = np.nonzero(mask > 127)
    assert set(ys) == {7, 8} and xs.min() == 3 and xs.max() == 12  # a 2 px brush from (4, 8) to (12, 8)
    page.wait_for_selector("#status[data-state='completed']", timeout=30000)


def test_the_gallery_survives_a_server_restart_and_restores_settings(page, start_server, tmp_path):
    from serve_helpers import sse_events

    first = start_server(tmp_path)
    with httpx.Client(base_url=first.url, timeout=60) as c:
        job = c.post("/api/v1/jobs", json={"prompt": "two green triangles", "seed": 42, "steps": 2}).json()
        assert sse_events(c, job["events_url"])[-1][0] == "completed"
    first.stop()
    second = start_server(tmp_path)
    try:
        _open(page, second.url)
        fig = page.locator(f"#gallery figure[data-id='{job['id']}-0-0']")
        assert fig.count() == 1
        page.wait_for_function(f"document.querySelector(\"figure[data-id='{job['id']}-0-0'] img\").naturalWidth === 16")
        fig.get_by_role("button", name="settings").click()
        page.wait_for_function("document.querySelector('#seed').value === '42'")
        assert page.input_value("#prompt") == "two green triangles" and page.input_value("#steps") == "2"
    finally:
        second.stop()
