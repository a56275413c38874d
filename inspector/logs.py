"""The inspector's log lines: one per record, its fixed message and its fields as JSON (the audit line's user id,
action, category and key; never a value, a token or what a user said)."""

from __future__ import annotations

import json
import logging

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        return f"{line} {json.dumps(fields, default=str, sort_keys=True)}" if fields else line


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    for chatty in ("aiosqlite", "asyncio", "httpcore", "httpx", "openai._base_client"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
