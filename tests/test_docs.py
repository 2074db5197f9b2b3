"""The docs stay true to the tree: README length, make targets, relative links, bench markers, no machine paths.

Reads text files only (no FFCV, torch or jit_ffcv import), so it runs in well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
BENCH_TAGS = ("cpu", "node", "gpu", "gpu-node", "quality", "mixing", "pages", "scale")
MACHINE_PATHS = ("/work/", "/root/", "/home/", ".gpu/sample")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAKE = re.compile(r"(?:`|^)make ([a-z][a-z-]*)", re.M)  # a command: in backticks or a code line
BENCH_MARKER = re.compile(r"<!-- bench:([a-z-]+):(start|end) -->")


def makefile_targets() -> set[str]:
    """Targets defined in the Makefile (``name:`` at the start of a line, not ``NAME :=``)."""
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([a-z][a-z-]*)\s*:(?!=)", text, re.M)}


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in path.read_text().splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def strip_code(text: str) -> str:
    """Text outside fenced code blocks (commands there may name other tools' ``make`` or paths of examples)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 150, f"README.md has {lines} lines; move detail to docs/"


def test_anchor_slugs() -> None:
    """The anchor rule itself, on headings these docs use."""
    assert "what-make-bench-runs-and-costs" in anchors(BENCHMARKS)
    assert "which-images-were-in-a-batch-jit-ffcv-trace" in anchors(ROOT / "docs" / "loading.md")
    assert "with-lightning-with-jits-arguments-or-without-lightning" in anchors(ROOT / "docs" / "loading.md")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_make_targets_exist(doc: Path) -> None:
    targets = makefile_targets()
    named = set(MAKE.findall(doc.read_text()))
    assert named - targets == set(), f"{doc.name} names make targets the Makefile lacks"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    bad = []
    for target in LINK.findall(strip_code(doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.is_file():
            bad.append(f"{target} (no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            bad.append(f"{target} (no heading #{anchor} in {path.name})")
    assert bad == [], f"{doc.name}: broken links: {bad}"


def test_bench_markers_once_each() -> None:
    found = BENCH_MARKER.findall(BENCHMARKS.read_text())
    for tag in BENCH_TAGS:
        for end in ("start", "end"):
            assert found.count((tag, end)) == 1, f"<!-- bench:{tag}:{end} --> must appear exactly once"
    assert {tag for tag, _ in found} == set(BENCH_TAGS), "a bench tag this test does not know: add it to BENCH_TAGS"


def machine_paths(path: Path, text: str) -> list[str]:
    """``file:line: path`` for every absolute machine path in ``text``."""
    return [f"{path.relative_to(ROOT)}:{n}: {p}" for n, line in enumerate(text.splitlines(), 1)
            for p in MACHINE_PATHS if p in line]


def generated_blocks(text: str) -> str:
    """Only the text between bench markers (what ``make bench`` writes)."""
    return "\n".join(re.findall(r"<!-- bench:[a-z-]+:start -->(.*?)<!-- bench:[a-z-]+:end -->", text, re.S))


def hand_written_files() -> list[Path]:
    files = [README, ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("configs", "examples"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def test_no_machine_paths_in_hand_written_text() -> None:
    found = []
    for path in hand_written_files():
        text = path.read_text()
        if path == BENCHMARKS:  # its generated blocks are checked below
            text = re.sub(r"<!-- bench:([a-z-]+):start -->.*?<!-- bench:\1:end -->", "", text, flags=re.S)
        found += machine_paths(path, text)
    assert found == []


def test_no_machine_paths_in_generated_blocks() -> None:
    assert machine_paths(BENCHMARKS, generated_blocks(BENCHMARKS.read_text())) == []
