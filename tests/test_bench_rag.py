"""bench/rag.py --dataset and bench/locomo.py: the fixed interfaces other tools drive (run as they run them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.agent_process import REPO

ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}

TINY = {
    "name": "tiny",
    "now": "2026-11-21T12:00:00Z",
    "memories": [
        {"key": "sister_city", "category": "RELATIONSHIP", "value": "Her sister Maya lives in Lisbon",
         "importance": 0.7, "created_at": "2026-03-02T18:20:00Z", "updated_at": "2026-03-02T18:20:00Z"},
        {"key": "pottery", "category": "HOBBY", "value": "Makes pottery on Wednesdays"},  # unknown category
        {"key": "tea", "category": "PREFERENCE", "value": "Prefers green tea to coffee",
         "created_at": "2025-01-01T00:00:00Z", "updated_at": "2026-11-01T00:00:00Z"},
        {"key": "dentist", "category": "EVENT", "value": "Had a filling at the dentist",
         "created_at": "2026-11-20T09:00:00Z"},
    ],
    "queries": [
        {"text": "where does my sibling live?", "recent_turns": [], "relevant": ["sister_city"], "kind": "paraphrase"},
        {"text": "what is the capital of australia", "relevant": [], "kind": "unrelated"},
        {"text": "what do I make with clay?", "relevant": ["pottery"], "kind": "made-up-kind"},
        {"text": "what did I do yesterday?", "relevant": ["dentist"], "kind": "temporal"},
    ],
}  # fmt: skip
OTHER = {
    "name": "other",
    "now": "2026-10-14T09:30:00Z",
    "memories": [{"key": "allotment", "category": "FACT", "value": "His allotment plot is number 14"}],
    "queries": [
        {"text": "and which plot is it", "recent_turns": [{"role": "user", "content": "I was at the allotment"}],
         "relevant": ["allotment"], "kind": "follow-up"},
    ],
}  # fmt: skip


def run_bench(*args: str) -> dict:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "rag.py"), *args],
                            capture_output=True, text=True, timeout=180, check=False, env=ENV)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_a_labelled_set_is_evaluated_with_the_four_engines(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))

    report = run_bench("--dataset", str(path), "--k", "3")

    assert (report["dataset"], report["k"], report["queries"]) == ("tiny", 3, 4)
    assert set(report["engines"]) == {"cosine", "bm25", "hybrid", "full"}
    for numbers in report["engines"].values():
        assert set(numbers) >= {"recall_at_k", "mrr", "none_precision", "by_kind"}
        assert set(numbers["by_kind"]) == {"paraphrase", "unrelated", "made-up-kind", "temporal"}
    assert report["engines"]["cosine"]["none_precision"] == 0.0  # plain top-k always answers
    full = report["engines"]["full"]
    assert full["by_kind"]["paraphrase"]["recall_at_k"] == 1.0
    assert full["by_kind"]["temporal"]["mrr"] == 1.0  # "yesterday": the dentist first
    assert full["by_kind"]["unrelated"]["none_precision"] == 1.0  # the gate let nothing through
    assert set(report["gate"]) == {"recall_without_gate", "recall_cost", "answerable_rejected"}


def test_several_sets_and_folders_are_pooled_query_by_query(tmp_path: Path) -> None:
    folder = tmp_path / "sets"
    folder.mkdir()
    (folder / "tiny.json").write_text(json.dumps(TINY))
    (tmp_path / "other.json").write_text(json.dumps(OTHER))

    report = run_bench("--dataset", str(folder), str(tmp_path / "other.json"))

    assert (report["dataset"], report["queries"], report["memories"]) == ("tiny+other", 5, 5)
    assert report["engines"]["full"]["by_kind"]["follow-up"]["recall_at_k"] == 1.0


def test_locomo_is_converted_into_dev_and_test_halves(tmp_path: Path) -> None:
    def sample(sample_id: str) -> dict:
        return {
            "sample_id": sample_id,
            "conversation": {
                "speaker_a": "Caroline", "speaker_b": "Melanie",
                "session_1_date_time": "1:56 pm on 8 May, 2023",
                "session_1": [
                    {"speaker": "Caroline", "dia_id": "D1:1", "text": "I went to a support group yesterday."},
                    {"speaker": "Melanie", "dia_id": "D1:2", "text": "Look at this!", "blip_caption": "a photo of a lake"},
                ],
                "session_2_date_time": "7:55 pm on 9 June, 2023",
                "session_2": [{"speaker": "Melanie", "dia_id": "D2:1", "text": "I painted a sunrise."}],
            },
            "qa": [
                {"question": "When did Caroline go to the support group?", "evidence": ["D1:1"], "category": 2},
                {"question": "What did Melanie share?", "evidence": ["D1:2; D2:01"], "category": 1},
                {"question": "Who?", "evidence": ["D9:9"], "category": 4},  # names no turn: dropped
            ],
        }  # fmt: skip

    source = tmp_path / "locomo10.json"
    source.write_text(json.dumps([sample("conv-26"), sample("conv-44"), sample("conv-99")]))
    result = subprocess.run([sys.executable, str(REPO / "bench" / "locomo.py"), str(source), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60, check=False, env=ENV)  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["evidence_normalised"], summary["evidence_dropped"], summary["questions_dropped"]) == (2, 2, 2)
    dev = json.loads((tmp_path / "out" / "dev" / "locomo-conv-26.json").read_text())
    assert (tmp_path / "out" / "test" / "locomo-conv-44.json").exists()
    assert not list((tmp_path / "out").rglob("*conv-99*"))  # neither half
    assert dev["now"] == "2023-06-09T19:55:00Z"
    assert dev["memories"][1] == {"key": "D1:2", "category": "OTHER",
                                  "value": "Melanie: Look at this! and shared a photo of a lake.",
                                  "created_at": "2023-05-08T13:56:00Z", "updated_at": "2023-05-08T13:56:00Z"}  # fmt: skip
    assert [(q["relevant"], q["kind"]) for q in dev["queries"]] == [(["D1:1"], "temporal"),
                                                                    (["D1:2", "D2:1"], "multi-hop")]  # fmt: skip
