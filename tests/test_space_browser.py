"""The Space in a real browser: Debian's chromium, headless, driven by Playwright (no `playwright install`).

Every path of the page is used as a user would: upload, a painted region, the negative prompt, chain of editing,
drag, restore, undo, reset, the story tab and the multi-concept tab. Chromium comes from
`scripts/install_chromium.sh` (CI runs it when absent). The app runs the tiny random pipeline unless
``VINCIE_SPACE_TINY`` is set otherwise. Set ``VINCIE_SPACE_SCREENSHOT=<png>`` to also keep the screenshot of the
three-turn session; docs/space-screenshot.png is made with the shipped default model::

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


@pytest.fixture()
def page(url):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # an edit on 2 shared CPU cores can take longer than the 5 s default
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable(), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.set_default_timeout(60_000)
        page.goto(url)
        yield page
        browser.close()


BRIGHT_PIXELS = """img => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let bright = 0;
    for (let i = 0; i < data.length; i += 4) bright += data[i] > 127;
    return [bright, canvas.width * canvas.height];
}"""  # white pixels of a mask image, and all of its pixels


def paint_stroke(page, fractions=((0.35, 0.35), (0.6, 0.55))) -> None:
    """Drags the brush across the region editor's canvas, between two points given as fractions of the canvas."""
    page.locator("#region button[aria-label='Brush']").first.click()
    box = page.locator("#region canvas").last.bounding_box()
    (x0, y0), (x1, y1) = ((box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in fractions)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=12)
    page.mouse.up()


def set_slider(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.blur()  # not Enter: the region editor also listens to key presses and stops updating


def test_browser_paints_edits_drags_restores_and_undoes(page, tmp_path):
    from playwright.sync_api import expect

    page.locator("#source input[type=file]").set_input_files(str(SPACE / "examples" / "scene_1.png"))
    expect(page.locator("#source img")).to_be_visible()
    page.locator("#advanced").get_by_text("Advanced settings").click()
    page.locator("#negative textarea").fill("blurry, low quality")

    page.locator("#region-panel").get_by_text("Region").first.click()
    expect(page.locator("#region canvas").last).to_be_visible()
    page.wait_for_timeout(500)  # the editor draws the uploaded source as its background
    paint_stroke(page)

    instruction = page.locator("#instruction textarea")
    # the first two instructions of the held-out synthetic session scene_1.png comes from
    instruction.fill("make the yellow square smaller")
    page.locator("#edit").click()
    expect(page.locator("#history img")).to_have_count(2)  # source + one image per turn
    expect(page.locator("#masks")).to_contain_text("1 · current region")
    bright, total = page.locator("#masks img").first.evaluate(BRIGHT_PIXELS)
    assert 0 < bright < total / 2, (bright, total)  # the painted stroke, not the whole image, is the region

    page.locator("#chain input").check()  # chain of editing: the predicted masks are shown
    instruction.fill("move the yellow square left")
    page.locator("#edit").click()
    expect(page.locator("#status")).to_contain_text("2 turns")
    expect(page.locator("#masks img")).to_have_count(4)

    set_slider(page, "move-x", 20)  # nothing painted: the model predicts the region, which is moved
    instruction.fill("move the yellow square right")
    page.locator("#drag").click()
    expect(page.locator("#status")).to_contain_text("3 turns")
    expect(page.locator("#history")).to_contain_text("3 · move the yellow square right")
    expect(page.locator("#masks img")).to_have_count(6)
    expect(page.locator("#result img")).to_be_visible()
    natural_width = page.locator("#result img").evaluate("img => img.complete ? img.naturalWidth : 0")
    assert natural_width > 0, "the result image did not load"

    if os.environ.get("VINCIE_SPACE_SCREENSHOT"):  # the docs' picture shows the region editor settled
        page.wait_for_timeout(1500)  # its repaint follows the drag; headless software WebGL takes a while
        expect(page.locator("#region .progress-text")).to_have_count(0, timeout=180_000)
    shot = tmp_path / "space.png"
    page.screenshot(path=str(shot), full_page=True)

    page.locator("#history button.thumbnail-item").nth(1).click()  # turn 1
    expect(page.locator("#turn input")).to_have_value("1")
    page.locator("#restore").click()
    expect(page.locator("#status")).to_contain_text("Branch 2 of 2 · 1 turn")
    expect(page.locator("#history img")).to_have_count(2)
    page.locator("#undo").click()
    expect(page.locator("#status")).to_contain_text("0 turns. Undid the last turn.")
    page.locator("#reset").click()
    expect(page.locator("#status")).to_contain_text("Session cleared.")
    expect(page.locator("#history img")).to_have_count(0)
    assert shot.stat().st_size > 10_000
    if os.environ.get("VINCIE_SPACE_SCREENSHOT"):
        shutil.copy(shot, os.environ["VINCIE_SPACE_SCREENSHOT"])


def test_browser_story_and_multi_concept_tabs(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Story").click()
    page.locator("#story-source input[type=file]").set_input_files(str(SPACE / "examples" / "scene_2.png"))
    expect(page.locator("#story-source img")).to_be_visible()
    page.locator("#story-text textarea").fill("move the purple square down\nmake the purple square bigger")
    page.locator("#story-run").click()
    expect(page.locator("#story img")).to_have_count(3)  # the first image and one frame per instruction
    expect(page.locator("#story")).to_contain_text("2 · make the purple square bigger")

    page.get_by_role("tab", name="Multi-concept").click()
    page.locator("#references input[type=file]").set_input_files(
        [str(SPACE / "examples" / "scene_1.png"), str(SPACE / "examples" / "scene_3.png")]
    )
    expect(page.locator("#references a")).to_have_count(2)  # both uploaded (each gets its download link)
    page.locator("#compose-prompt textarea").fill("the yellow square next to the red square")
    page.locator("#compose").click()
    expect(page.locator("#composed img")).to_be_visible()
    box = page.locator("#composed img").bounding_box()  # a 32x32 result is shown large, not as a tiny square
    assert box["width"] >= 200 or box["height"] >= 200, box
