"""The demo page at ``/``: served from the wheel, nothing from the internet, and -- in a real
headless Chromium driven by selenium -- an uploaded photo gets the same boxes and labels the
API answers.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
without them it skips and says so. Its screenshots are kept as test artifacts in
``$FER_EDGE_ARTIFACTS`` (default: pytest's temporary folder, printed in the output).
"""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from edge_helpers import serving

from fer_edge.server import DEMO_FILES, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


class _Links(HTMLParser):
    """Every src/href attribute value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.values += [v or "" for k, v in attrs if k in ("src", "href")]


def _links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.values


def test_page_and_its_files_name_no_outside_address(session: Any) -> None:
    with serving(create_app(session)) as url:
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        links = _links(page.text)
        assert "static/app.js" in links and "static/style.css" in links
        assert not [v for v in links if v.lower().startswith(("http://", "https://", "//"))]
        for route in DEMO_FILES:
            answer = httpx.get(f"{url}{route}", timeout=10)
            assert answer.status_code == 200, route
            assert "http://" not in answer.text and "https://" not in answer.text, route


def test_page_needs_no_key_but_the_api_does(session: Any) -> None:
    with serving(create_app(session, api_key="s3cret")) as url:
        for route in DEMO_FILES:
            assert httpx.get(f"{url}{route}", timeout=10).status_code == 200, route
        assert httpx.get(f"{url}/metadata", timeout=10).status_code == 401
        ok = httpx.get(f"{url}/metadata", headers={"X-API-Key": "s3cret"}, timeout=10)
        assert ok.status_code == 200


def test_demo_off(session: Any) -> None:
    with serving(create_app(session, demo=False)) as url:
        assert httpx.get(f"{url}/", timeout=10).status_code == 404
        assert httpx.get(f"{url}/static/app.js", timeout=10).status_code == 404


# ------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def browser() -> Any:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "no chromium/chromedriver on PATH (Debian: apt-get install chromium chromium-driver; "
            ".ci/run installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("FER_EDGE_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def photo() -> Path:
    """Grace Hopper's portrait from matplotlib's sample data (a real photo of a face)."""
    cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib is not installed")
    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _upload_and_wait(driver: Any, url: str, photo: Path, mode: str) -> list[str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(f"{url}/")
    WebDriverWait(driver, 20).until(
        lambda d: "loading" not in d.find_element(By.ID, "model-name").text
    )
    Select(driver.find_element(By.ID, "faces-mode")).select_by_value(mode)
    driver.find_element(By.ID, "file").send_keys(str(photo))
    WebDriverWait(driver, 60).until(
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")
        )
    )
    status = driver.find_element(By.ID, "status").text
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
    faces = driver.find_elements(By.CSS_SELECTOR, "li.face")
    return [li.get_attribute("data-label") for li in faces]


@pytest.mark.parametrize("mode", ["detect", "whole"])
def test_browser_shows_what_the_api_answers(
    browser: Any, session: Any, photo: Path, artifacts: Path, mode: str
) -> None:
    from selenium.webdriver.common.by import By

    with serving(create_app(session)) as url:
        api = httpx.post(
            f"{url}/predict?faces={mode}",
            files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
            timeout=60,
        ).json()
        browser.set_window_size(1280, 900)
        shown = _upload_and_wait(browser, url, photo, mode)
        assert api["faces"], f"the API found no face in {photo.name} (faces={mode})"
        assert shown == [face["label"] for face in api["faces"]]
        canvas = browser.find_element(By.ID, "canvas")
        assert canvas.get_attribute("data-faces") == str(len(api["faces"]))
        # The canvas holds the photo at its own aspect ratio, boxes drawn on it.
        assert int(canvas.get_attribute("width")) > 0
        # Every face lists a probability per label.
        bars = browser.find_elements(By.CSS_SELECTOR, "li.face .bars .bar")
        assert len(bars) == len(api["faces"]) * len(session.labels)
        shot = artifacts / f"demo-{mode}.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")


def test_browser_phone_sized_screen(
    browser: Any, session: Any, photo: Path, artifacts: Path
) -> None:
    with serving(create_app(session)) as url:
        browser.set_window_size(390, 844)
        shown = _upload_and_wait(browser, url, photo, "whole")
        assert len(shown) == 1
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"the page is {overflow} px wider than a 390 px screen"
        shot = artifacts / "demo-phone.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
