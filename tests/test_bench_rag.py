"""bench/rag.py --dataset: the fixed interface other tools drive (run as they run it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.agent_process import REPO


def test_any_labelled_set_is_evaluated_with_both_engines(tmp_path: Path) -> None:
    dataset = {
        "name": "tiny",
        "now": "2026-11-21T12:00:00Z",
        "memories": [
            {"key": "sister_city", "category": "RELATIONSHIP", "value": "Her sister Maya lives in Lisbon",
             "importance": 0.7, "created_at": "2026-03-02T18:20:00Z", "updated_at": "2026-03-02T18:20:00Z"},
            {"key": "pottery", "category": "HOBBY", "value": "Makes pottery on Wednesdays"},  # unknown category
            {"key": "tea", "category": "PREFERENCE", "value": "Prefers green tea to coffee",
             "created_at": "2025-01-01T00:00:00Z", "updated_at": "2026-11-01T00:00:00Z"},
        ],
        "queries": [
            {"text": "where does my sibling live?", "recent_turns": [], "relevant": ["sister_city"],
             "kind": "paraphrase"},
            {"text": "what's my blood type?", "relevant": [], "kind": "no-answer"},
            {"text": "what do I make with clay?", "relevant": ["pottery"], "kind": "made-up-kind"},
        ],
    }  # fmt: skip
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(dataset))

    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "rag.py"), "--dataset", str(path), "--k", "3"],
        capture_output=True, text=True, timeout=120, check=False, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert (report["dataset"], report["k"]) == ("tiny", 3)
    for engine in ("cosine", "full"):
        numbers = report["engines"][engine]
        assert set(numbers) >= {"recall_at_k", "mrr", "none_precision", "by_kind"}
        assert set(numbers["by_kind"]) == {"paraphrase", "no-answer", "made-up-kind"}
    assert report["engines"]["cosine"]["none_precision"] == 0.0  # plain top-k always answers
    assert report["engines"]["full"]["by_kind"]["paraphrase"]["recall_at_k"] == 1.0
