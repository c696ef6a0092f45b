"""The package's floors: each imports only from the floors below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nemo_ext"

# a floor -> the nemo_ext floors it must not import (lazily inside a function included)
FORBIDDEN = {
    "config": {"data", "prep", "evaluation", "rewards", "backends", "rl", "sft", "models", "launch"},
    "data": {"prep", "evaluation", "rl", "sft", "backends", "launch"},
    "evaluation": {"prep", "rl", "sft", "backends", "launch"},
    "rewards": {"prep", "evaluation", "rl", "sft", "backends"},
    "backends": {"prep", "evaluation", "rl", "sft", "rewards"},
}


def nemo_imports(path: Path) -> set[str]:
    """The second component of every ``nemo_ext.X`` this file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {n.split(".")[1] for n in names if n.startswith("nemo_ext.") and n.count(".") >= 1}
    return found


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_a_floor_imports_nothing_above_it(floor):
    wrong = {f"{p.relative_to(PACKAGE)} imports nemo_ext.{m}" for p in (PACKAGE / floor).rglob("*.py")
             for m in nemo_imports(p) & FORBIDDEN[floor]}
    assert not wrong, sorted(wrong)


def test_the_check_sees_an_import():
    assert nemo_imports(PACKAGE / "prep" / "rl_prompts.py") >= {"data", "evaluation"}
