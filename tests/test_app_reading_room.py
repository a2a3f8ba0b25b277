"""The reading room in a real browser: every action bound to the study on screen, errors in words,
a refused file that does not poison the session, warnings a reader cannot miss, and the small things
(sign twice, progress reset, labels, About).

One served app and one Chromium for the module; each test starts from a fresh page.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import synthetic_cxr
from test_app_browser import driver, served_app  # noqa: F401  (driver: the shared Chromium fixture)

from app.service import Services
from app.store import NewDraft

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

GARBLED = "Findings: Bilateralound--lloundlllll Impression Impression Impression: Normal."
GARBLED_WARNING = "the draft repeats a section header (Impression) and has runs of repeated letters"


@pytest.fixture(scope="module")
def room(tmp_path_factory, checkpoint) -> Iterator[tuple[str, Services]]:
    with served_app(tmp_path_factory.mktemp("reading-room"), checkpoint, max_new_tokens=16) as served:
        yield served


class Page:
    """Small helpers over the Selenium driver for the Draft tab."""

    def __init__(self, drv: Any, url: str, tmp: Path, services: Services):
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.tmp, self.services = drv, tmp, services
        self.wait = WebDriverWait(drv, 30, poll_frequency=0.05)
        drv.get(url)
        self.wait.until(lambda d: d.find_elements(self.by.ID, "generate-btn"))

    @property
    def by(self) -> Any:
        from selenium.webdriver.common.by import By

        return By

    def text(self, css: str) -> str:
        found = self.d.find_elements(self.by.CSS_SELECTOR, css)
        return found[0].text if found else ""

    def value(self, css: str) -> str:
        found = self.d.find_elements(self.by.CSS_SELECTOR, css)
        return (found[0].get_attribute("value") or "") if found else ""

    def body(self) -> str:
        return self.d.find_element(self.by.TAG_NAME, "body").text

    def click(self, elem_id: str) -> None:
        button = self.d.find_element(self.by.ID, elem_id)
        self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()

    def type_into(self, css: str, text: str) -> None:
        box = self.d.find_element(self.by.CSS_SELECTOR, css)
        box.clear()
        box.send_keys(text)

    def upload(self, path: Path) -> None:
        self.d.find_element(self.by.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))

    def image(self, seed: int, name: str | None = None) -> Path:
        path = self.tmp / (name or f"view-{seed}.png")
        synthetic_cxr(seed, (256, 240)).save(path)
        return path

    def studies(self) -> set[str]:
        return {row.study_id for row in self.services.store.history("local")}

    def upload_study(self, seed: int) -> str:
        """Upload one view as a new study; its id once the viewer shows it."""
        before = self.studies()
        self.upload(self.image(seed))
        self.wait.until(lambda d: self.studies() - before and "view 1" in self.text("#view-info"))
        (new,) = self.studies() - before
        return new

    def generate(self) -> None:
        self.click("generate-btn")
        self.wait.until(lambda d: "not signed" in self.text("#status"))

    def sign(self, *, anyway: bool = False) -> None:
        self.click("sign-btn")
        self.wait.until(lambda d: d.find_elements(self.by.ID, "sign-confirm-btn")
                        and d.find_element(self.by.ID, "sign-confirm-btn").is_displayed())
        if anyway:
            self.d.find_element(self.by.CSS_SELECTOR, "#sign-anyway input").click()
        self.click("sign-confirm-btn")


def _only_draft(services: Services, study_id: str) -> Any:
    drafts = [r for r in services.store.history("local") if r.study_id == study_id and r.draft_id]
    assert len(drafts) == 1, drafts
    return services.store.get_draft(drafts[0].draft_id, "local")


@pytest.fixture
def page(room, driver, tmp_path) -> Page:  # noqa: F811
    return Page(driver, room[0], tmp_path, room[1])


def test_1_upload_and_new_study_rebind_the_editor(room, page: Page) -> None:
    _, services = room
    study_a = page.upload_study(11)
    page.generate()
    draft_a = _only_draft(services, study_a)
    assert page.value("#findings textarea")

    # Study B on screen: nothing of A's draft is left in the editor, and Save cannot write A's record.
    study_b = page.upload_study(12)
    page.type_into("#findings textarea", "Typed while looking at B.")
    page.click("save-btn")
    page.wait.until(lambda d: "Saved version" in page.text("#status") or "no draft" in page.body().lower())
    assert len(services.store.get_draft(draft_a.id, "local").versions) == 0
    assert "no draft" in page.body().lower()
    banner = page.text("#study-banner")
    assert "1 view" in banner and study_b[:8] in banner and study_a[:8] not in banner

    # B drafted and saved: the save lands on B.
    page.generate()
    page.type_into("#findings textarea", "B's findings.")
    page.click("save-btn")
    page.wait.until(lambda d: "Saved version 1" in page.text("#status"))
    assert _only_draft(services, study_b).current[0] == "B's findings."
    assert len(services.store.get_draft(draft_a.id, "local").versions) == 0

    # New study: the editor, the ids and the draft view are cleared too.
    page.click("new-study-btn")
    page.wait.until(lambda d: page.value("#findings textarea") == "" and "no study" in page.text("#study-banner").lower())
    assert page.text("#summary") == "" and study_b[:8] not in page.text("#study-banner")


def test_2_errors_reach_the_page_in_words(page: Page) -> None:
    bogus = page.tmp / "chest.png"
    bogus.write_text("<html>not an image</html>", encoding="utf-8")
    page.upload(bogus)
    page.wait.until(lambda d: "not a PNG, JPEG or DICOM" in page.body())
    assert "chest.png" in page.body()
    page.click("save-btn")  # nothing drafted on screen: refused in words
    page.wait.until(lambda d: "no draft" in page.body().lower())


def test_3_a_refused_file_leaves_the_list_and_the_next_upload_works(page: Page) -> None:
    bogus = page.tmp / "notes.png"
    bogus.write_text("just text", encoding="utf-8")
    page.upload(bogus)
    page.wait.until(lambda d: "notes.png" in page.body() and "not a PNG" in page.body())
    page.wait.until(lambda d: "notes.png" not in page.text("#upload"))
    study = page.upload_study(13)
    page.wait.until(lambda d: page.d.find_elements(page.by.CSS_SELECTOR, "#viewer img"))
    assert "view 1" in page.text("#view-info")
    # One view only: no ghost of the refused file.
    assert len(page.services.store.get_study(study, "local").images) == 1
    page.wait.until(lambda d: "1 view" in page.text("#study-banner"))


def test_4_garbled_draft_warnings_cannot_be_missed(room, page: Page) -> None:
    _, services = room
    study = page.upload_study(14)
    draft = services.store.add_draft(NewDraft(
        study_id=study, author="local", model="embedded", model_revision="test", sampler="echo", language="en",
        report=GARBLED, findings="Bilateralound--lloundlllll Impression Impression", impression="Normal.",
        warnings=[GARBLED_WARNING]))
    page.d.find_element(page.by.XPATH, "//button[@role='tab' and contains(., 'History')]").click()
    page.wait.until(lambda d: d.find_element(page.by.ID, "open-btn").is_displayed())
    page.type_into("#history-draft textarea, #history-draft input", draft.id)
    page.click("open-btn")
    page.wait.until(lambda d: GARBLED_WARNING in page.text("#draft-warnings"))
    assert page.d.find_element(page.by.ID, "draft-warnings").is_displayed()
    assert "Impression" not in page.value("#findings textarea")  # the split copes with repeated headers
    page.sign()
    page.wait.until(lambda d: "sign anyway" in page.body().lower())
    assert services.store.get_draft(draft.id, "local").signed_at is None
    page.sign(anyway=True)
    page.wait.until(lambda d: "Signed" in page.text("#status"))
    assert services.store.get_draft(draft.id, "local").signed_at is not None


def test_5_sign_twice_progress_labels_and_about(room, page: Page) -> None:
    page.upload_study(15)
    page.generate()
    findings = page.value("#findings textarea")
    page.sign(anyway=True)  # the tiny model's draft fails the report check
    page.wait.until(lambda d: "Signed" in page.text("#status"))
    page.click("sign-btn")  # again: refused, the text stays
    page.wait.until(lambda d: "already signed" in page.body().lower())
    assert page.value("#findings textarea") == findings and findings

    # A new study resets the draft view and its progress line.
    page.upload_study(16)
    page.wait.until(lambda d: page.text("#summary") == ""
                    and not d.find_elements(page.by.CSS_SELECTOR, "#report-view .token"))
    assert "0.0" not in page.text("#report-view") and page.value("#findings textarea") == ""

    # The sampler's label fits its box.
    fits = page.d.execute_script(
        "const i = document.querySelector('#sampler input'); return i.scrollWidth <= i.clientWidth + 1;")
    assert fits, page.value("#sampler input")

    page.d.find_element(page.by.XPATH, "//button[@role='tab' and contains(., 'About')]").click()
    page.wait.until(lambda d: "ECHO_MODEL" in page.text("#about"))
    about = page.text("#about")
    assert "random weights" not in about and "demonstration" in about


def test_6_a_warned_one_step_draft_offers_the_teacher_for_the_study_on_screen(room, page: Page, checkpoint) -> None:
    from echo_model.loading import embedded_path

    _, services = room
    if not embedded_path("teacher").is_dir():  # the served app's embedded family: the tiny model in each role
        checkpoint.save_pretrained(embedded_path("teacher"))
    study = page.upload_study(17)
    page.generate()  # the tiny model's echo draft fails the report check: the teacher is offered under it
    first = _only_draft(services, study)
    assert first.sampler == "echo" and first.warnings
    page.wait.until(lambda d: d.find_element(page.by.ID, "teacher-redraft-btn").is_displayed())

    page.click("teacher-redraft-btn")

    def drafts() -> list:
        return [r.draft_id for r in services.store.history("local") if r.study_id == study and r.draft_id]

    page.wait.until(lambda d: len(drafts()) == 2 and "not signed" in page.text("#status"))
    (new_id,) = set(drafts()) - {first.id}
    second = services.store.get_draft(new_id, "local")
    assert second.sampler == "teacher"  # the study on screen, drafted again by the teacher
    page.wait.until(lambda d: f"draft `{new_id[:8]}`" in page.text("#study-banner") or new_id[:8] in page.text("#study-banner"))
    assert "Teacher" in page.value("#sampler input")
    assert services.store.get_draft(first.id, "local").report == first.report  # the warned draft is kept
    page.wait.until(lambda d: not any(e.is_displayed() for e in d.find_elements(page.by.ID, "teacher-redraft-btn")))
