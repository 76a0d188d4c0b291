"""A real browser against the real server: headless Chromium (Debian's `chromium`, driven by
Playwright with no browser download) opens the UI, uploads an image, asks, and sees the
streamed answer and a mask over the image. Skipped where /usr/bin/chromium is missing
(.ci/run installs it).

ONELLM_UI_SCREENSHOT=docs/serve-ui.png also writes the README's screenshot there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from transformers import LogitsProcessorList

from onellm.serve.app import create_app
from tests.conftest import ForceAt
from tests.serve.conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def server(tiny_model):
    force = LogitsProcessorList([ForceAt(tiny_model.outputs.token_ids["seg"], 1)])  # a mask
    live = LiveServer(
        create_app(tiny_model, model_id="tiny", generate_kwargs={"logits_processor": force})
    )
    yield live
    live.close()


def test_the_ui_answers_an_uploaded_image_with_text_and_a_mask(server, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from onellm.data.output_scenes import seg_scene

    picture = tmp_path / "shapes.png"
    Image.fromarray(seg_scene(3, size=96).image).save(picture)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            outside: list[str] = []  # the page may load nothing but from its own server

            def only_loopback(route):
                if route.request.url.startswith(server.url):
                    return route.continue_()
                outside.append(route.request.url)
                return route.abort()

            page.route("**/*", only_loopback)
            page.goto(server.url + "/")
            page.locator("#input-image input[type=file]").set_input_files(str(picture))
            page.locator("#prompt textarea").fill("segment the shape")
            page.locator("#send").click()
            answer = page.locator('#chat [data-testid="bot"]').last
            sync_api.expect(answer).not_to_be_empty(timeout=60_000)
            sync_api.expect(page.locator("#masks img.mask")).to_have_count(1, timeout=60_000)
            sync_api.expect(page.locator("#masks .legend-item")).to_have_text("<seg> 1")
            sync_api.expect(page.locator('#chat [data-testid="user"]')).to_have_text(
                "segment the shape"
            )
            page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
            if os.environ.get("ONELLM_UI_SCREENSHOT"):
                page.screenshot(path=os.environ["ONELLM_UI_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
    assert Image.open(tmp_path / "ui.png").size[0] == 1280
    assert outside == []
    import httpx  # the API answers on the same server as the UI

    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "tiny"


def test_with_a_key_the_browser_logs_in_once_and_the_ui_answers(tiny_model):
    if not CHROMIUM.is_file():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    live = LiveServer(create_app(tiny_model, model_id="tiny", api_key="sesame"))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page()
                page.goto(live.url + "/")
                assert page.url == live.url + "/login"  # sent to the form, no UI without it
                page.fill("input[name=key]", "wrong")
                page.click("button[type=submit]")
                sync_api.expect(page.locator("body")).to_contain_text("wrong key")
                page.fill("input[name=key]", "sesame")
                page.click("button[type=submit]")
                page.locator("#prompt textarea").fill("hello")
                page.locator("#send").click()
                answer = page.locator('#chat [data-testid="bot"]').last
                sync_api.expect(answer).not_to_be_empty(timeout=60_000)
            finally:
                browser.close()
    finally:
        live.close()
