"""Evidence and overlays in a real browser: after Generate the draft shows sentence by sentence beside
the list of findings it asserts, the list follows what the clinician types, and an explanation comes with its
colour bar.

Headless Debian chromium through Selenium, as in ``test_app_browser`` (skips where they are missing).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_app_browser import driver, served_app  # noqa: F401  (driver: the shared Chromium fixture)
from test_app_reading_room import Page

from app.service import Services

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]


@pytest.fixture(scope="module")
def evidence_app(tmp_path_factory, checkpoint) -> Iterator[tuple[str, Services]]:
    with served_app(tmp_path_factory.mktemp("evidence-browser"), checkpoint, max_new_tokens=16) as served:
        yield served


def _statuses(page: Page) -> dict[str, str]:
    rows = page.d.find_elements(page.by.CSS_SELECTOR, "#findings-list tr.echo-finding")
    return {r.find_elements(page.by.TAG_NAME, "td")[0].text: r.get_attribute("data-status") for r in rows}


def test_sentences_and_findings_list_follow_the_draft_and_the_edit(evidence_app, driver, tmp_path: Path) -> None:  # noqa: F811
    url, services = evidence_app
    page = Page(driver, url, tmp_path, services)
    page.upload_study(31)
    page.generate()

    # The finished draft sentence by sentence: each sentence a coloured span with its lowest probability.
    page.wait.until(lambda d: d.find_elements(page.by.CSS_SELECTOR, "#sentence-view .echo-sentence"))
    sentences = driver.find_elements(page.by.CSS_SELECTOR, "#sentence-view .echo-sentence")
    assert all(re.fullmatch(r"echo-sentence echo-(high|medium|low)", s.get_attribute("class")) for s in sentences)
    assert all(0.0 <= float(s.get_attribute("data-probability")) <= 1.0 for s in sentences)
    assert "lowest token probability" in page.text("#sentence-view") and "▒" not in page.text("#sentence-view")
    assert "Findings the text asserts" in page.text("#findings-list")

    # Typing a sentence into Findings updates the list (no button); a negated one lists it as absent.
    page.type_into("#findings textarea", "The lungs are clear.")
    page.type_into("#impression textarea", "Unremarkable.")
    page.wait.until(lambda d: "Pleural Effusion" not in _statuses(page))
    box = driver.find_element(page.by.CSS_SELECTOR, "#findings textarea")
    box.send_keys(" There is a small left pleural effusion.")
    page.wait.until(lambda d: _statuses(page).get("Pleural Effusion") == "present")
    page.type_into("#impression textarea", "No pneumothorax.")
    page.wait.until(lambda d: _statuses(page).get("Pneumothorax") == "absent")
    assert _statuses(page)["Pleural Effusion"] == "present"


def test_explanation_shows_its_colour_bar_and_redraws_with_opacity(evidence_app, driver, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.keys import Keys

    url, services = evidence_app
    page = Page(driver, url, tmp_path, services)
    page.upload_study(32)
    page.generate()
    driver.find_element(page.by.XPATH, "//button[@role='tab' and contains(., 'Explain')]").click()
    page.wait.until(lambda d: d.find_element(page.by.ID, "explain-btn").is_displayed())
    page.click("explain-load")
    page.wait.until(lambda d: "block 0" in d.find_element(page.by.CSS_SELECTOR, "#explain-target input")
                    .get_attribute("value"))
    page.click("explain-btn")
    page.wait.until(lambda d: "share of this explanation per image patch" in page.text("#explain-colorbar"))
    ticks = [t.text for t in driver.find_elements(page.by.CSS_SELECTOR, "#explain-colorbar .echo-colorbar-tick")]
    assert ticks[0] == "0%" and ticks[-1].startswith("≥ ") and all(t.endswith("%") for t in ticks) and len(ticks) == 4
    bar = driver.find_element(page.by.CSS_SELECTOR, "#explain-colorbar .echo-colorbar-bar")
    assert "linear-gradient" in bar.value_of_css_property("background-image") and bar.size["width"] > 100

    # The opacity slider redraws the overlay from the stored map (nothing recomputed).
    def after_image() -> str:
        images = driver.find_elements(page.by.CSS_SELECTOR, "#explain-slider img")
        return images[-1].get_attribute("src") if images else ""

    before, stored = after_image(), services.store.count("explanation")
    number = driver.find_element(page.by.CSS_SELECTOR, "#explain-opacity input[type=number]")
    number.send_keys(Keys.CONTROL, "a")
    number.send_keys("1")
    driver.execute_script("arguments[0].blur()", number)  # the slider's release: redraw
    page.wait.until(lambda d: after_image() and after_image() != before)
    assert services.store.count("explanation") == stored
