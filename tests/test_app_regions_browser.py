"""The draft edited by region in a real browser: the embedded model's limitation beside the
draft, the Findings editor one labelled line per region, one line edited, and the saved text equal to the
editor's byte for byte.

The tiny test model stands in for the embedded family (``served_app``). It writes no region words of its own,
so the test types two region lines and lets the model re-draft after them: the re-drafted report is what the
editor lays out by region.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_app_browser import driver, served_app  # noqa: F401  (driver: the shared Chromium fixture)
from test_app_reading_room import Page

from app.service import Services
from echo_model.data.report_text import findings_by_region, region_labels
from echo_model.loading import EMBEDDED_LIMITATION

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

LAYOUT = "Lung fields: The lungs are clear.\nCardiac silhouette: The heart is normal in size."

# Select a piece of the Findings editor's text, so that the next keys typed replace it.
_SELECT_JS = """const box = document.querySelector('#findings textarea');
const at = box.value.indexOf(arguments[0]);
box.focus();
box.setSelectionRange(at, at + arguments[0].length);
return at;"""


@pytest.fixture(scope="module")
def regions_app(tmp_path_factory, checkpoint) -> Iterator[tuple[str, Services]]:
    with served_app(tmp_path_factory.mktemp("regions-browser"), checkpoint, max_new_tokens=12) as served:
        yield served


def _drafts(services: Services, study_id: str) -> list[Any]:
    rows = [r for r in services.store.history("local") if r.study_id == study_id and r.draft_id]
    return [services.store.get_draft(r.draft_id, "local") for r in rows]


def test_draft_by_region_edit_one_line_save_byte_for_byte(regions_app, driver, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains

    url, services = regions_app
    page = Page(driver, url, tmp_path, services)
    page.wait.until(lambda d: EMBEDDED_LIMITATION in page.text("#model-limitation"))
    assert "ECHO_MODEL" in page.text("#model-limitation")

    study = page.upload_study(21)
    page.generate()
    (source,) = _drafts(services, study)

    # Two region lines typed over the tiny model's draft; the model re-drafts after them.
    page.type_into("#findings textarea", LAYOUT)
    page.click("redraft-btn")

    def child() -> Any:
        children = [d for d in _drafts(services, study) if d.parent_id == source.id]
        return children[0] if children else None

    page.wait.until(lambda d: child() is not None and "not signed" in page.text("#status")
                    and page.value("#findings textarea") == findings_by_region(child().findings))
    redrafted = child()
    assert services.store.get_draft(source.id, "local").current[0] == LAYOUT  # the edit kept, as typed
    shown = page.value("#findings textarea")
    lines = shown.split("\n")
    assert lines[0].startswith("Lung fields: The lungs are clear.")
    assert lines[1].startswith("Cardiac silhouette: The heart is normal in size.")
    assert all(line.split(": ", 1)[0] in region_labels().values() for line in lines)

    # Edit one region line in place and save.
    assert driver.execute_script(_SELECT_JS, "The heart is normal in size.") >= 0
    ActionChains(driver).send_keys("Mild cardiomegaly.").perform()
    page.wait.until(lambda d: "Cardiac silhouette: Mild cardiomegaly." in page.value("#findings textarea"))
    page.click("save-btn")
    page.wait.until(lambda d: "Saved version 1" in page.text("#status"))

    findings, impression = page.value("#findings textarea"), page.value("#impression textarea")
    assert findings == shown.replace("The heart is normal in size.", "Mild cardiomegaly.")
    stored = services.store.get_draft(redrafted.id, "local").current
    assert stored[0].encode("utf-8") == findings.encode("utf-8")
    assert stored[1].encode("utf-8") == impression.encode("utf-8")
