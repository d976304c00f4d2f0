"""The README is a front page: every file it links or names exists, and so does every file the
docs link to (a moved or renamed doc breaks this test, not a reader's click)."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
NAMED = re.compile(r"`((?:examples|docs|benchmarks|src/mopd)/[\w./-]+\.(?:py|md|yaml))`")


def targets(doc: Path) -> set[Path]:
    text = doc.read_text()
    found = {doc.parent / m for m in LINK.findall(text) if not m.startswith(("http://", "https://", "mailto:"))}
    found |= {ROOT / m for m in NAMED.findall(text)}
    return found


def test_every_file_the_readme_and_docs_point_to_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = {f"{d.relative_to(ROOT)} -> {t.relative_to(ROOT) if t.is_relative_to(ROOT) else t}"
               for d in docs for t in targets(d) if not t.resolve().exists()}
    assert not missing, sorted(missing)


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
