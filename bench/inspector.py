"""Inspector benchmark: how long the JSON API takes for one user with 100 and 1,000 memories.

    python bench/inspector.py [--database-url postgresql://...] [--sizes 100,1000] [--runs 5]

One user per size, a tenth of whose memories have an earlier value; the inspector served over a process of the real
services (SQLite in a temporary folder unless ``--database-url`` names an empty database to use). Median
milliseconds of ``--runs`` requests each: the memories with their history, the export, a recall, an edit. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from core.config import Settings  # noqa: E402
from inspector.server import serve  # noqa: E402
from services.container import open_process, open_session  # noqa: E402
from services.memory_service import NewMemory  # noqa: E402


async def measure(settings: Settings, size: int, runs: int) -> dict[str, float]:
    token = settings.inspector_token.get_secret_value() if settings.inspector_token else ""
    async with await open_process(settings) as process:
        user = uuid.uuid4()
        me = await open_session(process, user_id=user)
        await me.users.ensure_profile_exists()
        await me.memories.save_many(
            [
                NewMemory("FACT", f"k{i}", f"Fact {i} about the garden, the tomatoes and the {i * 7} seeds")
                for i in range(size)
            ]
        )
        for i in range(0, size, 10):
            await me.memories.save_memory("FACT", f"k{i}", f"Changed fact {i}")
        async with serve(settings, host="127.0.0.1", port=0, process=process) as url:
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as api:
                requests = {
                    "memories_ms": ("GET", f"/api/users/{user}/memories", None),
                    "export_ms": ("GET", f"/api/users/{user}/export", None),
                    "recall_ms": ("GET", f"/api/users/{user}/recall?q=tomatoes+in+the+garden", None),
                    "edit_ms": ("PATCH", f"/api/users/{user}/memories/FACT/k1", {"value": "Grows basil"}),
                }
                result = {}
                for name, (method, path, body) in requests.items():
                    times = []
                    for run in range(runs):
                        if body is not None:
                            body = {"value": f"Grows basil, {run} pots"}
                        started = time.perf_counter()
                        response = await api.request(method, path, json=body)
                        times.append((time.perf_counter() - started) * 1000)
                        response.raise_for_status()
                    result[name] = round(statistics.median(times), 1)
    return result


async def main(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {"backend": "postgresql" if args.database_url else "sqlite", "runs": args.runs}
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=args.database_url or f"sqlite:///{folder}/companion.db",
            outbox_dir=Path(folder) / "outbox",
            openai_base_url="http://127.0.0.1:9/v1",  # the inspector makes no LLM call
            inspector_token=secrets.token_urlsafe(24),
            inspector_rate_limit_per_minute=100_000,
        )
        for size in args.sizes:
            out[str(size)] = await measure(settings, size, args.runs)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1_000])
    parser.add_argument("--runs", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
