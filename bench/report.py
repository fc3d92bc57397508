"""docs/benchmarks.md: each benchmark script rewrites only its own section, between markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(name: str, section: str, doc: Path = DOC, intro: str = "# Benchmarks\n") -> None:
    """Put ``section`` between the ``name`` markers of ``doc`` (appended when they are missing;
    ``intro`` starts a new file)."""
    begin, end = markers(name)
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else intro
    block = f"{begin}\n{section.rstrip()}\n{end}"
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop > start:
        text = text[:start] + block + text[stop + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
