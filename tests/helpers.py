"""Small file writers the CPU tests share."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    """Rows as JSON Lines; ``raw_lines`` puts given text at given 1-based line numbers instead."""
    lines = [json.dumps(r) for r in rows]
    for line_no, raw in sorted((raw_lines or {}).items()):
        lines.insert(line_no - 1, raw)
    path.write_text("\n".join(lines) + "\n")
    return path
