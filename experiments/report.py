"""Results pages: the one Markdown table writer, and writing a page under docs/ atomically."""
from pathlib import Path
from typing import Iterable

from train.files import atomic_path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def table(header: list[str], rows: Iterable[Iterable[object]], numeric_from: int = 1) -> str:
    """A Markdown table; columns from `numeric_from` on are right-aligned (numbers)."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# A page's notes written by hand go below this line; the command that rewrites the page keeps them.
NOTES = "**Notes, written by hand** (rerunning the command keeps them: check them against its new figures)."


def write_page(path: Path, title: str, command: str, body: str) -> None:
    """Writes a results page: its title, the command that wrote it, `body`, then the page's hand-written
    notes (from NOTES on) as they were."""
    old = path.read_text() if path.exists() else ""
    notes = "\n" + old[old.index(NOTES):].rstrip() + "\n" if NOTES in old else ""
    text = f"# {title}\n\nWritten by `{command}`; rerun it to measure again.\n\n{body.rstrip()}\n{notes}"
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_section(path: Path, title: str, command: str, section: str) -> None:
    """Replaces one "## " section of a page with `section` (which starts with its heading), keeping the rest;
    adds it at the end (before the hand-written notes) of a page without it, and writes a new page with it alone."""
    old = path.read_text() if path.exists() else ""
    heading = section.split("\n", 1)[0] + "\n"
    if not old:
        write_page(path, title, command, section)
        return
    if heading in old:
        start = old.index(heading)
        rest = old[start + len(heading):]
        cut = min(i for i in (rest.find("\n## "), rest.find(NOTES), len(rest)) if i >= 0)  # where the section ends
        before, tail = old[:start], rest[cut:].lstrip("\n")
    else:  # a new section goes last, before the hand-written notes
        at = old.index(NOTES) if NOTES in old else len(old)
        before, tail = old[:at].rstrip() + "\n\n", old[at:]
    text = before + section.rstrip() + "\n" + (f"\n{tail}" if tail else "")
    with atomic_path(path) as tmp:
        tmp.write_text(text)
