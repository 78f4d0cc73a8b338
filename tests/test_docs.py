"""The docs site builds offline under `mkdocs build --strict` (what `make docs` runs), its API reference is made from
the docstrings, and the README stays a short page whose links all land inside the repository."""
import html
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import prernn

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")  # [text](target "title") and images


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    return out


def page_text(path: Path) -> str:
    """An HTML page's text, tags dropped (code is split into highlighted spans) and whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", path.read_text())).split())


def test_api_reference_is_generated_from_the_docstrings(site):
    text = page_text(site / "reference" / "prernn.html")
    first_line = inspect.getdoc(prernn.convert).splitlines()[0].replace("`", "")  # `code` renders as <code>
    assert first_line in text
    assert "convert(model, layers, cell, sih=False" in text


def test_the_guide_shows_the_readme_example_that_test_readme_runs(site):
    text = page_text(site / "guide" / "getting-started.html")
    assert 'prernn.convert(cnn, ["fc6"], "lstm", sih=True)' in text
    assert "--8<--" not in text


def test_the_site_loads_nothing_from_the_network(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        source = page.read_text()
        remote = re.findall(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"", source)
        assert not remote, f"{page.relative_to(site)} loads {remote}"
        assert "fonts.googleapis" not in source, page


def readme_anchors(text: str) -> set[str]:
    """GitHub's anchors for the README's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert 150 <= lines <= 260, f"README.md has {lines} lines: keep it to 150-260, the rest goes in docs/"


def test_readme_links_only_to_files_in_the_repository():
    text = README.read_text()
    assert "../" not in text, "README.md points outside the repository"
    targets = LINK.findall(text)
    assert len(targets) >= 10
    anchors = readme_anchors(text)
    for target in targets:
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I), f"README.md links outside the repository: {target}"
        path, _, anchor = target.partition("#")
        if not path:
            assert anchor in anchors, f"README.md links to #{anchor}, which no heading makes"
            continue
        resolved = (ROOT / path).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"README.md links to {target}: no such file"
