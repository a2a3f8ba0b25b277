"""Screenshots of the app's Draft, History, Explain and Race tabs at 1280 x 800, for the README and docs/app.md.

Usage::

    python scripts/screenshots.py [--dicom FILE] [--out docs/screenshots] [--model embedded]

Serves the app on loopback over a temporary data directory (nothing of it is kept), opens it in headless
chromium (Selenium) at 1280 x 800 and walks one study through the tabs as a radiologist would:

1. **Draft**: upload ``--dicom`` (default: ``RG1_UNCR.dcm``, the real chest radiograph that the ``pydicom-data``
   package ships), choose the *lung* window preset, Generate; ``draft.png``, and when the report check warns
   about the draft, ``draft-check.png`` (the warnings, the teacher re-draft button and the editor).
2. **History**: the worklist with the study; ``history.png``.
3. **Explain**: the draft's first block explained with the default method; ``explain.png``.
4. **Race**: the same study drafted by AR and ECHO side by side (natural length); ``race.png``.

Needs ``chromium``, ``chromium-driver`` (Debian) and ``selenium``. The screenshots show whatever ``--model``
writes (with the embedded demonstration models: their drafts and their limitation notice).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1280, 800)
TIMEOUT_S = 600  # a first draft loads the model; a race drafts three times


def default_dicom() -> Path:
    """``RG1_UNCR.dcm`` from ``pydicom-data`` (a real, de-identified chest radiograph)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        raise SystemExit("RG1_UNCR.dcm not found: pip install pydicom-data, or pass --dicom FILE")
    return Path(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(model: str, data_dir: Path) -> Iterator[str]:
    """The app on loopback with ``model``; its URL."""
    from app.main import build_demo, launch_options
    from app.settings import AppSettings

    settings = AppSettings(models=(model,), data_dir=data_dir, server_name="127.0.0.1", server_port=_free_port())
    demo = build_demo(settings)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_options(settings))
    try:
        yield url
    finally:
        demo.close()


@contextlib.contextmanager
def browser(profile: Path) -> Iterator[object]:
    """Headless chromium at :data:`SIZE`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise SystemExit("needs a browser: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--window-size={SIZE[0]},{SIZE[1]}", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    drv = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        drv.set_window_size(*SIZE)
        # The viewport, not the window, must be SIZE: add the window's frame.
        inner = drv.execute_script("return [window.innerWidth, window.innerHeight];")
        drv.set_window_size(2 * SIZE[0] - inner[0], 2 * SIZE[1] - inner[1])
        yield drv
    finally:
        drv.quit()


class Walk:
    """One study through the tabs, with the waits a user would make."""

    def __init__(self, driver, out: Path):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.out = driver, out
        self.wait = WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.2)

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def click(self, selector: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, selector))).click()

    def tab(self, label: str) -> None:
        from selenium.webdriver.common.by import By

        buttons = [b for b in self.driver.find_elements(By.CSS_SELECTOR, "button[role='tab']") if label in b.text]
        if not buttons:
            raise RuntimeError(f"no tab labelled {label!r}")
        buttons[0].click()
        time.sleep(0.5)

    def text_appears(self, selector: str, needle: str = "") -> None:
        def ready(_) -> bool:
            from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

            try:
                text = self.css(selector).text
            except (NoSuchElementException, StaleElementReferenceException):  # not rendered yet
                return False
            return bool(text.strip()) and needle in text

        self.wait.until(ready)

    def shot(self, name: str, *, scroll_to: str | None = None) -> Path:
        if scroll_to:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", self.css(scroll_to))
        else:
            self.driver.execute_script("window.scrollTo(0, 0);")
        time.sleep(0.8)  # let transitions settle
        path = self.out / f"{name}.png"
        self.driver.save_screenshot(str(path))
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        return path

    def run(self, url: str, dicom: Path) -> list[Path]:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        d = self.driver
        d.get(url)
        self.click("#generate-btn")  # clickable = the page is up (no study yet: refused in words, harmless)
        d.refresh()
        self.wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        self.css("#upload input[type=file]").send_keys(str(dicom))
        self.wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#viewer img"))
        self.css("body").send_keys("1")  # lung preset (keyboard shortcut)
        self.click("#generate-btn")
        self.text_appears("#summary", "first block")
        shots = [self.shot("draft", scroll_to="#study-banner")]
        # The report check's verdict on the same draft, the offer to re-draft it with the teacher and the editor.
        if self.css("#draft-warnings").text.strip():
            shots.append(self.shot("draft-check", scroll_to="#draft-warnings"))

        self.tab("History")
        self.click("#refresh-btn")
        self.wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#worklist img"))
        shots.append(self.shot("history"))

        self.tab("Explain")
        self.click("#explain-load")
        self.click("#explain-btn")
        self.text_appears("#explain-label", "s")
        shots.append(self.shot("explain", scroll_to="#explain-intro"))

        self.tab("Race")
        self.css("body").send_keys(Keys.ESCAPE)
        use = [b for b in d.find_elements(By.CSS_SELECTOR, "button") if "Draft tab's study" in b.text]
        if use:
            use[0].click()
        self.click("#race-btn")
        self.text_appears("#race-figures", "ECHO")
        shots.append(self.shot("race", scroll_to="#race-how"))  # the panels, their figures and report checks
        return shots


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom", type=Path, default=None, help="the study to show (default: RG1_UNCR.dcm)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--model", default="embedded", help="checkpoint: embedded, a folder or a hub id")
    args = parser.parse_args(argv)
    dicom = args.dicom or default_dicom()
    if not dicom.is_file():
        raise SystemExit(f"no such file: {dicom}")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (tempfile.TemporaryDirectory(prefix="echo-screenshots-") as tmp,
          served(args.model, Path(tmp) / "data") as url, browser(Path(tmp) / "profile") as driver):
        Walk(driver, args.out).run(url, dicom)
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
