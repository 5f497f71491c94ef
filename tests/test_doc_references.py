"""Every docs/ page the code cites is in the repository, and every section it names (``docs/x.md,
"Section"``) is a heading of that page (issue P2: the code pointed at a spec that was not there). A section is a heading or a paragraph
that opens with a bold title."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r'docs/([\w.-]+\.md)(?:\s*(?:,|\()\s*"([^"]+)")?')


def _citations():
    for path in sorted((ROOT / "src" / "gooddrag").rglob("*.py")):
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for page, section in CITE.findall(line):
                yield f"{path.relative_to(ROOT)}:{line_no}", page, section


def test_every_cited_page_and_section_exists():
    missing = []
    for where, page, section in _citations():
        doc = ROOT / "docs" / page
        if not doc.is_file():
            missing.append(f"{where}: docs/{page} is not in the repository")
            continue
        lines = doc.read_text(encoding="utf-8").splitlines()
        # headings, and paragraphs that open with a bold title (**Title.**)
        headings = [h.lstrip("#").strip() for h in lines if h.startswith("#")]
        headings += [h.strip("*").split("**")[0] for h in lines if h.startswith("**")]
        if section and not any(h.startswith(section) or section in h for h in headings):
            missing.append(f"{where}: docs/{page} has no section {section!r}")
    assert not missing, "\n".join(missing)
    assert sum(1 for _ in _citations()) > 10  # the code does cite its docs
