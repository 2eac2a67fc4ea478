"""The gateway's web page in a real headless Chromium: upload a photo or paste a URL, see the answer."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import httpx
import pytest

from pizzactl.serving.gateway import create_app

from support.serving_fixtures import UvicornThread
from support.tiers import import_tier, require_tier

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        require_tier("browser", f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = import_tier("playwright.sync_api", "browser")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def local_gateway(model_server):
    """A gateway that may fetch loopback URLs (the photo server runs on 127.0.0.1)."""
    with UvicornThread(create_app(model_server.url, allow_private_urls=True)) as running:
        yield running


@pytest.fixture
def page(browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert not errors, errors  # no JavaScript errors (CSP violations included)


def expected_answer(gateway_url: str, photo: bytes) -> dict:
    return httpx.post(gateway_url + "/predict", json={"image_b64": base64.b64encode(photo).decode()}, timeout=30).json()


def label_percent(answer: dict) -> str:
    """P(label) as the page shows it (for a binary model's negative class, 1 - P(positive))."""
    return f"{100 * answer['probabilities'][answer['label']]:.1f}%"


def class_rows(page) -> list[list[str]]:
    return [
        [row.locator(".class-name").inner_text(), row.locator(".class-p").inner_text()]
        for row in page.locator("#classes li").all()
    ]


def test_uploading_a_photo_shows_the_label_and_probability(page, local_gateway, shared_photos, tmp_path):
    photo_path = tmp_path / "margherita.jpg"
    shutil.copy(shared_photos["pizza"][0], photo_path)
    expected = expected_answer(local_gateway.url, photo_path.read_bytes())
    page.goto(local_gateway.url + "/")
    page.set_input_files("#file", str(photo_path))
    page.wait_for_selector("body[data-label]", state="attached", timeout=30_000)
    label = page.inner_text("#label")
    assert label == ("🍕 Pizza" if expected["label"] == "pizza" else "Not pizza")
    assert f"P({expected['label']}) = {label_percent(expected)}" in page.inner_text("#detail")
    assert f"model version {expected['model_version']}" in page.inner_text("#detail")
    ranked = sorted(expected["probabilities"].items(), key=lambda item: -item[1])
    assert class_rows(page) == [[name, f"{100 * p:.1f}%"] for name, p in ranked]  # every class, most probable first


def test_pasting_a_url_shows_the_answer(page, local_gateway, photo_server):
    expected = expected_answer(local_gateway.url, (photo_server.root / "not_pizza.jpg").read_bytes())
    page.goto(local_gateway.url + "/")
    page.fill("#url", photo_server.url + "/not_pizza.jpg")
    page.click("#url-submit")
    page.wait_for_selector("body[data-label]", state="attached", timeout=30_000)
    assert page.get_attribute("body", "data-label") == expected["label"]
    assert label_percent(expected) in page.inner_text("#detail")
    assert sorted(name for name, _ in class_rows(page)) == ["not_pizza", "pizza"]


def test_a_bad_url_shows_the_error_message_and_hint(page, local_gateway, photo_server):
    page.goto(local_gateway.url + "/")
    page.fill("#url", photo_server.url + "/page.html")
    page.click("#url-submit")
    page.wait_for_selector("#label.error", timeout=30_000)
    assert "not an image" in page.inner_text("#label")
    assert "unsupported_media_type" in page.inner_text("#detail")


def test_a_model_of_three_classes_shows_its_label_and_a_bar_per_class(page):
    """In front of a (fake) TF Serving answering salad among three classes named by PIZZACTL_CLASSES."""
    from support.serving_fixtures import FakeTFServing

    tf_serving = FakeTFServing()
    try:
        with UvicornThread(create_app(tf_serving.url, classes="other,pizza,salad")) as gw:
            page.goto(gw.url + "/")
            page.set_input_files("#file", files=[{"name": "x.png", "mimeType": "image/png", "buffer": png_bytes()}])
            page.wait_for_selector("body[data-label]", state="attached", timeout=30_000)
            assert page.inner_text("#label") == "salad"
            assert "P(salad) = 70.0%" in page.inner_text("#detail")
            assert class_rows(page) == [["salad", "70.0%"], ["pizza", "20.0%"], ["other", "10.0%"]]
    finally:
        tf_serving.close()


def png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


def test_a_gateway_with_api_keys_makes_the_page_ask_for_the_key_and_send_it(page):
    """401 -> the page shows the key form; a wrong key is asked again; the right one gets the answer."""
    from pizzactl.serving.auth import key_hash

    from support.serving_fixtures import FakeTFServing

    key = "pk-page-test-9c2e"
    tf_serving = FakeTFServing()
    try:
        with UvicornThread(create_app(tf_serving.url, classes="other,pizza,salad", api_key_hashes=key_hash(key))) as gw:
            page.goto(gw.url + "/")
            assert page.is_hidden("#key-form")
            page.set_input_files("#file", files=[{"name": "x.png", "mimeType": "image/png", "buffer": png_bytes()}])
            page.wait_for_selector("#key-form", state="visible", timeout=30_000)
            assert "needs an API key" in page.inner_text("#label")
            page.fill("#api-key", "not-the-key")
            page.click("#key-submit")
            page.wait_for_selector("#label.error >> text=not valid", timeout=30_000)
            assert page.is_visible("#key-form")
            page.fill("#api-key", key)
            page.click("#key-submit")
            page.wait_for_selector("body[data-label]", state="attached", timeout=30_000)
            assert page.inner_text("#label") == "salad"
            assert page.is_hidden("#key-form")
            assert key not in page.url
    finally:
        tf_serving.close()
