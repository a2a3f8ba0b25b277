"""The study viewer in a real browser (headless Chromium): a 16-bit DICOM and a PNG uploaded side by side with
their labels (the PNG's asked once), reopened from History, windowed from the 16-bit originals under each
preset (keys 1/2/3/0), inverted (key i), zoomed with the wheel and reset; keys ignored while typing, n / p
dispatched to the study navigation buttons."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_app_browser import driver, served_app  # noqa: F401  (driver: the shared Chromium fixture)
from test_app_reading_room import Page
from test_app_viewer import dicom16

from app.service import Services
from app.store import NewDraft
from app.viewer import PRESETS, preset_window, view_pixels, window_pixels

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]

_PANES_JS = """return [...document.querySelectorAll('#viewer .echo-pane')].map(p => {
  const img = p.querySelector('img'), box = img.getBoundingClientRect();
  return {caption: p.querySelector('.echo-caption').textContent, zoom: p.querySelector('.echo-zoom').textContent,
          src: img.src, left: box.left, top: box.top, transform: img.style.transform};
});"""


# Stand-ins for the History tab's study navigation buttons: record their clicks.
_STUDY_BUTTONS_JS = """window.__echoStudyClicks = [];
for (const [id, name] of [['next-study-btn', 'next'], ['prev-study-btn', 'prev']]) {
  let button = document.getElementById(id);  // the History tab's study buttons (a stand-in where absent)
  if (!button) {
    button = document.createElement('button');
    button.id = id;
    document.body.appendChild(button);
  }
  button.addEventListener('click', () => window.__echoStudyClicks.push(name), true);
}"""


@pytest.fixture(scope="module")
def viewer_app(tmp_path_factory, checkpoint) -> Iterator[tuple[str, Services]]:
    with served_app(tmp_path_factory.mktemp("viewer-browser"), checkpoint, max_new_tokens=8) as served:
        yield served


def _panes(page: Page) -> list[dict[str, Any]]:
    return page.d.execute_script(_PANES_JS)


def _pixels(src: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("L"))


def _pane(page: Page, word: str) -> dict[str, Any]:
    (pane,) = [p for p in _panes(page) if word in p["caption"]]
    return pane


def _choose(page: Page, elem_id: str, option: str) -> None:
    """Pick an option of a Gradio dropdown as a user does: open it, click the option."""
    page.d.find_element(page.by.CSS_SELECTOR, f"#{elem_id} input").click()

    def item() -> Any:
        items = page.d.find_elements(page.by.CSS_SELECTOR, "ul li.item")
        return next((o for o in items if o.text.replace("✓", "").strip() == option), None)

    page.wait.until(lambda d: item() is not None)
    item().click()


def _press(page: Page, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    page.d.execute_script("document.activeElement && document.activeElement.blur()")
    ActionChains(page.d).send_keys(key).perform()


def test_16_bit_dicom_reopened_from_history_presets_invert_zoom_and_labels(viewer_app, driver,  # noqa: F811
                                                                           tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    url, services = viewer_app
    page = Page(driver, url, tmp_path, services)
    png, dicom = page.image(31, "side.png"), tmp_path / "IM0002"
    dicom.write_bytes(dicom16(seed=5))
    before = page.studies()
    page.d.find_element(page.by.CSS_SELECTOR, "#upload input[type=file]").send_keys(f"{png}\n{dicom}")
    page.wait.until(lambda d: page.studies() - before and len(_panes(page)) == 2)
    (study_id,) = page.studies() - before

    # 1. Side by side with their labels; the PNG's position is unknown until asked (once, stored).
    assert "position unknown" in _pane(page, "view 1")["caption"] and "PA" in _pane(page, "view 2")["caption"]
    _choose(page, "view-label", "lateral")
    page.wait.until(lambda d: "lateral" in _pane(page, "view 1")["caption"])
    assert [img.view for img in services.store.get_study(study_id, "local").images] == ["lateral", "pa"]
    left, right = _pane(page, "view 1"), _pane(page, "view 2")
    assert abs(left["top"] - right["top"]) < 2 and right["left"] > left["left"] + 50

    # 2. Reopen from History in a fresh page (nothing kept in the browser): the originals are what is windowed.
    draft = services.store.add_draft(NewDraft(study_id=study_id, author="local", model="embedded",
                                              model_revision="test", sampler="echo", language="en",
                                              report="Lungs are clear.", findings="Lungs are clear.", impression=""))
    page = Page(driver, url, tmp_path, services)
    page.d.find_element(page.by.XPATH, "//button[@role='tab' and contains(., 'History')]").click()
    page.wait.until(lambda d: d.find_element(page.by.ID, "open-btn").is_displayed())
    page.type_into("#history-draft textarea, #history-draft input", draft.id)
    page.click("open-btn")
    page.wait.until(lambda d: len(_panes(page)) == 2 and "L 1600 / W 2400 (file default)" in
                    _pane(page, "PA")["caption"])
    _choose(page, "view-select", "view 2 (pa)")  # the sliders now adjust the DICOM: their range is its values
    page.wait.until(lambda d: float(d.find_element(page.by.CSS_SELECTOR, "#window-center input[type=range]")
                                    .get_attribute("max")) > 255)

    image = services.store.get_study(study_id, "local").images[1]
    originals = view_pixels(image.path, image.metadata, original_path=image.original_path)
    assert originals.deep and image.original_path is not None
    shown = {"default": _pixels(_pane(page, "PA")["src"])}
    for key, preset in (("1", "lung"), ("2", "mediastinum"), ("3", "bone"), ("0", "default")):
        previous = _pane(page, "PA")["src"]
        _press(page, key)
        page.wait.until(lambda d, previous=previous, preset=preset: _pane(page, "PA")["src"] != previous
                        or preset == "default")
        page.wait.until(lambda d, preset=preset: f"({PRESETS[preset].split(' (')[0].lower()})"
                        in _pane(page, "PA")["caption"])
        shown[preset] = _pixels(_pane(page, "PA")["src"])
        expected = window_pixels(originals.values, preset_window(originals, preset))
        assert np.array_equal(shown[preset], expected), preset  # windowed from the 16-bit values
    assert len({shown[p].tobytes() for p in ("default", "lung", "mediastinum", "bone")}) == 4

    # 3. Invert (key i): black and white swap.
    plain = _pixels(_pane(page, "PA")["src"])
    _press(page, "i")
    page.wait.until(lambda d: "inverted" in _pane(page, "PA")["caption"])
    assert np.array_equal(_pixels(_pane(page, "PA")["src"]), 255 - plain)

    # 4. Zoom with the wheel over a view, kept through a preset change; drag pans; the reset button restores 100 %.
    assert _pane(page, "PA")["zoom"] == "zoom 100 %"
    stage = page.d.find_elements(page.by.CSS_SELECTOR, "#viewer .echo-pane .echo-stage")[1]
    ActionChains(page.d).scroll_from_origin(ScrollOrigin.from_element(stage), 0, -300).perform()
    page.wait.until(lambda d: _pane(page, "PA")["zoom"] != "zoom 100 %")
    zoomed = _pane(page, "PA")
    assert int(zoomed["zoom"].split()[1]) > 100 and "scale(" in zoomed["transform"]
    assert _pane(page, "view 1")["zoom"] == "zoom 100 %"  # per view
    _press(page, "1")
    page.wait.until(lambda d: "(lung)" in _pane(page, "PA")["caption"])
    assert _pane(page, "PA")["zoom"] == zoomed["zoom"]
    before = _pane(page, "PA")["left"]
    ActionChains(page.d).drag_and_drop_by_offset(stage, 40, 0).perform()  # pan
    page.wait.until(lambda d: abs(_pane(page, "PA")["left"] - before - 40) < 2)
    page.click("reset-zoom-btn")
    page.wait.until(lambda d: _pane(page, "PA")["zoom"] == "zoom 100 %")
    assert _pane(page, "PA")["transform"] == "translate(0px, 0px) scale(1)"

    # 5. Keys: none while typing in a text box; n / p click the next / previous study buttons where present.
    page.d.find_element(page.by.CSS_SELECTOR, "#indication textarea, #indication input").send_keys("2i")
    controls = ("return [document.querySelector('#window-preset input:checked').value, "
                "document.querySelector('#invert input').checked]")
    assert page.d.execute_script(controls) == ["lung", True]  # a key press would have changed them at once
    page.d.execute_script(_STUDY_BUTTONS_JS)
    for key in ("n", "p", "n"):
        _press(page, key)
    assert page.d.execute_script("return window.__echoStudyClicks") == ["next", "prev", "next"]
