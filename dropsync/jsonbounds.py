"""JSON from outside the hub, parsed with a bound on how deeply it nests.

Python's ``json`` parses (and the store copies) nested containers by recursion: a body
nested a thousand levels deep raises ``RecursionError`` (a 500), and one nested a few
hundred levels, stored as a command's ``args``, used to make the store unloadable at the
next start. No device or operator needs more than a few levels, so every JSON input
(request bodies, JSON strings in form posts, seed token files, the CLI's ``--args``) goes
through ``loads_bounded``, which measures the nesting without recursing and refuses more
than ``MAX_JSON_DEPTH`` levels before ``json`` ever sees it.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Containers (objects and arrays) nested deeper than this are refused.
MAX_JSON_DEPTH = 32

#: A JSON string (skipped whole, so brackets inside it do not count) or one bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)


class JSONTooDeep(ValueError):
    """JSON nested deeper than the hub accepts (a ``ValueError``, as bad JSON is)."""

    def __init__(self, max_depth: int):
        super().__init__(f"JSON nested deeper than {max_depth} levels")
        self.max_depth = max_depth


def check_depth(text: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise ``JSONTooDeep`` if ``text`` opens more than ``max_depth`` nested containers.

    A scan, not a parse: unbalanced or otherwise broken JSON is left for ``json`` to
    refuse. Text with too few brackets to be too deep is not scanned at all.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise JSONTooDeep(max_depth)
        elif token in "]}":
            depth -= 1


def loads_bounded(data: str | bytes | bytearray, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for input from outside: too deep is a ``JSONTooDeep``, and every
    other failure (bad UTF, bad syntax) a ``ValueError``; never a ``RecursionError``."""
    if isinstance(data, bytes | bytearray):
        # the same encoding detection json.loads applies to bytes (UTF-8, -16 or -32)
        data = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
    check_depth(data, max_depth)
    try:
        return json.loads(data)
    except RecursionError:  # the scan should make this impossible; never a 500 regardless
        raise JSONTooDeep(max_depth) from None

