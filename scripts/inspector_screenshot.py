"""The README's screenshot of the inspector's memories page, taken by headless Chromium (Debian's chromium and
chromium-driver, as the browser tests use) over a fictional person seeded into a temporary SQLite database.

    .venv/bin/python scripts/inspector_screenshot.py [docs/inspector-memories.png]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selenium.webdriver.common.by import By  # noqa: E402

from core.config import Settings  # noqa: E402
from inspector.server import serve  # noqa: E402
from services.container import open_process, open_session  # noqa: E402
from services.memory_service import NewMemory  # noqa: E402
from tests.inspector.browser import chromium_driver, wait_until_gone  # noqa: E402

PERSON = uuid.UUID("7e57ab1e-0000-4000-8000-00000000a11a")  # fictional: Ana Ferreira, who does not exist
WIDTH = 900


async def seed(settings: Settings) -> None:
    now = dt.datetime.now(dt.UTC)
    async with await open_process(settings) as process, await open_session(process, user_id=PERSON) as ana:
        await ana.users.ensure_profile_exists()
        await ana.users.update_profile(name="Ana Ferreira", preferred_name="Ana", timezone="Europe/Lisbon")
        await ana.memories.save_many([
            NewMemory("RELATIONSHIP", "sister city", "Her sister Maya lives in Lisbon", 0.7, "tool", now - dt.timedelta(days=40)),
            NewMemory("RELATIONSHIP", "dog", "Has a beagle called Pimenta", 0.6, "extraction", now - dt.timedelta(days=12)),
            NewMemory("GOAL", "half marathon", "Training for the Porto half marathon in March", 0.8, "tool", now - dt.timedelta(days=9)),
            NewMemory("PREFERENCE", "drink", "Prefers green tea in the evening", 0.5, "extraction", now - dt.timedelta(days=30)),
            NewMemory("EVENT", "job interview", "Job interview at a design studio on Friday", 0.6, "extraction", now - dt.timedelta(days=3)),
            NewMemory("HEALTH", "knee", "Sore left knee after long runs", 0.8, "tool", now - dt.timedelta(days=5)),
        ])  # fmt: skip
        await ana.memories.save_memory("RELATIONSHIP", "sister city", "Her sister Maya moved to Porto", 0.7)
        ana.memories.record_access([m for m in await ana.memories.list_memories() if m.key != "drink"])
        await process.batcher.flush()


def shoot(url: str, token: str, out: Path) -> None:
    driver = chromium_driver(width=WIDTH, arguments=("--hide-scrollbars", "--force-device-scale-factor=1"))
    try:
        driver.get(url + "/login")
        driver.find_element(By.ID, "token").send_keys(token)
        button = driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button")
        button.click()
        # The sign-in's own navigation must end first: one still under way replaces the next page's document.
        wait_until_gone(driver, button)
        driver.get(f"{url}/users/{PERSON}")
        driver.find_element(By.CSS_SELECTOR, "#m-RELATIONSHIP-sister_city details summary").click()  # its history
        for _ in range(3):  # the window's frame takes some of its height: grow until the page fits
            height = driver.execute_script("return document.documentElement.scrollHeight")
            inner = driver.execute_script("return window.innerHeight")
            size = driver.get_window_size()["height"]
            driver.set_window_size(WIDTH, min(int(size + height - inner), 2_400))
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


async def main(out: Path) -> None:
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=f"sqlite:///{folder}/companion.db",
            outbox_dir=Path(folder) / "outbox",
            openai_base_url="http://127.0.0.1:9/v1",  # nothing is asked of an LLM
            inspector_token=token,
        )
        await seed(settings)
        async with serve(settings, host="127.0.0.1", port=0) as url:
            await asyncio.to_thread(shoot, url, token, out)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "inspector-memories.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(target))
    print(f"wrote {target} ({target.stat().st_size // 1024} KB)")
