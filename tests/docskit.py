"""The documentation as tests read it: README.md and docs/*.md, a section found by its heading in
whichever file holds it, the first table of a section, code spans and blocks, and the anchors
GitHub gives headings."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

Row = dict[str, str]


def documents() -> dict[Path, str]:
    """Every document, README first."""
    return {path: path.read_text() for path in [README, *sorted(DOCS.glob("*.md"))]}


def headings(text: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of each heading outside code blocks."""
    found = []
    fenced = False
    for index, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"^(#+) (.*)$", line) if not fenced else None
        if heading is not None:
            found.append((index, len(heading.group(1)), heading.group(2).strip()))
    return found


def section_in(title: str, text: str) -> str | None:
    """The text under the heading `title` (any level), up to the next heading of its level or
    higher; None when `text` has no such heading."""
    lines = text.splitlines()
    marks = headings(text)
    for position, (index, level, heading) in enumerate(marks):
        if heading == title:
            end = next((i for i, lv, _ in marks[position + 1 :] if lv <= level), len(lines))
            return "\n".join(lines[index + 1 : end])
    return None


def section(title: str) -> str:
    """The section `title` of the one document that has it."""
    found = {
        path: body
        for path, text in documents().items()
        if (body := section_in(title, text)) is not None
    }
    assert found, f"no document has a section {title!r}"
    assert len(found) == 1, f"{title!r} is a section of several documents: {sorted(found)}"
    return next(iter(found.values()))


def slug(title: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", title.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(title) for _, _, title in headings(text)}


def _cells(line: str) -> list[str]:
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def first_table(text: str) -> list[Row]:
    """The first Markdown table in `text`, as rows keyed by the header's cells."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    assert start is not None, "no table in this section"
    block: list[str] = []
    for line in lines[start:]:
        if not line.lstrip().startswith("|"):
            break
        block.append(line)
    header, separator, *body = (_cells(line) for line in block)
    assert all(re.fullmatch(r":?-+:?", cell) for cell in separator), "not a Markdown table"
    for cells in body:
        assert len(cells) == len(header), (
            f"row has {len(cells)} cells, header {len(header)}: {cells}"
        )
    return [dict(zip(header, cells, strict=True)) for cells in body]


def codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def only_code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"expected a single code span, got {cell!r}"
    return match.group(1)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
