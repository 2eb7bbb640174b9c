"""The Space in a real browser: Debian's chromium, headless, driven by Playwright (no `playwright install`).

Chromium comes from `scripts/install_chromium.sh` (CI runs it when absent). The app runs the tiny random pipeline
unless ``VINCIE_SPACE_TINY`` is set otherwise. Set ``VINCIE_SPACE_SCREENSHOT=<png>`` to also keep the two-turn
screenshot; docs/space-screenshot.png is made with the shipped default model::

    VINCIE_SPACE_TINY=0 VINCIE_SPACE_SCREENSHOT=docs/space-screenshot.png pytest tests/test_space_browser.py
"""

import os
import shutil
import socket
from pathlib import Path

import pytest
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "space"

pytestmark = pytest.mark.timeout(180)


def chromium_executable() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Debian's chromium is not installed: run `bash scripts/install_chromium.sh`.")


@pytest.fixture(scope="module")
def url():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINCIE_SPACE_TINY", os.environ.get("VINCIE_SPACE_TINY", "1"))
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        app = load_script(SPACE / "app.py", "space_app", register=True)
        demo = app.build_demo(app.load_model())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=app.CSS)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_browser_uploads_edits_twice_shows_the_results_and_restores(url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.locator("#source input[type=file]").set_input_files(str(SPACE / "examples" / "scene_1.png"))
        expect(page.locator("#source img")).to_be_visible()

        instruction = page.locator("#instruction textarea")
        # the first two instructions of the held-out synthetic session scene_1.png comes from
        for k, text in enumerate(["make the yellow square smaller", "move the yellow square left"], start=1):
            if k == 2:
                page.locator("#chain input").check()  # chain of editing: the predicted masks are shown
            instruction.fill(text)
            page.locator("#edit").click()
            expect(page.locator("#history img")).to_have_count(k + 1)  # source + one image per turn
            expect(page.locator("#status")).to_contain_text(f"{k} turn")
        expect(page.locator("#result img")).to_be_visible()
        natural_width = page.locator("#result img").evaluate("img => img.complete ? img.naturalWidth : 0")
        assert natural_width > 0, "the result image did not load"
        expect(page.locator("#history")).to_contain_text("2 · move the yellow square left")
        expect(page.locator("#masks img")).to_have_count(2)  # current and next region of turn 2

        shot = tmp_path / "space.png"
        page.screenshot(path=str(shot), full_page=True)

        page.locator("#history button.thumbnail-item").nth(1).click()  # turn 1
        expect(page.locator("#turn input")).to_have_value("1")
        page.locator("#restore").click()
        expect(page.locator("#status")).to_contain_text("Branch 2 of 2 · 1 turn")
        expect(page.locator("#history img")).to_have_count(2)
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("VINCIE_SPACE_SCREENSHOT"):
        shutil.copy(shot, os.environ["VINCIE_SPACE_SCREENSHOT"])
