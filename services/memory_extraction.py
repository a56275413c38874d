"""Memory extraction: after user turns, one LLM call turns what was said into durable memories.

The model sees the recent turns and the keys already known, and answers JSON. Output that does not validate is
logged (without its content) and dropped, never raised. Each item is then checked against what is known:
- the same key in the same category with a new value updates that memory (its history keeps the old value);
- a value that means nearly the same as an existing memory (embedding similarity) is a duplicate and is skipped;
- a value close to an existing FACT under a different key (a person has one job, one home city) is taken as that
  fact having changed, and updates it instead of adding a contradiction. Other categories hold many values
  ("her mother lives in Porto" and "her sister lives in Porto" are different people), so they are not merged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field, ValidationError

from core.categories import MAX_KEY_LENGTH, MAX_VALUE_LENGTH, MemoryCategory, category_names
from core.errors import CompanionError, WriteCancelledError
from core.validators import normalize_key, parse_category
from infrastructure.embeddings import Embedder
from infrastructure.llm import TextModel
from services.memory_service import index_text
from services.user_memory import UserMemory, WriteTicket

logger = logging.getLogger("companion.extraction")

EXTRACTION_PROMPT = (
    "You pick out durable facts about the user from a conversation with their companion: who they are, people in "
    "their life, preferences, goals, health, routines, and events worth remembering. Skip small talk, questions, "
    "and anything about the assistant. Categories: " + category_names() + ". "
    'Answer JSON: {"memories": [{"category": "...", "key": "snake_case_topic", "value": "one short sentence in '
    'the third person", "importance": 0.0-1.0}]}. Reuse a known key when the fact is about the same thing (a new '
    'job replaces "occupation"). Return {"memories": []} when there is nothing durable.'
)


class _Item(BaseModel):
    category: str = Field(min_length=1, max_length=32)  # an unknown one is taken as OTHER, not refused
    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)
    value: str = Field(min_length=1, max_length=MAX_VALUE_LENGTH)
    importance: float = Field(default=0.5, ge=0.0, le=1.0)


class _Output(BaseModel):
    memories: list[_Item] = Field(default_factory=list, max_length=20)


@dataclass(slots=True)
class ExtractionResult:
    saved: list[str] = field(default_factory=list)  # keys of new memories
    updated: list[str] = field(default_factory=list)  # keys whose value changed
    duplicates: int = 0
    dropped: bool = False  # the model's output did not validate


class MemoryExtractor:
    def __init__(
        self,
        *,
        memories: UserMemory,
        llm: TextModel,
        embedder: Embedder,
        duplicate_similarity: float = 0.92,
        same_fact_similarity: float = 0.75,
    ) -> None:
        self._memories = memories
        self._llm = llm
        self._embedder = embedder
        self._duplicate = duplicate_similarity
        self._same_fact = same_fact_similarity

    async def extract(self, turns: Sequence[tuple[str, str]]) -> ExtractionResult:
        """``turns``: (role, text) pairs, oldest first."""
        result = ExtractionResult()
        if not any(role == "user" for role, _ in turns) or not self._memories.can_write:
            return result
        ticket = self._memories.ticket()  # a forget from now on revokes it: nothing learnt before is saved after
        known = [f"{m.category}/{m.key}: {m.value}" for m in await self._memories.list_memories(limit=100)]
        prompt = "Known memories:\n" + ("\n".join(known) or "(none)") + "\n\nConversation:\n"
        prompt += "\n".join(f"{role}: {text}" for role, text in turns)
        try:
            raw = await self._llm.complete(system=EXTRACTION_PROMPT, user=prompt, json_object=True)
            output = _Output.model_validate(json.loads(raw))
        except CompanionError as exc:
            logger.warning("memory extraction failed", extra={"error": type(exc).__name__})
            result.dropped = True
            return result
        except (ValueError, ValidationError) as exc:
            logger.warning("memory extraction output dropped: not valid JSON of the expected shape",
                           extra={"error": type(exc).__name__})  # fmt: skip
            result.dropped = True
            return result
        for item in output.memories:
            try:
                await self._consider(item, result, ticket)
            except WriteCancelledError:  # the user forgot something meanwhile
                break
            except CompanionError as exc:  # one unusable item (or a slow database) does not stop the rest
                logger.warning("extracted memory skipped", extra={"error": type(exc).__name__})
        return result

    async def _consider(self, item: _Item, result: ExtractionResult, ticket: WriteTicket) -> None:
        try:
            kind = parse_category(item.category)
        except CompanionError:
            kind = MemoryCategory.OTHER
        category = kind.value
        try:
            key = normalize_key(item.key)
        except CompanionError:
            return
        value = " ".join(item.value.split())
        memories = self._memories
        existing = memories.get(category, key)
        if existing is not None:
            if existing.value.casefold() != value.casefold():
                if (await memories.save_memory(category, key, value, item.importance, source="extraction",
                                               ticket=ticket)).won:  # fmt: skip
                    result.updated.append(key)
            else:
                result.duplicates += 1
            return
        vector = (await self._embedder.embed([index_text(key, value)]))[0]
        for memory, similarity in memories.nearest(vector, k=3):
            if similarity >= self._duplicate:
                result.duplicates += 1
                return
            if kind.single_valued and memory.category == category and similarity >= self._same_fact:
                if (await memories.save_memory(category, memory.key, value, item.importance, source="extraction",
                                               ticket=ticket)).won:  # fmt: skip
                    result.updated.append(memory.key)
                return
        if (await memories.save_memory(category, key, value, item.importance, source="extraction", ticket=ticket)).won:
            result.saved.append(key)  # lost: another session saved this key first; its value holds
