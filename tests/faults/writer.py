"""A job process that writes, for the fault tests to SIGKILL: ``python -m tests.faults.writer <user> <conversation>``.

It opens the real services (``open_process`` / ``open_session``: the outbox, the batcher, the storage the environment
names), starts the conversation, prints ``READY`` and waits for a line on stdin (the test may stop the database
meanwhile). Then it saves a memory, logs three messages, waits until the outbox has them, prints ``ACK`` with the
rows its outbox holds, and waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

from core.config import load_settings
from services.container import open_process, open_session


async def main(user: uuid.UUID, conversation: uuid.UUID) -> None:
    process = await open_process(load_settings(env_file=None))
    session = await open_session(process, user_id=user, load=False)
    session.conversations.conversation_id = conversation
    await session.conversations.start()
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await session.memories.save_memory("RELATIONSHIP", "sister city", "Her sister Maya lives in Lisbon")
    for text in ("My sister moved to Lisbon.", "That sounds lovely.", "She loves it there."):
        session.conversations.log_message("user", text)
    await process.batcher.durable()  # the acknowledgement: every write above is fsynced in the outbox
    print("ACK " + json.dumps(process.outbox.stats().rows), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(uuid.UUID(sys.argv[1]), uuid.UUID(sys.argv[2])))
