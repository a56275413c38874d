"""``python -m inspector`` as an operator runs it: it refuses to start without a way to sign in, else it serves on
127.0.0.1:INSPECTOR_PORT until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from services.container import open_process, open_session
from tests.agent_process import REPO, clean_env
from tests.inspector.conftest import OPERATOR_TOKEN, inspector_settings
from tests.net import free_port


def start(tmp_path: Path, **variables: str) -> subprocess.Popen[str]:
    env = clean_env(tmp_path, PYTHONPATH=str(REPO), OUTBOX_DIR=str(tmp_path / "outbox"), **variables)
    return subprocess.Popen(
        [sys.executable, "-m", "inspector"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_it_refuses_to_start_without_a_token_or_supabase_sign_in(tmp_path: Path) -> None:
    refused = start(tmp_path)
    _, err = refused.communicate(timeout=60)

    assert refused.returncode == 78
    assert "The inspector needs INSPECTOR_TOKEN" in err
    short = start(tmp_path, INSPECTOR_TOKEN="short")
    _, err = short.communicate(timeout=60)
    assert short.returncode == 78
    assert "INSPECTOR_TOKEN must be at least 16 characters" in err


async def seed(tmp_path: Path, user: uuid.UUID) -> None:
    settings = inspector_settings(tmp_path, outbox_dir=tmp_path / "seed-outbox")
    async with await open_process(settings) as process, await open_session(process, user_id=user) as services:
        await services.memories.save_memory("FACT", "pin", "My PIN is 1234")


def test_it_serves_on_the_loopback_port_logs_changes_without_values_and_stops_on_sigterm(tmp_path: Path) -> None:
    user = uuid.uuid4()
    asyncio.run(seed(tmp_path, user))
    port = free_port()
    served = start(tmp_path, INSPECTOR_TOKEN=OPERATOR_TOKEN, INSPECTOR_PORT=str(port))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/api/users", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
                )
                break
            except httpx.TransportError:
                assert served.poll() is None, served.communicate()[1]
                assert time.monotonic() < deadline, "the inspector did not answer within 60 s"
                time.sleep(0.2)
        assert response.status_code == 200
        edited = httpx.patch(
            f"http://127.0.0.1:{port}/api/users/{user}/memories/FACT/pin",
            json={"value": "My PIN is 4321"},
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
            timeout=30,
        )
        assert edited.status_code == 200
    finally:
        served.send_signal(signal.SIGTERM)
        _, err = served.communicate(timeout=30)
    assert served.returncode == 0
    assert f"Memory inspector on http://127.0.0.1:{port}" in err
    [audit] = [line for line in err.splitlines() if "companion.inspector.audit" in line]
    assert f'"action": "edit", "actor": "operator", "category": "FACT", "key": "pin", "user_id": "{user}"' in audit
    assert "4321" not in err
    assert "1234" not in err
    assert OPERATOR_TOKEN not in err
