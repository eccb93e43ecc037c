"""The README and docs/ as a reader meets them: links that lead somewhere, a table of contents that
matches the sections, commands with paths a user has, a README short enough to read, and no
inward-facing text. Plain text checks: nothing heavy is imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 500
QUICK_START_TEST_LINE = 'pip install -e ".[test]" && pytest'  # .ci/run runs it verbatim

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_links(path: Path, text: str) -> list[str]:
    """Every relative link of a markdown file whose file, or whose #anchor there, does not exist."""
    broken = []
    for target in _LINK.findall(_prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


def section_headings(text: str) -> list[str]:
    return [h for level, h in _HEADING.findall(_FENCE.sub("", text)) if len(level) == 2]


def contents_entries(text: str) -> list[tuple[str, str]]:
    """(title, anchor) of each entry of the `## Contents` list."""
    match = re.search(r"^## Contents\s*$(.*?)(?=^## )", text, re.M | re.S)
    assert match, "no `## Contents` section"
    return re.findall(r"^\s*[-*]\s+\[([^\]]+)\]\(#([^)]+)\)", match.group(1), re.M)


def contents_mismatch(text: str) -> list[str]:
    """What differs between the table of contents and the `## ` sections after it (in order)."""
    entries = contents_entries(text)
    sections = [h for h in section_headings(text) if h != "Contents"]
    problems = []
    if [title for title, _ in entries] != sections:
        problems.append(f"contents {[t for t, _ in entries]} != sections {sections}")
    problems += [f"{title}: #{anchor} != #{_slug(title)}" for title, anchor in entries if anchor != _slug(title)]
    return problems


def shared_path_uses(text: str) -> list[int]:
    """Line numbers that mention the development machines' ../shared directory."""
    return [n for n, line in enumerate(text.splitlines(), 1) if "../shared" in line]


def inward_words(text: str) -> list[str]:
    return re.findall(r"\bissues?\b", text, re.I)


def code_block_lines(text: str) -> list[str]:
    """The lines inside fenced code blocks."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    return [line for block in blocks for line in block.splitlines()]


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_existing_files_and_headings(path):
    assert broken_links(path, path.read_text()) == []


def test_every_docs_page_is_linked_from_the_readme(readme):
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _LINK.findall(_prose(readme))}
    orphans = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert orphans == []


def test_readme_contents_match_its_sections(readme):
    assert contents_mismatch(readme) == []


def test_readme_commands_use_paths_a_user_has(readme):
    # One note says where the project's own machines keep a copy; no command uses it.
    uses = shared_path_uses(readme)
    assert len(uses) == 1, f"../shared on README lines {uses}"
    assert not [line for line in code_block_lines(readme) if "../shared" in line]


def test_readme_is_short_enough_to_read(readme):
    assert len(readme.splitlines()) < MAX_README_LINES


def test_readme_has_no_inward_text(readme):
    assert inward_words(readme) == []


def test_quick_start_test_line_is_what_ci_runs(readme):
    quick_start = re.search(r"^## Quick start\s*$(.*?)(?=^## )", readme, re.M | re.S).group(1)
    assert QUICK_START_TEST_LINE in code_block_lines(quick_start)
    assert QUICK_START_TEST_LINE in (ROOT / ".ci" / "run").read_text().splitlines()


# The checks above on text made to fail them, so that their passing means something.


def test_checks_catch_broken_links(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    text = (
        "[ok](other.md) [ok](other.md#a-section) [ok](#here) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](other.md#no-such) ![img](nope.png)\n"
        "`[not a link](missing2.md)`\n```\n[not a link](missing3.md)\n```\n## Here\n"
    )
    page.write_text(text)
    broken = broken_links(page, text)
    assert [b.split()[0] for b in broken] == ["missing.md", "other.md#no-such", "nope.png"]


def test_checks_catch_contents_that_drift():
    good = "# T\n## Contents\n- [One](#one)\n- [Two: `b`](#two-b)\n## One\n## Two: `b`\n"
    assert contents_mismatch(good) == []
    assert contents_mismatch(good.replace("- [Two: `b`](#two-b)\n", ""))  # an entry missing
    assert contents_mismatch(good.replace("## One", "## One more"))  # a renamed section
    assert contents_mismatch(good.replace("(#one)", "(#uno)"))  # a wrong anchor


def test_checks_catch_shared_paths_and_inward_words():
    text = "note: ../shared/x\n```\npython jobs/train.py --data ../shared/x\n```\n"
    assert shared_path_uses(text) == [1, 3]
    assert [line for line in code_block_lines(text) if "../shared" in line]
    assert inward_words("As the Issue says; issues; tissue") == ["Issue", "issues"]


def test_readme_figures_are_those_of_the_committed_results_file(readme):
    """The preset figures and run sizes the README gives come from benchmarks/presets.json
    (`python benchmarks/presets.py`), which names the machine that measured them."""
    import json

    report = json.loads((ROOT / "benchmarks" / "presets.json").read_text())
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] and "avx512" in machine, machine
    demo, seed = report["presets"]["demo"], report["presets"]["seed"]
    row = next(line for line in readme.splitlines() if line.startswith("| `demo` (default) |"))
    assert f"{demo['wall_seconds']:.0f} s" in row, row
    assert f"{100 * demo['test_accuracy']:.2f}% test, {100 * demo['val_accuracy']:.2f}% val" in row, row
    assert f"{seed['sizes']['total'] / 1e6:.0f} MB after one epoch" in readme
    assert f"a checkpoint is {seed['sizes']['checkpoints'] / 1e6:.0f} MB" in readme
    assert f"`saved_model/` {seed['sizes']['saved_model'] / 1e6:.0f} MB" in readme
    assert report["date"] in readme
