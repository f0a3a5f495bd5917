"""The documents' promises about the repository itself: every path they cite exists, and every
script in tools/ answers --help.

Cited paths are read from README.md, BENCHMARKS.md, CONTRIBUTING.md, PAPER.md and docs/*.md:
  - markdown link targets, `](path)`, resolved from the document's folder (as GitHub renders
    them), except URLs and in-page anchors;
  - anything that starts with results/, tools/, docs/, tests/ or .ci/ (in prose, backticks or
    code blocks), resolved from the repository root; `file.py::name` also needs `def name` there;
  - a backticked `name.py` (or .md, .sh), from the repository root.
Not checked: runs/... and models/... (written by running the code), shell variables, globs and
placeholders such as tools/<name>.py.
"""
import ast
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = sorted(["README.md", "BENCHMARKS.md", "CONTRIBUTING.md", "PAPER.md"] +
                   [os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
                    if name.endswith(".md")])
TOOLS = sorted(name for name in os.listdir(os.path.join(ROOT, "tools")) if name.endswith((".py", ".sh")))

URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w./$-])((?:results|tools|docs|tests|\.ci)/[\w./-]*[\w/-](?:::\w+)?)([*{<]?)")
BACKTICKED = re.compile(r"`([^`\n]+)`")
FILE_NAME = re.compile(r"^[\w./-]+\.(?:py|md|sh)(?:::\w+)?$")


def cited_paths(document: str) -> list[tuple[str, str]]:
    """(path as cited, path from the repository root) for every path the document cites."""
    with open(os.path.join(ROOT, document), encoding="utf-8") as f:
        text = URL.sub(" ", f.read())
    base = os.path.dirname(document)
    cited = []
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if target and not target.startswith(("mailto:", "runs/", "models/")):
            cited.append((target, os.path.normpath(os.path.join(base, target))))
    for path, after in REPO_PATH.findall(text):
        if not after:                                    # not a glob or a placeholder
            cited.append((path, path.rstrip(".")))
    for span in BACKTICKED.findall(text):
        if FILE_NAME.match(span) and not span.startswith(("runs/", "models/")):
            cited.append((span, span))
    return cited


def missing(cited: str, path: str) -> bool:
    path, _, name = path.partition("::")
    full = os.path.join(ROOT, path)
    if not os.path.exists(full):
        return True
    if name:
        with open(full, encoding="utf-8") as f:
            return re.search(rf"^\s*def {re.escape(name)}\b", f.read(), re.M) is None
    return False


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_path_a_document_cites_exists(document):
    cited = cited_paths(document)
    assert cited or document == "CONTRIBUTING.md", f"no paths found in {document}: is the scanner broken?"
    absent = sorted({c for c, path in cited if missing(c, path)})
    assert not absent, f"{document} cites {len(absent)} path(s) that do not exist: " + ", ".join(absent)


def test_the_scanner_finds_what_it_should_and_skips_the_rest(tmp_path, monkeypatch):
    text = ("See [the plot](results/cpu/results.png) and `tools/run_summary.py --dir x`, "
            "`tests/test_docs.py::test_every_path_a_document_cites_exists`, `speculative.py`; "
            "not https://example.com/results/x.md, `runs/cpu/model`, tools/<name>.py, results/bench/a*.log, "
            "$R/results/y.md or [a section](#top).\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(text.replace("](results/", "](../results/"))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    found = sorted({path for _, path in cited_paths(os.path.join("docs", "page.md"))})
    assert found == ["results/cpu/results.png", "speculative.py",
                     "tests/test_docs.py::test_every_path_a_document_cites_exists", "tools/run_summary.py"]


def help_of(tool: str) -> tuple[str, subprocess.CompletedProcess]:
    command = [sys.executable if tool.endswith(".py") else "bash", os.path.join("tools", tool), "--help"]
    env = {**os.environ, "PYTHONPATH": ""}      # as a reader runs it: no pytest path, no CUDA needed
    return tool, subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_every_tool_answers_help():
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(pool.map(help_of, TOOLS))
    failed = {tool: (r.returncode, r.stderr[-500:]) for tool, r in results.items()
              if r.returncode != 0 or not r.stdout.strip()}
    assert not failed, f"tools whose --help failed: {failed}"


@pytest.mark.parametrize("tool", [t for t in TOOLS if t.endswith(".py")])
def test_every_tool_says_how_to_run_it(tool):
    with open(os.path.join(ROOT, "tools", tool), encoding="utf-8") as f:
        docstring = ast.get_docstring(ast.parse(f.read())) or ""
    assert f"python tools/{tool}" in docstring, f"tools/{tool}'s docstring gives no usage line"
