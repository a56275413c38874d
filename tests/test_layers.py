"""The top-level module import-linter cannot take as a root: agent.py.

import-linter (the test command runs it) checks every package, rag_system among them; agent.py is a single module,
so its own imports are checked here against the design's direction: agent -> services -> rag_system ->
infrastructure -> core.
"""

from __future__ import annotations

import ast

import pytest

from tests.agent_process import REPO

FIRST_PARTY = {"agent", "core", "services", "rag_system", "infrastructure", "tts", "inspector"}
MAY_IMPORT = {"agent.py": FIRST_PARTY - {"agent", "inspector"}}


def top_level_imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(MAY_IMPORT))
def test_top_level_modules_import_only_downwards(module: str) -> None:
    imported = top_level_imports(REPO / module) & FIRST_PARTY
    assert imported <= MAY_IMPORT[module], f"{module} imports {sorted(imported - MAY_IMPORT[module])}"
