"""The docs cannot drift from the tree: docs/layout.md names every module and only paths that exist,
README.md stays a front page (under 250 lines), and every relative link in README.md, docs/ and results/
resolves (to a file, and to a heading where it names one).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

README_MAX_LINES = 250
# Where modules live: a module here that docs/layout.md does not name fails the test.
MODULE_GLOBS = ("gan_core/**/*.py", "flows/**/*.py", "benchmarks/**/*.py", "benchmarks/*.sh",
                "scripts/*.py", "scripts/*.sh")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
PATH_END = re.compile(r"(/|\.\w+)$")
PLACEHOLDER = re.compile(r"[\s<>*{}\[\]$]")


def modules(root: Path) -> set[str]:
    """Every module file under the code folders, as a path relative to `root`."""
    found = set()
    for pattern in MODULE_GLOBS:
        found |= {p.relative_to(root).as_posix() for p in root.glob(pattern) if "__pycache__" not in p.parts}
    return found


def named_paths(markdown: str) -> set[str]:
    """Paths the page names: a table row's first cell in backticks, or any backticked token shaped like a
    path (a `/` in it, ending in `/` or a file suffix; no spaces, placeholders like `<dataset>`, wildcards,
    URLs), so a deployment name such as `generate/batch-generation` is not one."""
    text = FENCE.sub("", markdown)
    paths = set()
    for line in text.splitlines():
        first = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if first and not PLACEHOLDER.search(first.group(1)):
            paths.add(first.group(1))
    for token in CODE.findall(text):
        if "/" in token and PATH_END.search(token) and "://" not in token and not PLACEHOLDER.search(token):
            paths.add(token)
    return paths


def missing_paths(root: Path, markdown: str) -> list[str]:
    return sorted(p for p in named_paths(markdown) if not (root / p).exists())


def undocumented_modules(root: Path, markdown: str) -> list[str]:
    return sorted(modules(root) - named_paths(markdown))


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation but `-` and `_` dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    text = FENCE.sub("", markdown)
    return {github_anchor(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE)}


def broken_links(page: Path) -> list[str]:
    """Relative links of `page` whose file (or `#anchor` of a Markdown file) does not exist."""
    text = FENCE.sub("", page.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, s3:
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved.read_text()):
            broken.append(f"{target} (no heading #{fragment})")
    return broken


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").glob("**/README.md"))]


def test_layout_names_every_module():
    undocumented = undocumented_modules(ROOT, (ROOT / "docs" / "layout.md").read_text())
    assert not undocumented, f"modules missing from docs/layout.md (add a row each): {undocumented}"


def test_layout_names_only_paths_that_exist():
    missing = missing_paths(ROOT, (ROOT / "docs" / "layout.md").read_text())
    assert not missing, f"docs/layout.md names paths that do not exist: {missing}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move reference to docs/"


def test_every_relative_link_resolves():
    broken = {page.relative_to(ROOT).as_posix(): broken_links(page) for page in doc_pages()}
    assert (ROOT / "docs").is_dir() and len(broken) > 1
    assert not {page: links for page, links in broken.items() if links}


def test_the_checks_catch_drift(tmp_path):
    """An added module, a renamed file and a dead link are each reported (the checks above can fail)."""
    for path in ("gan_core/__init__.py", "gan_core/images/new_thing.py", "scripts/run.sh", "docs/a.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("# Title\n## Sub section\n")
    (tmp_path / "gan_core/images/__pycache__").mkdir()
    (tmp_path / "gan_core/images/__pycache__/x.py").write_text("")
    layout = ("| `gan_core/__init__.py` | the package |\n| `scripts/run.sh` | make run |\n"
              "moved to `gan_core/old.py`; outputs go to `models/<dataset>/`\n"
              "```\n`gan_core/in_a_fence.py`\n```\n")
    assert undocumented_modules(tmp_path, layout) == ["gan_core/images/new_thing.py"]
    assert missing_paths(tmp_path, layout) == ["gan_core/old.py"]
    page = tmp_path / "docs" / "b.md"
    page.write_text("[ok](a.md#sub-section) [up](../scripts/run.sh) [web](https://example.com/x) [self](#top)\n"
                    "# Top\n[gone](gone.md) [bad anchor](a.md#nope) ![img](../plots/x.png)\n")
    assert broken_links(page) == ["gone.md (no such file)", "a.md#nope (no heading #nope)",
                                  "../plots/x.png (no such file)"]
