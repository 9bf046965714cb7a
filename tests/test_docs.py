"""Every pointer from the code into docs/ names a file and a heading that exist; no pointer leaves the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r'(docs/\w+\.md)(?:,\s+"([^"]+)")?')


def _sources():
    for folder in ("src", "bench", "configs"):
        yield from (p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml", ".sh"))


def test_pointers_into_docs_resolve():
    broken = []
    for path in _sources():
        for doc, heading in POINTER.findall(" ".join(path.read_text().split())):
            target = ROOT / doc
            headings = [line.lstrip("#").strip() for line in target.read_text().splitlines()
                        if line.startswith("#")] if target.is_file() else []
            if not target.is_file() or (heading and heading not in headings):
                broken.append(f"{path.relative_to(ROOT)}: {doc}, {heading!r}")
    assert broken == []


def test_no_pointer_to_notes_outside_the_repository():
    assert [str(p.relative_to(ROOT)) for p in _sources() if re.search(r"REFERENCE\.md|DESIGN\.md", p.read_text())] == []
