"""Habits of the code base a reviewer would otherwise have to catch by eye: test modules
share helpers through ``support.py``-style modules, never by importing each other, and
comments say why rather than point at an issue tracker a reader may not have."""

from __future__ import annotations

import ast
import io
import re
import tokenize

from support import ROOT

#: The word issue followed by a number, or a hash sign before a number: a pointer instead
#: of a reason. Upstream projects' issues (watchdog's) are references a reader can follow.
ISSUE_POINTER = re.compile(r"(?<!watchdog )\bissues? #?\d+|(?<![\w&])#\d+\b", re.I)


def test_no_test_module_imports_another():
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name} imports {name}" for name in names
                          if name.split(".")[0].startswith("test_")]
    assert offenders == [], "move shared helpers to tests/support.py (or a *_support.py)"


def comments_and_docstrings(path):
    """Each comment and triple-quoted string in a Python file, with its line number."""
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.COMMENT or (
                token.type == tokenize.STRING and token.string.lstrip("rbuRBU").startswith(
                    ('"""', "'''"))):
            yield token.start[0], token.string


def test_no_comment_names_an_issue_number():
    found = []
    for folder in ("dropsync", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, text in comments_and_docstrings(path):
                found += [f"{path.relative_to(ROOT)}:{line}: {match.group(0)}"
                          for match in ISSUE_POINTER.finditer(text)]
    assert found == [], "say why instead"
