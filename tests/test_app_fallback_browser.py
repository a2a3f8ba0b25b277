"""The embedded family's default fallback in a real browser: a one-step draft that fails the report check is
drafted again by the teacher, then AR, on the study on screen, with the reason in words; every warned draft
stays in History."""

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
                    fallback=None) as served:  # None: ECHO_FALLBACK unset, the embedded family's default
        for role in ("teacher", "ar"):  # the embedded family: the tiny model in each role
            checkpoint.save_pretrained(embedded_path(role))
        yield served


def test_a_warned_draft_is_drafted_again_by_the_teacher_then_ar_with_the_reason_shown(  # noqa: F811
        fallback_app, driver, tmp_path) -> None:
    url, services = fallback_app
    page = Page(driver, url, tmp_path, services)
    study = page.upload_study(21)
    page.click("generate-btn")

    def drafts() -> list:
        rows = [r for r in services.store.history("local") if r.study_id == study and r.draft_id]
        return [services.store.get_draft(r.draft_id, "local") for r in sorted(rows, key=lambda r: r.created_at)]

    # the tiny model fails the check with every sampler: echo, then the teacher, then AR, which is shown
    page.wait.until(lambda d: len(drafts()) == 3 and "not signed" in page.text("#status"))
    first, second, last = drafts()
    assert (first.sampler, second.sampler, last.sampler) == ("echo", "teacher", "ar")
    assert first.warnings and second.warnings  # why each was drafted again
    status = page.text("#status")
    assert "Drafted again by the ar: the teacher draft failed the report check" in status
    assert "stays in History" in status
    # the editor is bound to the last draft of the study on screen, whose own warnings stay visible
    page.wait.until(lambda d: last.id[:8] in page.text("#study-banner"))
    assert study[:8] in page.text("#study-banner")
    assert last.warnings[0] in page.text("#draft-warnings")
    assert not any(e.is_displayed() for e in driver.find_elements(page.by.ID, "teacher-redraft-btn"))
    assert services.store.get_draft(first.id, "local").report == first.report  # the warned drafts are kept
