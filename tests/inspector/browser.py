"""A real headless browser for the inspector's pages: Debian's Chromium driven by Selenium through Debian's
chromedriver (both from ``scripts/system-deps.sh test``; Selenium Manager is never asked to download anything).

Selenium is synchronous and the inspector runs on the test's event loop, so every browser call goes to a thread.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = (
    "Debian's chromium and chromium-driver are not installed (scripts/system-deps.sh test installs them: "
    "apt-get install chromium chromium-driver)"
)


def chromium_driver(*, width: int = 1000, height: int = 900, arguments: tuple[str, ...] = ()) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--disable-extensions", "--no-first-run", *arguments):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def wait_until_gone(driver: webdriver.Chrome, element: WebElement, *, timeout: float = 30) -> None:
    """Wait for the page that held ``element`` to be replaced (a form's navigation has ended).

    Selenium's ``staleness_of`` knows only "stale element reference"; while the old document is being torn down,
    chromedriver may instead answer "unknown error: ... Node with given id does not belong to the document",
    which means the same thing (a clean-clone CI run failed on it).
    """

    def gone(_: webdriver.Chrome) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in (error.msg or ""):
                return True
            raise
        return False

    WebDriverWait(driver, timeout).until(gone)


def require_chromium() -> None:
    """Skip when Chromium cannot be had here; in CI (CI=true) that is a failure, not a skip."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists() and shutil.which(str(CHROMEDRIVER)):
        return
    if os.environ.get("CI"):
        pytest.fail(MISSING)
    pytest.skip(MISSING)


class Browser:
    """The few things the tests do with a page, each awaited off the event loop."""

    def __init__(self, driver: webdriver.Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    async def open(self, path: str) -> None:
        await asyncio.to_thread(self.driver.get, self.base_url + path)

    async def text(self, css: str = "main") -> str:
        return await asyncio.to_thread(lambda: self.driver.find_element(By.CSS_SELECTOR, css).text)

    async def fill(self, css: str, text: str) -> None:
        def fill() -> None:
            field = self.driver.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(text)

        await asyncio.to_thread(fill)

    async def click(self, css: str) -> None:
        await asyncio.to_thread(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def submit(self, css: str) -> None:
        """Click a form's button and wait for the page it leads to (the old page gone)."""

        def submit() -> None:
            for attempt in range(3):
                button = self.driver.find_element(By.CSS_SELECTOR, css)
                try:
                    button.click()
                    break
                except WebDriverException:  # chromedriver now and then loses a node it just found: find it again
                    if attempt == 2:
                        raise
            wait_until_gone(self.driver, button)

        await asyncio.to_thread(submit)

    async def sign_in(self, token: str) -> None:
        await self.open("/login")
        await self.fill("#token", token)
        await self.submit("form[action='/login'] button")

    async def path(self) -> str:
        """Where the browser is (waits for a navigation under way, so never on the event loop the server needs)."""
        return (await asyncio.to_thread(lambda: self.driver.current_url)).removeprefix(self.base_url)

    async def source(self) -> str:
        return await asyncio.to_thread(lambda: self.driver.page_source)

    async def alert_shown(self) -> bool:
        def shown() -> bool:
            try:
                self.driver.switch_to.alert  # noqa: B018 (the property raises when there is none)
            except NoAlertPresentException:
                return False
            return True

        return await asyncio.to_thread(shown)


def drivers() -> Iterator[webdriver.Chrome]:
    require_chromium()
    driver = chromium_driver()
    try:
        yield driver
    finally:
        driver.quit()
