"""The chat-history budget: which turns are folded into the summary (pure), and the summary itself (the LLM behind
a local OpenAI-compatible fake)."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI

from infrastructure.llm import OpenAIChat
from services.context_budget import (
    HISTORY_SUMMARY_PROMPT,
    SUMMARY_HEADER,
    Compaction,
    ContextBudget,
    HistoryItem,
)
from services.rag_service import estimate_tokens
from tests.fakes.openai_server import FakeOpenAIServer

WORDS = "x" * 400  # 100 tokens; every item below costs 104 with its framing


def turn(n: int, *, tool: bool = False) -> list[HistoryItem]:
    items = [HistoryItem(f"u{n}", "user", WORDS)]
    if tool:
        items += [
            HistoryItem(f"c{n}", "tool", WORDS, call_id=f"call{n}"),
            HistoryItem(f"o{n}", "tool", WORDS, call_id=f"call{n}"),
        ]
    return [*items, HistoryItem(f"a{n}", "assistant", WORDS)]


def budget(max_tokens: int, **params: object) -> ContextBudget:
    """A budget without room kept for the summary, so that the arithmetic below is about turns alone."""
    return ContextBudget(llm=None, max_tokens=max_tokens, **{"summary_reserve": 0, **params})  # type: ignore[arg-type]


def test_a_history_within_the_budget_is_left_alone() -> None:
    history = turn(1) + turn(2)  # 4 items x 104 = 416 tokens
    assert estimate_tokens(WORDS) == 100
    assert budget(416).plan(history) is None


def test_past_the_budget_the_oldest_turns_fold_until_half_the_budget_is_left() -> None:
    history = turn(1) + turn(2) + turn(3) + turn(4)  # 832 tokens against 800; keep at most 400
    plan = budget(800).plan(history)
    assert plan is not None
    # Folding turn 1 leaves 624, turns 1-2 leave 416 (> 400), but turn 4 and 3 are the two kept user turns.
    assert [item.id for item in plan.fold] == ["u1", "a1", "u2", "a2"]
    assert plan.history_tokens == 832


def test_the_cut_never_separates_a_tool_call_from_its_output() -> None:
    history = turn(1, tool=True) + turn(2) + turn(3) + turn(4)  # 1040 tokens
    plan = budget(1000, keep_ratio=0.9).plan(history)  # keep at most 900: folding turn 1 alone leaves 624
    assert plan is not None
    assert [item.id for item in plan.fold] == ["u1", "c1", "o1", "a1"]


def test_a_tool_output_that_came_after_the_next_user_message_stays_with_its_call() -> None:
    # A slow tool: the user spoke again before its output arrived, so LiveKit ordered call, user, output.
    late = [HistoryItem("u1", "user", WORDS), HistoryItem("c1", "tool", WORDS, call_id="call1"),
            HistoryItem("u2", "user", WORDS), HistoryItem("o1", "tool", WORDS, call_id="call1"),
            HistoryItem("a2", "assistant", WORDS)]  # fmt: skip
    history = late + turn(3) + turn(4)  # 936 tokens
    plan = budget(900, keep_ratio=0.9).plan(history)  # keep 810: cutting at u2 would leave 728
    assert plan is not None
    assert [item.id for item in plan.fold] == ["u1", "c1", "u2", "o1", "a2"]  # not cut at u2


def test_room_is_kept_for_the_summary_so_the_next_reply_does_not_fold_again() -> None:
    history = turn(1) + turn(2) + turn(3) + turn(4)  # 832 tokens against 800
    plan = ContextBudget(llm=None, max_tokens=800, summary_reserve=200).plan(history)  # type: ignore[arg-type]
    assert plan is not None
    # Keep at most 400 - 200 = 200: as far as the kept turns allow, so the summary and turns 3-4 make 616.
    assert plan.ids == {"u1", "a1", "u2", "a2"}


def test_the_last_turns_are_never_folded_even_when_they_alone_are_over_the_budget() -> None:
    history = turn(1, tool=True) + turn(2, tool=True)  # 832 tokens in two turns, budget 200
    assert budget(200).plan(history) is None  # both are among the two kept turns
    plan = budget(200, keep_user_turns=1).plan(history)
    assert plan is not None
    assert plan.ids == {"u1", "c1", "o1", "a1"}


def test_a_previous_summary_is_folded_into_the_next_one() -> None:
    summary = HistoryItem("s1", "summary", f"{SUMMARY_HEADER} They talked about the bakery.")
    history = [summary, *turn(2), *turn(3), *turn(4)]
    plan = budget(600).plan(history)
    assert plan is not None
    assert plan.fold[0] is summary


@pytest.mark.parametrize(
    ("params", "message"),
    [({"max_tokens": 10}, "max_tokens"), ({"keep_ratio": 1.0}, "keep_ratio"), ({"keep_user_turns": 0}, "turns")],
)
def test_nonsense_parameters_are_refused(params: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContextBudget(llm=None, **{"max_tokens": 1000, **params})  # type: ignore[arg-type]


async def test_the_summary_reads_the_summary_so_far_and_the_folded_turns() -> None:
    def summariser(body: dict) -> str | None:
        return (
            "  They talked about the new\njob at the bakery.  "
            if body["messages"][0]["content"] == HISTORY_SUMMARY_PROMPT
            else None
        )

    with FakeOpenAIServer(responder=summariser) as fake:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="x")
        try:
            context = ContextBudget(llm=OpenAIChat(client=client, model="fake"), max_tokens=1000)
            fold = (
                HistoryItem("s1", "summary", f"{SUMMARY_HEADER} They met last week."),
                HistoryItem("u2", "user", "I got the job at the bakery"),
                HistoryItem("a2", "assistant", "Congratulations!"),
            )
            summary = await context.summarise(Compaction(fold=fold, history_tokens=1200))
        finally:
            await client.close()
    assert summary == f"{SUMMARY_HEADER} They talked about the new job at the bakery."
    prompt = fake.chat_requests[-1]["messages"][1]["content"]
    assert prompt.startswith("Summary so far:\nThey met last week.\n")  # the header is not fed back
    assert "user: I got the job at the bakery\nassistant: Congratulations!" in prompt
    assert context.compactions == 1
