"""The worklist in a real browser: thumbnails and first lines in the History table, the search, and
*Next unsigned* / *Previous* opening the other study on the Draft tab with its image and the editor bound to it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import synthetic_cxr
from test_app_browser import driver, served_app  # noqa: F401  (driver: the shared Chromium fixture)

from app.handlers import DRAFT_FIELDS, Handlers
from app.service import Services
from app.worklist import first_line

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]
D = {name: i for i, name in enumerate(DRAFT_FIELDS)}


@pytest.fixture(scope="module")
def worklist_app(tmp_path_factory, checkpoint) -> Iterator[tuple[str, Services, dict[str, str]]]:
    """The app with two drafted studies ("cough" first, then "fever"); their study ids by indication."""
    root = tmp_path_factory.mktemp("worklist-app")
    with served_app(root, checkpoint, max_new_tokens=16) as (url, services):
        h = Handlers(services)
        studies = {}
        for seed, indication in ((21, "cough"), (22, "fever")):
            image = root / f"{indication}.png"
            synthetic_cxr(seed, (256, 240)).save(image)
            *_, last = h.generate([str(image)], indication=indication)
            studies[indication] = last[D["study_id"]]
        # One study edited with a known impression, so its first line is known.
        services.store.save_edit(last[D["draft_id"]], "local", findings="Lungs: clear.",
                                 impression="Small left effusion.\nSecond line.")
        yield url, services, studies


def _rows(drv: Any) -> list[Any]:
    """The worklist's visible data rows (Gradio 6 draws them as ``role=row`` elements holding the cells)."""
    from selenium.webdriver.common.by import By

    return [r for r in drv.find_elements(By.CSS_SELECTOR, "#worklist [role=row]")
            if r.is_displayed() and r.find_elements(By.CSS_SELECTOR, "[data-testid^=cell-]")]


def _letters(text: str) -> str:
    """ASCII letters and digits only: the tiny model's drafts hold control characters the page does not show."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def test_worklist_thumbnails_search_and_next_unsigned(worklist_app, driver) -> None:  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, services, studies = worklist_app
    store = services.store
    entries = {e.study_id: e for e in store.worklist("local")}
    wait = WebDriverWait(driver, 30, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    driver.get(url)
    wait.until(lambda d: d.find_elements(By.ID, "generate-btn"))
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'History')]").click()

    # 1. Two rows, newest first, each with a thumbnail (an <img> with a data: URI) and its impression's first line.
    wait.until(lambda d: len(_rows(d)) == 2 and all(r.find_elements(By.TAG_NAME, "img") for r in _rows(d)))
    rows = _rows(driver)
    for row, study_id in zip(rows, (studies["fever"], studies["cough"]), strict=True):
        img = row.find_element(By.TAG_NAME, "img")
        assert img.get_attribute("src").startswith("data:image/png;base64,") and img.size["width"] > 20
        assert study_id[:8] in row.text
    fever, cough = (r.find_elements(By.CSS_SELECTOR, "[data-testid^=cell-]") for r in rows)
    assert [c.text for c in fever[1:4]] == ["Small left effusion.", "fever", "edited v1"]
    drafted = entries[studies["cough"]]
    first = first_line(drafted.impression) or first_line(drafted.findings)  # cut at 120 characters
    # The drafted study's state says how many warnings its unedited draft carries (the tiny model's draft has some).
    assert drafted.warnings > 0
    assert _letters(cough[1].text) == _letters(first) and [c.text for c in cough[2:4]] == [
        "cough", f"draft · ⚠ {drafted.warnings} warnings"]

    # 2. The search filters the rows (by indication here), and clearing it brings both back.
    search = driver.find_element(By.CSS_SELECTOR, "#worklist-search textarea, #worklist-search input")
    search.send_keys("cough", Keys.ENTER)
    wait.until(lambda d: len(_rows(d)) == 1 and studies["cough"][:8] in _rows(d)[0].text)
    search.send_keys(*[Keys.BACKSPACE] * len("cough"), Keys.ENTER)  # typed, so the page sees the change
    wait.until(lambda d: len(_rows(d)) == 2)

    # 3. Next unsigned with nothing open: the top study ("fever") on the Draft tab; again: the other one. The
    # banner above the editor names the study and draft the editor is bound to; the viewer shows its view.
    def on_draft_tab(study_id: str) -> str | None:
        """The viewer's image source once the Draft tab shows ``study_id`` with its draft, else None."""
        entry = entries[study_id]
        banner = driver.find_element(By.ID, "study-banner").text
        images = driver.find_elements(By.CSS_SELECTOR, "#viewer img")
        shown = (driver.find_element(By.ID, "generate-btn").is_displayed() and study_id[:8] in banner
                 and entry.draft_id[:8] in banner and images)
        return images[0].get_attribute("src") if shown else None

    driver.find_element(By.ID, "next-study-btn").click()
    fever_src = wait.until(lambda d: on_draft_tab(studies["fever"]))
    assert "edited" in driver.find_element(By.ID, "study-banner").text
    driver.find_element(By.ID, "next-study-btn").click()
    wait.until(lambda d: on_draft_tab(studies["cough"]) not in (None, fever_src))  # the other study's view
    cough = entries[studies["cough"]]
    assert "indication: cough" in driver.find_element(By.ID, "study-banner").text

    # 4. The editor is bound to the opened study: a save lands on its draft.
    findings = driver.find_element(By.CSS_SELECTOR, "#findings textarea")
    findings.clear()
    findings.send_keys("Lungs: clear, saved from the worklist.")
    driver.find_element(By.ID, "save-btn").click()
    wait.until(lambda d: "Saved version 1" in d.find_element(By.ID, "status").text)
    assert store.get_draft(cough.draft_id, "local").current[0] == "Lungs: clear, saved from the worklist."
    assert len(store.get_draft(entries[studies["fever"]].draft_id, "local").versions) == 1  # untouched

    # 5. Previous steps back up the list.
    driver.find_element(By.ID, "prev-study-btn").click()
    wait.until(lambda d: on_draft_tab(studies["fever"]))


def test_clicking_a_row_chooses_it_and_open_shows_it(worklist_app, driver) -> None:  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, services, studies = worklist_app
    wait = WebDriverWait(driver, 30, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    driver.get(url)
    wait.until(lambda d: d.find_elements(By.ID, "generate-btn"))
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'History')]").click()
    wait.until(lambda d: len(_rows(d)) == 2)
    _rows(driver)[1].find_elements(By.CSS_SELECTOR, "[data-testid^=cell-]")[1].click()  # the older study's impression
    study_box = "#history-study textarea, #history-study input"
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, study_box).get_attribute("value") == studies["cough"])
    draft_id = driver.find_element(By.CSS_SELECTOR, "#history-draft textarea, #history-draft input").get_attribute(
        "value")
    assert draft_id == services.store.worklist("local")[1].draft_id and len(draft_id) == 32
    driver.find_element(By.ID, "open-btn").click()
    wait.until(lambda d: d.find_element(By.ID, "generate-btn").is_displayed()
               and draft_id[:8] in d.find_element(By.ID, "study-banner").text
               and d.find_elements(By.CSS_SELECTOR, "#viewer img"))
