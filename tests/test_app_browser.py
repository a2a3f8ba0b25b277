"""A real browser (headless Debian chromium driven by Selenium): upload, watch blocks arrive, edit, sign, export.

Needs ``apt-get install -y chromium chromium-driver`` and ``pip install selenium``; skips with that reason
where they are missing. (The README's screenshots come from ``scripts/screenshots.py``, not from tests.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, synthetic_cxr

from app.main import build_demo, launch_options
from app.service import Services
from app.settings import AppSettings
from echo_model.loading import embedded_path

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1750")
# Records every distinct state of the report view ("tokens:masked") as the DOM changes, so fast updates
# are seen even when Python polling would miss them.
OBSERVE_JS = """
window.__echoStates = [];
const root = document.querySelector('#report-view');
const snap = () => {
  const toks = [...root.querySelectorAll('.token .text')].map(e => e.textContent);
  const state = toks.length + ':' + toks.filter(t => t.includes('\\u2592')).length;
  const all = window.__echoStates;
  if (all[all.length - 1] !== state) all.push(state);
};
new MutationObserver(snap).observe(root, {subtree: true, childList: true, characterData: true});
"""


def _browser() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no browser: apt-get install -y chromium chromium-driver")
    return browser, driver



@contextlib.contextmanager
def served_app(root: Path, checkpoint, *, max_new_tokens: int, **settings: Any) -> Iterator[tuple[str, Services]]:
    """The app on loopback under ``root``, the tiny checkpoint standing in for the embedded one (as the README
    shows it); the URL and the app's services. ``settings``: further :class:`AppSettings` fields."""
    saved = os.environ.get("ECHO_ASSETS_DIR")
    os.environ["ECHO_ASSETS_DIR"] = str(root / "assets")
    checkpoint.save_pretrained(embedded_path("student"))
    settings = AppSettings(data_dir=root / "data", max_new_tokens=max_new_tokens, server_name="127.0.0.1",
                           server_port=free_port(), **settings)
    services = Services.create(settings)
    demo = build_demo(settings, services=services)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    try:
        yield url, services
    finally:
        demo.close()
        if saved is None:
            os.environ.pop("ECHO_ASSETS_DIR", None)
        else:
            os.environ["ECHO_ASSETS_DIR"] = saved


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, checkpoint) -> Iterator[tuple[str, Services]]:
    with served_app(tmp_path_factory.mktemp("browser-app"), checkpoint, max_new_tokens=32) as served:
        yield served


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (*CHROME_ARGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    drv = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield drv
    finally:
        drv.quit()


def test_draft_edit_sign_export_in_a_browser(app_url, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, services = app_url
    wait = WebDriverWait(driver, 60, poll_frequency=0.05)

    def text_of(css: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, css).text

    def type_into(css: str, text: str) -> None:
        box = driver.find_element(By.CSS_SELECTOR, css)
        box.clear()
        box.send_keys(text)

    driver.get(url)
    wait.until(ec.element_to_be_clickable((By.ID, "generate-btn")))
    assert "NOT FOR CLINICAL USE" in text_of("#clinical-notice")

    # 1. Upload: the view appears (de-identified PNG served back).
    image = tmp_path / "frontal.png"
    synthetic_cxr(8, (256, 240)).save(image)
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(image))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#viewer img"))
    assert "view 1" in text_of("#view-info")

    # 2. Generate and watch blocks arrive: several states with the ▒ placeholder, then the final text.
    driver.execute_script(OBSERVE_JS)
    driver.find_element(By.ID, "generate-btn").click()
    wait.until(lambda d: "not signed" in text_of("#status"))
    states = [tuple(map(int, s.split(":"))) for s in driver.execute_script("return window.__echoStates")]
    partial = [s for s in states if s[1] > 0]
    assert len(partial) >= 2, f"expected to see blocks arrive one by one, saw {states}"
    assert [t for t, _ in states] == sorted(t for t, _ in states)
    assert states[-1][1] == 0 and states[-1][0] > partial[0][0]
    assert "tokens/forward" in text_of("#summary")

    # 3. Edit (the copy box follows in the browser), choose a reason, sign.
    type_into("#findings textarea", "Heart size is normal. Lungs are clear.")
    type_into("#impression textarea", "No acute cardiopulmonary abnormality.")
    assert driver.find_element(By.CSS_SELECTOR, "#copy-text textarea").get_attribute("value") == (
        "Findings: Heart size is normal. Lungs are clear. Impression: No acute cardiopulmonary abnormality.")
    driver.find_element(By.CSS_SELECTOR, "#reasons input[name='style']").click()
    driver.find_element(By.ID, "sign-btn").click()  # shows what is signed; the confirmation signs
    wait.until(ec.element_to_be_clickable((By.ID, "sign-confirm-btn")))
    assert "Heart size is normal" in text_of("#sign-confirm-text")
    # the tiny model's draft fails the report check: signing it needs the explicit "sign anyway"
    driver.find_element(By.CSS_SELECTOR, "#sign-anyway input").click()
    driver.find_element(By.ID, "sign-confirm-btn").click()
    wait.until(lambda d: "Signed" in text_of("#status"))
    (row,) = [r for r in services.store.history("local") if r.draft_id]
    signed = services.store.get_draft(row.draft_id, "local")
    assert signed.current == ("Heart size is normal. Lungs are clear.", "No acute cardiopulmonary abnormality.")
    assert signed.versions[-1].reasons == ("style",)
    assert driver.find_element(By.CSS_SELECTOR, "#findings textarea").get_attribute("disabled") is not None

    driver.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "screenshot.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000  # the page renders (a blank page compresses to a few hundred bytes)

    # 4. Explain tab: the draft's blocks are offered; an explanation appears in the before/after slider.
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Explain')]").click()
    wait.until(ec.element_to_be_clickable((By.ID, "explain-btn")))
    driver.find_element(By.ID, "explain-load").click()
    wait.until(lambda d: "block 0" in d.find_element(By.CSS_SELECTOR, "#explain-target input").get_attribute("value"))
    driver.find_element(By.ID, "explain-btn").click()
    wait.until(lambda d: "not a localisation of disease" in text_of("#explain-label"))
    assert "attention" in text_of("#explain-label").lower()
    assert len(driver.find_elements(By.CSS_SELECTOR, "#explain-slider img")) >= 2  # before and after
    assert services.store.count("explanation") == 1

    # 5. History & export tab: the notice is still there; export the signed report.
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'History')]").click()
    wait.until(ec.element_to_be_clickable((By.ID, "export-btn")))
    assert driver.find_element(By.ID, "clinical-notice").is_displayed()
    driver.find_element(By.ID, "export-btn").click()
    wait.until(lambda d: "Exported 1 signed" in text_of("#export-status"))
    assert driver.find_elements(By.CSS_SELECTOR, "#export-file a")
