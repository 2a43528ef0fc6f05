"""The documentation's links lead somewhere: every relative link of the README, docs/*.md and the
studies' README opens an existing file (and, when it names a heading, that heading), and every
path under benchmarks/ or studies/ the text names exists. Result files move (model-quality studies
went from benchmarks/results/ to studies/results/) and headings get renamed; a reader following a
dead link learns nothing, so a stale one fails here instead."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", REPO / "studies" / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a path the prose names in the research folders, e.g. `benchmarks/results/serving_trained*.md`
NAMED_PATH = re.compile(r"(?<![\w/.])((?:benchmarks|studies)/[\w.*/-]*[\w*/])")


def prose(path: Path) -> str:
    """The file without its fenced code blocks (commands there are examples, not links)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path).splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not re.match(r"[a-z]+:|#", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_opens_an_existing_file_and_heading(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve()
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_to_a_heading_of_the_same_file_exists(doc: Path) -> None:
    own = anchors(doc)
    missing = [t for t in LINK.findall(prose(doc)) if t.startswith("#") and t[1:] not in own]
    assert not missing, f"{doc.relative_to(REPO)}: no heading for {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_benchmark_or_study_path_exists(doc: Path) -> None:
    missing = []
    for named in set(NAMED_PATH.findall(prose(doc))):
        pattern = named.rstrip("/")
        if not any(REPO.glob(pattern)) and not (doc.parent / pattern).exists():
            missing.append(named)
    assert not missing, f"{doc.relative_to(REPO)} names paths that do not exist: {sorted(missing)}"


def test_the_anchor_rule_matches_githubs() -> None:
    page = REPO / "docs" / "remi.md"
    assert "a12-self-attention-encoders-sasrec-and-comirec-sa-over-transformer-blocks" in anchors(page)
    assert "b11-comirec-sa-self-attention" in anchors(page)


# a doc section cited from code, tests or a report: docs/operations.md#..., README.md#..., or
# ../../docs/remi.md#... from a results file
CITED = re.compile(r"(?<![\w.-])(?:(?:\.\./)*docs/)?(operations|remi|results|README)\.md#([\w-]+)")


def cited_sections() -> list[tuple[Path, str, str]]:
    """(file, doc, anchor) of every section cited in the repository's Python and Markdown files."""
    # The repository's own files (tracked, or new and not ignored): never a virtual environment's
    # packages, whose READMEs cite headings of their own (CI's .ci-venv sits inside the checkout).
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    files = [REPO / name for name in listed if name.endswith((".py", ".md")) and (REPO / name).is_file()]
    return [(path, doc, anchor) for path in files for doc, anchor in CITED.findall(path.read_text(errors="replace"))]


def test_every_doc_section_cited_in_code_tests_or_reports_exists() -> None:
    pages = {name: REPO / "docs" / f"{name}.md" for name in ("operations", "remi", "results")} | {
        "README": REPO / "README.md"
    }
    headings = {name: anchors(page) for name, page in pages.items()}
    missing = sorted(
        f"{path.relative_to(REPO)}: {doc}.md#{anchor}"
        for path, doc, anchor in cited_sections()
        if anchor not in headings[doc]
    )
    assert not missing, "cited sections with no such heading:\n" + "\n".join(missing)
