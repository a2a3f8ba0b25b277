"""``ECHO_FALLBACK`` in a real browser: a draft that fails the report check is drafted again by the teacher,
on the study on screen, with the reason in words; the warned draft stays in History."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_app_browser import driver, served_app  # noqa: F401  (driver: the shared Chromium fixture)
from test_app_reading_room import Page

from app.service import Services

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]


@pytest.fixture(scope="module")
def fallback_app(tmp_path_factory, checkpoint) -> Iterator[tuple[str, Services]]:
    from echo_model.loading import embedded_path

    with served_app(tmp_path_factory.mktemp("fallback-app"), checkpoint, max_new_tokens=16,
                    fallback=("teacher",)) as served:
        checkpoint.save_pretrained(embedded_path("teacher"))  # the embedded family: the tiny model in each role
        yield served


def test_a_warned_draft_is_drafted_again_by_the_teacher_with_the_reason_shown(fallback_app, driver,  # noqa: F811
                                                                              tmp_path) -> None:
    url, services = fallback_app
    page = Page(driver, url, tmp_path, services)
    study = page.upload_study(21)
    page.click("generate-btn")

    def drafts() -> list:
        rows = [r for r in services.store.history("local") if r.study_id == study and r.draft_id]
        return [services.store.get_draft(r.draft_id, "local") for r in sorted(rows, key=lambda r: r.created_at)]

    page.wait.until(lambda d: len(drafts()) == 2 and "not signed" in page.text("#status"))
    first, second = drafts()
    assert (first.sampler, second.sampler) == ("echo", "teacher")
    assert first.warnings  # the tiny model's one-step draft fails the check: that is why it was drafted again
    status = page.text("#status")
    assert "Drafted again by the teacher: the echo draft failed the report check" in status
    assert "stays in History" in status
    # the editor is bound to the teacher's draft of the study on screen
    page.wait.until(lambda d: second.id[:8] in page.text("#study-banner"))
    assert study[:8] in page.text("#study-banner")
    assert not any(e.is_displayed() for e in driver.find_elements(page.by.ID, "teacher-redraft-btn"))
    assert services.store.get_draft(first.id, "local").report == first.report  # the warned draft is kept
