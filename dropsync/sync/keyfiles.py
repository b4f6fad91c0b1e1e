"""Recognising private keys, so none is ever offered to devices or kept on the hub.

A signing key belongs on the machine that signs (``dropsync keys new``); the hub holds
public keys only. Staging refuses a private key like any unusable file, the hub refuses
to start with one in its data folder, and a backup leaves one out. Plain byte checks,
without ``cryptography``, so the store and staging can use them cheaply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

#: A PEM private key of any kind (PKCS#1, PKCS#8, SEC1, encrypted, OpenSSH).
PRIVATE_KEY_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
#: Bytes of a file's start that ``looks_like_private_key`` reads.
PRIVATE_KEY_SNIFF = 64
#: Larger files are not read: no PEM key is near this size.
PRIVATE_KEY_MAX_BYTES = 64 * 1024
#: ``read_at(offset, size)``: bytes of a file, as ``os.pread`` gives them.
ReadAt = Callable[[int, int], bytes]


def read_at_of(fd: int) -> ReadAt:
    """A ``ReadAt`` over an open file descriptor."""
    return lambda offset, size: os.pread(fd, size, offset)


def looks_like_private_key(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a PEM private key."""
    return bool(PRIVATE_KEY_PEM.search(head))


def is_private_key_file(path: Path) -> bool:
    """Whether ``path`` is a regular file holding a PEM private key."""
    try:
        if path.is_symlink() or not path.is_file() \
                or path.stat().st_size > PRIVATE_KEY_MAX_BYTES:
            return False
        with open(path, "rb") as file:
            return looks_like_private_key(file.read(PRIVATE_KEY_SNIFF))
    except OSError:
        return False


def private_key_files(folder: Path) -> list[Path]:
    """The PEM private keys lying in ``folder`` itself (not below it)."""
    try:
        return sorted(p for p in folder.iterdir() if is_private_key_file(p))
    except OSError:
        return []
