"""Every citation points inside the repository.

Code, tests and docs cite the protocol notes as ``docs/protocols/<note>.md
§N.M``; each such section must be a heading of that note. Nothing may cite a
document that is not in the repository (the old spec files, a shared folder
beside the clone)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTES = REPO / "docs" / "protocols"
SCANNED = ["opensips_fs", "tests", "bench", "docs", "etc", "README.md", "Makefile", "setup.cfg", ".ci"]
CITATION = re.compile(r"docs/protocols/(\w+)\.md((?:[\s,]*(?:and\s+)?§\d+(?:\.\d+)?(?:-§?\d+(?:\.\d+)?)?)*)")
NOTE_CITATION = re.compile(r"\[(\w+)\.md((?:[\s,]*§\d+(?:\.\d+)?)*)\]\((\w+)\.md\)")
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)?)\.? ", re.M)
OUTSIDE = re.compile(r"\b(?:ESL|FSS|MI|EVI)\.md|\bspec/|\.\./shared|/work/")


def repo_files() -> list[Path]:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard",
                             *SCANNED], capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed
            if not name.startswith("tests/golden/") and name.endswith((".py", ".md", ".cfg", ".sh", "Makefile", "run"))
            and (REPO / name).is_file()]


def sections(note: str) -> set[str]:
    return set(HEADING.findall((NOTES / f"{note}.md").read_text()))


def citations():
    for path in repo_files():
        text = path.read_text(errors="replace")
        for match in CITATION.finditer(text):
            yield path, match[1], re.findall(r"\d+(?:\.\d+)?", match[2])
        if path.parent == NOTES:
            for match in NOTE_CITATION.finditer(text):
                yield path, match[1], re.findall(r"\d+(?:\.\d+)?", match[2])


def test_there_are_notes_and_citations():
    assert {p.stem for p in NOTES.glob("*.md")} >= {"README", "esl", "scripting", "mi", "evi"}
    assert sum(1 for _ in citations()) > 50


@pytest.mark.parametrize("note", ["esl", "scripting", "mi", "evi"])
def test_each_note_numbers_its_sections(note):
    assert {"1", "2"} <= sections(note)


def test_every_cited_section_exists():
    missing = []
    for path, note, numbers in citations():
        if not (NOTES / f"{note}.md").is_file():
            missing.append(f"{path.relative_to(REPO)}: docs/protocols/{note}.md does not exist")
            continue
        known = sections(note)
        missing += [f"{path.relative_to(REPO)}: {note}.md §{n}" for n in numbers if n not in known]
    assert missing == []


def test_nothing_cites_a_document_outside_the_repository():
    found = []
    for path in repo_files():
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []
