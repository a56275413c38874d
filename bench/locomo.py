"""Convert the public LoCoMo file into labelled sets for ``bench/rag.py --dataset``.

    python bench/locomo.py LOCOMO_JSON OUT_DIR

LoCoMo (snap-research/LoCoMo, ``data/locomo10.json``) holds 10 long conversations between two people, with
questions whose gold evidence is a list of turns. Its licence is CC BY-NC 4.0: neither the file nor anything made
from it belongs in this repository. Get it with ``git clone https://github.com/snap-research/LoCoMo``.

Each conversation becomes one set (one user), written to ``OUT_DIR/dev/`` or ``OUT_DIR/test/``:
- one memory per turn: ``"SPEAKER: text"``, plus ``" and shared <caption>."`` when the turn shares a photo (LoCoMo's
  own RAG code words it so), category OTHER, dated by its session, key = the turn's ``dia_id``;
- one query per question, its evidence ids as ``relevant``, its ``kind`` from the category number as the repo's
  ``task_eval`` code numbers them: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial;
- ``now`` is the last session's time.
Evidence ids are written by hand in the source and some are malformed: ``"D8:6; D9:17"`` (two in one string),
``"D:11:26"``, ``"D30:05"``. They are normalised; ids that still name no turn are dropped, and so is a question left
without evidence. Both are counted in the summary this prints (one JSON object).

Conversations 26, 30, 41, 42 and 43 are the dev half (parameters are chosen on them); 44, 47, 48, 49 and 50 the
test half, run only to report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

DEV = frozenset({"conv-26", "conv-30", "conv-41", "conv-42", "conv-43"})
TEST = frozenset({"conv-44", "conv-47", "conv-48", "conv-49", "conv-50"})
KINDS = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
_SESSION = re.compile(r"session_(\d+)")
_EVIDENCE = re.compile(r"D:?(\d+):0*(\d+)")


def session_time(text: str) -> dt.datetime:
    """``"1:56 pm on 8 May, 2023"`` -> 2023-05-08 13:56 UTC."""
    return dt.datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=dt.UTC)


def evidence_ids(raw: str) -> list[str]:
    """Every ``D<session>:<turn>`` in one hand-written evidence string, leading zeros dropped."""
    return [f"D{session}:{turn}" for session, turn in _EVIDENCE.findall(raw)]


def turn_text(turn: dict[str, Any]) -> str:
    text = f"{turn['speaker']}: {turn['text']}"
    caption = turn.get("blip_caption")
    return f"{text} and shared {caption}." if caption else text


def convert(sample: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    conversation = sample["conversation"]
    memories: list[dict[str, Any]] = []
    last: dt.datetime | None = None
    for name in sorted((k for k in conversation if _SESSION.fullmatch(k)), key=lambda k: int(k.split("_")[1])):
        at = session_time(conversation[f"{name}_date_time"])
        last = at if last is None or at > last else last
        stamp = at.isoformat().replace("+00:00", "Z")
        for turn in conversation[name]:
            memories.append({"key": turn["dia_id"], "category": "OTHER", "value": turn_text(turn),
                             "created_at": stamp, "updated_at": stamp})  # fmt: skip
    known = {m["key"] for m in memories}
    counts = {"questions": 0, "evidence_normalised": 0, "evidence_dropped": 0, "questions_dropped": 0}
    queries = []
    for qa in sample["qa"]:
        counts["questions"] += 1
        relevant: list[str] = []
        for raw in qa.get("evidence", []):
            ids = evidence_ids(str(raw))
            counts["evidence_normalised"] += bool(ids) and ids != [raw]
            counts["evidence_dropped"] += sum(i not in known for i in ids) or not ids
            relevant.extend(i for i in ids if i in known and i not in relevant)
        if not relevant:
            counts["questions_dropped"] += 1
            continue
        queries.append({"text": qa["question"], "recent_turns": [], "relevant": relevant,
                        "kind": KINDS[int(qa["category"])]})  # fmt: skip
    assert last is not None, "a conversation without sessions"
    dataset = {
        "name": f"locomo-{sample['sample_id']}",
        "description": "LoCoMo (snap-research, CC BY-NC 4.0), one memory per turn; made by bench/locomo.py",
        "now": last.isoformat().replace("+00:00", "Z"),
        "memories": memories,
        "queries": queries,
    }
    return dataset, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("locomo_json", type=Path, help="LoCoMo's data/locomo10.json")
    parser.add_argument("out_dir", type=Path, help="where dev/ and test/ are written")
    args = parser.parse_args()
    samples = json.loads(args.locomo_json.read_text(encoding="utf-8"))
    summary: dict[str, Any] = {"written": {}, "evidence_normalised": 0, "evidence_dropped": 0, "questions_dropped": 0}
    for sample in samples:
        sample_id = sample["sample_id"]
        half = "dev" if sample_id in DEV else "test" if sample_id in TEST else None
        if half is None:
            continue
        dataset, counts = convert(sample)
        folder = args.out_dir / half
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{dataset['name']}.json"
        path.write_text(json.dumps(dataset, ensure_ascii=False, indent=1), encoding="utf-8")
        summary["written"][str(path)] = {"memories": len(dataset["memories"]), "queries": len(dataset["queries"])}
        for name in ("evidence_normalised", "evidence_dropped", "questions_dropped"):
            summary[name] += counts[name]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
