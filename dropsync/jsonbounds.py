"""JSON from outside the hub, parsed with a bound on how deeply it nests.

Python's ``json`` parses (and the store copies) nested containers by recursion: a body
nested a thousand levels deep raised ``RecursionError`` (a 500), and one nested a few
hundred levels, stored as a command's ``args``, used to make the store unloadable at the
next start. No device or operator needs more than a few levels, so every JSON input
(request bodies, JSON strings in form posts, seed token files, the CLI's ``--args``) goes
through ``loads_bounded``: deeper than ``MAX_JSON_DEPTH`` levels is a ``JSONTooDeep``.

The parse comes first and the depth is measured on the result, level by level without
recursion: json's C parser stops cleanly (``RecursionError``) long before the C stack is
at risk, and measuring a parsed tree costs a fraction of the parse, where scanning the
text for brackets measured at two to five times it.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ValidationFailed

#: Containers (objects and arrays) nested deeper than this are refused.
MAX_JSON_DEPTH = 32
#: The types ``json.loads`` builds containers of (exact types: ``type() in`` is fastest).
CONTAINERS = frozenset((dict, list))


class JSONTooDeep(ValueError):
    """JSON nested deeper than the hub accepts (a ``ValueError``, as bad JSON is)."""

    def __init__(self, max_depth: int):
        super().__init__(f"JSON nested deeper than {max_depth} levels")
        self.max_depth = max_depth


def nests_deeper_than(value: Any, max_depth: int) -> bool:
    """Whether ``value`` (a tree ``json.loads`` made) has more than ``max_depth`` levels
    of containers; walked a level at a time, so any depth is measured without recursion,
    and only containers are carried from one level to the next."""
    level = [value] if type(value) in CONTAINERS else []
    for _ in range(max_depth):
        level = [child for item in level
                 for child in (item.values() if type(item) is dict else item)
                 if type(child) in CONTAINERS]
        if not level:
            return False
    return bool(level)


def loads_bounded(data: str | bytes | bytearray, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for input from outside: too deep is a ``JSONTooDeep``, and every
    other failure (bad UTF, bad syntax) a ``ValueError``; never a ``RecursionError``."""
    try:
        value = json.loads(data)  # bytes: json detects UTF-8, -16 or -32 itself
    except RecursionError:
        raise JSONTooDeep(max_depth) from None
    opens = (b"[", b"{") if isinstance(data, bytes | bytearray) else ("[", "{")
    # Too few brackets to be too deep: nothing to walk (most bodies). In UTF-16 or -32
    # other characters may contain these bytes too; that only costs a walk.
    if data.count(opens[0]) + data.count(opens[1]) > max_depth \
            and nests_deeper_than(value, max_depth):
        raise JSONTooDeep(max_depth)
    return value


def check_json_size(value: Any, limit: int, name: str) -> None:
    """400 for a value (command args, a result, a message's data) larger than ``limit``
    bytes as compact JSON: the stores and the pages that show it stay small."""
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit:
        raise ValidationFailed(f"{name} is {size} bytes as JSON; the limit is {limit}",
                               {name: [f"at most {limit} bytes"]})
