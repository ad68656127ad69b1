"""The app in a real browser: Playwright for Python driving Debian's /usr/bin/chromium against
``python -m cxrbook serve`` on 127.0.0.1 (a subprocess, SQLite).

Register, log out, log in, upload a generated X-ray to a tiny CNN, see the score, the caution, the track
record and the Grad-CAM overlay, log out; a second user is refused the first user's result URL (404).
Screenshots go to outputs/app/. Skipped only outside CI when chromium or playwright is missing; under CI
(``CI`` set) that is a failure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app_support import in_ci, models_dir, png, write_records

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SHOTS = ROOT / "outputs" / "app"
PASSWORD = "browser-pass-1"


def _need(ok: bool, what: str) -> None:
    if not ok:
        if in_ci():
            pytest.fail(f"{what}: the browser test must run in CI (.ci/run installs chromium)", pytrace=False)
        pytest.skip(what)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from benchmarks.app_load import Server
    models = models_dir(tmp_path_factory)
    outputs = tmp_path_factory.mktemp("browser_outputs")
    write_records(outputs, models / "custom_cnn.keras")
    data = tmp_path_factory.mktemp("browser_data")
    with Server(models, data, outputs, workers=1, env={"CXR_APP_DEFAULT_MODEL": "custom_cnn"}) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    _need(Path(CHROMIUM).is_file() or shutil.which("chromium") is not None, f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _register(page, base: str, name: str) -> None:
    page.goto(f"{base}/register")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=confirm]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/upload")


def test_register_login_upload_result_logout_and_isolation(server, browser, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    base = server.url
    image = tmp_path / "chest_xray.png"
    image.write_bytes(png(320, seed=5))

    ctx = browser.new_context(viewport={"width": 1100, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(120_000)  # the first overlay loads TensorFlow in the server
    page.goto(f"{base}/register")
    assert page.locator("#research-banner").inner_text().startswith("RESEARCH TOOL, NOT A DIAGNOSIS")
    _register(page, base, "alice")
    page.click("#logout")
    page.wait_for_url(f"{base}/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/upload")
    page.select_option("select[name=model]", "custom_cnn")
    page.set_input_files("input[name=files]", str(image))
    page.screenshot(path=str(SHOTS / "01_upload.png"), full_page=True)
    page.click("#score")
    page.wait_for_url(f"{base}/results/*")
    result_url = page.url

    assert page.locator("#research-banner").is_visible()
    score = float(page.locator("#score").inner_text())
    assert 0.0 <= score <= 1.0
    decision = page.locator("#decision").inner_text()
    assert decision == ("covid" if score >= 0.5 else "normal")
    assert page.locator("#caution").inner_text().startswith("caution: trained on adult COVID-19")
    track = page.locator("#track-record").inner_text()
    assert track.startswith("Track record: On its internal test set (40 images of 20 patients")
    assert "from Hannover, a hospital it never saw" in track
    overlay = page.locator("#overlay")
    overlay.wait_for()
    assert page.evaluate("document.getElementById('overlay').complete && "
                         "document.getElementById('overlay').naturalWidth") >= 480
    page.screenshot(path=str(SHOTS / "02_result.png"), full_page=True)

    page.click("#logout")
    page.wait_for_url(f"{base}/login")
    assert page.goto(result_url).url == f"{base}/login"  # logged out: the result is not shown
    ctx.close()

    other = browser.new_context(viewport={"width": 1100, "height": 600})
    page = other.new_page()
    _register(page, base, "bob")
    response = page.goto(result_url)
    assert response.status == 404
    assert "No such result" in page.content() and "Track record" not in page.content()
    assert page.goto(result_url + "/overlay.png").status == 404
    page.goto(result_url)
    page.screenshot(path=str(SHOTS / "03_other_user_refused.png"), full_page=True)
    other.close()
