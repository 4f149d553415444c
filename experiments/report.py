"""Results pages: the one Markdown table writer, and writing a page under docs/ atomically."""
from pathlib import Path
from typing import Iterable

from train.artifacts import atomic_path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def table(header: list[str], rows: Iterable[Iterable[object]], numeric_from: int = 1) -> str:
    """A Markdown table; columns from `numeric_from` on are right-aligned (numbers)."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_page(path: Path, title: str, command: str, body: str) -> None:
    """Writes a results page: its title, the command that wrote it, then `body`."""
    text = f"# {title}\n\nWritten by `{command}`; rerun it to measure again.\n\n{body.rstrip()}\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
