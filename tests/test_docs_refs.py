"""The project's documentation stands alone: every file it cites exists in the repository.

Scans every tracked text file (code, params, rules, docs) for references to project files
(`docs/...md`, `params/...yaml`, `amflow/...py`, ...), Markdown links and section citations of
`docs/design.md`, and fails on one that does not resolve in a clone. Files outside the repository
(a sibling checkout, private notes) are never cited: a user's clone does not have them.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".smk", ".rst", ".toml", ".cfg", ".txt", ""}
# A file in one of the project's own source folders, as written in prose or code (a name with an
# extension: `amflow/aim` in prose is a ratio, not a path).
PROJECT_REF = re.compile(r"(?<![\w./{}-])((?:docs|params|workflow|amflow|tests|bench|\.ci)/[\w./*<>{}-]*\.[\w*>}]+)")
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
DESIGN_SECTION = re.compile(r"docs/design\.md,? (\d+(?:\.\d+)?(?:, \d+(?:\.\d+)?)*)")
OUTSIDE = re.compile(r"\.\./shared|shared/reference|\bDESIGN\.md|ecosystem\.md|reference[ ]notes")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = []
    for name in out.stdout.splitlines():
        path = ROOT / name
        if path.suffix in TEXT_SUFFIXES and path.is_file() and not name.startswith(("tests/test_docs_refs.py",)):
            files.append(path)
    return files


def design_sections() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))


def _resolves(ref: str, source: Path) -> bool:
    ref = ref.rstrip(".")
    # Templates and globs name many files, not one (results/<dataset>/..., bench/bench_*.py).
    if any(c in ref for c in "<>{}*"):
        return True
    return (ROOT / ref).exists() or (source.parent / ref).exists()


def test_no_reference_points_outside_the_repository():
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}"
           for p in tracked_text_files()
           for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
           if OUTSIDE.search(line)]
    assert not bad, "references to files outside the repository:\n" + "\n".join(bad)


def test_every_cited_project_file_exists():
    bad = []
    # Tests write files of their own into temporary project copies: only what users read is checked.
    for p in (p for p in tracked_text_files() if p.relative_to(ROOT).parts[0] != "tests"):
        text = p.read_text(encoding="utf-8", errors="replace")
        refs = set(PROJECT_REF.findall(text))
        if p.suffix == ".md":
            refs |= {r for r in MD_LINK.findall(text) if "://" not in r and not r.startswith("mailto:")}
        bad += [f"{p.relative_to(ROOT)}: {r}" for r in sorted(refs) if not _resolves(r, p)]
    assert not bad, "references to files that do not exist:\n" + "\n".join(bad)


def test_cited_design_sections_exist():
    sections = design_sections()
    assert {"2.1", "3.1", "3.3"} <= sections  # the page is parsed, not empty
    bad = []
    for p in tracked_text_files():
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for group in DESIGN_SECTION.findall(line):
                bad += [f"{p.relative_to(ROOT)}:{i}: section {s}" for s in group.split(", ") if s not in sections]
    assert not bad, "citations of docs/design.md sections that do not exist:\n" + "\n".join(bad)


@pytest.mark.parametrize("line, ok", [
    ("see docs/method.md", True),
    ("see docs/nope.md", False),
    ("[guide](docs/dvc.md)", True),
    ("[guide](missing.md)", False),
])
def test_checker_tells_existing_from_missing(line, ok, tmp_path):
    src = ROOT / "README.md"
    refs = set(PROJECT_REF.findall(line)) | set(MD_LINK.findall(line))
    assert refs and all(_resolves(r, src) for r in refs) is ok
