"""The firmware core as code: portable (no Arduino header, no STL), small enough for an
ESP8266 (cross-compiled with Debian's xtensa toolchain), and a JSON reader that survives
random and truncated input and agrees with Python's json on what is JSON."""

from __future__ import annotations

import json
import random
import re
import struct
import subprocess

import pytest
from firmware_support import CORE, STRICT_FLAGS, have_xtensa

#: ESP8266 targets: ~50 KB of heap is free with WiFi up; the core must leave most of it.
CODE_LIMIT = 32 * 1024
STATIC_RAM_LIMIT = 2 * 1024
#: Modules only some boards link, with their own (code, static RAM) budgets: enrollment
#: runs on a board built once for a fleet (no fixed DEVICE_ID), before its Node starts.
OPTIONAL_MODULES = {"enrollment": (4 * 1024, 384)}
XTENSA_SPECS = "/usr/lib/xtensa-lx106-elf/picolibc.specs"
#: The C headers the core may include (all in picolibc and in the ESP cores' newlib).
ALLOWED_SYSTEM_HEADERS = {"stddef.h", "stdint.h", "string.h", "stdlib.h"}


def test_core_is_plain_cxx_without_arduino_stl_exceptions_or_rtti():
    sources = sorted(CORE.glob("*.h")) + sorted(CORE.glob("*.cpp"))
    assert len(sources) >= 10
    for source in sources:
        text = source.read_text()
        system = set(re.findall(r"#include <([^>]+)>", text))
        assert system <= ALLOWED_SYSTEM_HEADERS, (source.name, system)
        code = re.sub(r"//.*", "", text)
        for banned in (r"\bthrow\b", r"\btry\b", r"\bdynamic_cast\b", r"\btypeid\b",
                       r"\bnew\s+\w", r"\bstd::", r"Arduino", r"\bString\b"):
            assert not re.search(banned, code), (source.name, banned)


@pytest.fixture(scope="module")
def xtensa_objects(tmp_path_factory):
    if not have_xtensa():
        pytest.skip("xtensa-lx106-elf-g++ is not installed (tests/system-deps.sh installs it)")
    out = tmp_path_factory.mktemp("xtensa")
    objects = []
    for source in sorted(CORE.glob("*.cpp")):
        target = out / (source.stem + ".o")
        result = subprocess.run(
            ["xtensa-lx106-elf-g++", f"--specs={XTENSA_SPECS}", "-std=c++17", "-Os",
             "-mlongcalls", "-ffunction-sections", "-fdata-sections", *STRICT_FLAGS,
             "-c", str(source), "-o", str(target)], capture_output=True, text=True,
            timeout=300)
        assert result.returncode == 0, result.stderr
        objects.append(target)
    return objects


def section_sizes(objects) -> dict[str, int]:
    """Code and RAM the core costs on an ESP8266, from ``xtensa-lx106-elf-size -A``.

    The ESP8266's Arduino core keeps ``.rodata`` (string literals, tables) in RAM, so it
    counts as static RAM here; vtables it moves to flash (VTABLES_IN_FLASH), so they do not.
    """
    result = subprocess.run(["xtensa-lx106-elf-size", "-A", *map(str, objects)],
                            capture_output=True, text=True, check=True)
    sizes = {"code": 0, "data": 0, "bss": 0, "rodata": 0, "vtables": 0}
    for name, size in re.findall(r"^(\.\S+)\s+(\d+)\s+\d+$", result.stdout, re.M):
        size = int(size)
        if name.startswith((".text", ".literal")):
            sizes["code"] += size
        elif name.startswith(".rodata._ZTV"):
            sizes["vtables"] += size
        elif name.startswith(".rodata"):
            sizes["rodata"] += size
        elif name.startswith(".data"):
            sizes["data"] += size
        elif name.startswith(".bss"):
            sizes["bss"] += size
    return sizes


def test_core_cross_compiles_for_the_esp8266_within_its_budget(xtensa_objects):
    """Every board links the core; only a board built to enroll (no fixed DEVICE_ID) calls
    the enrollment module, and the linker drops it from the others: each has a budget."""
    core = [o for o in xtensa_objects if o.stem not in OPTIONAL_MODULES]
    for name, objects, code_limit, ram_limit in (
            ("core", core, CODE_LIMIT, STATIC_RAM_LIMIT),
            *((module, [o for o in xtensa_objects if o.stem == module], *limits)
              for module, limits in OPTIONAL_MODULES.items())):
        sizes = section_sizes(objects)
        static_ram = sizes["data"] + sizes["bss"] + sizes["rodata"]
        print(f"lx106 {name}: code {sizes['code']} B (limit {code_limit}), static RAM "
              f"{static_ram} B (.data {sizes['data']} + .bss {sizes['bss']} + .rodata "
              f"{sizes['rodata']}; limit {ram_limit}), vtables in flash {sizes['vtables']} B")
        assert 0 < sizes["code"] <= code_limit, name
        assert static_ram <= ram_limit, name


def test_json_reader_survives_random_and_truncated_input(firmware_build):
    for seed in (1, 20261201):
        result = subprocess.run([str(firmware_build["fuzz"]), "random", "60000", str(seed)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        counts = dict(re.findall(r"(\w+) (\d+)", result.stdout))
        assert int(counts["documents"]) > 0 and int(counts["errors"]) > 0, result.stdout
        # Bounded memory: the reader is one fixed object (no heap; ASan checks every access).
        assert int(counts["reader_bytes"]) <= 512


SAMPLES = [
    {"commands": [{"args": {"delay_s": 5}, "attempt": 1, "expires_at": None, "id": 42,
                   "lease_s": 60.0, "name": "reboot", "priority": 50}],
     "next_poll_s": 30, "server_time": 1764620000},
    {"device": "esp001", "version": 3, "files": [
        {"id": "1cff6733c9e4", "path": "config/a b.json", "size": 50000, "chunks": 13,
         "sha256": "ab" * 32, "md5": "cd" * 16, "chunk_size": 4096, "version": 17,
         "url": "/api/v1/files/download/esp001/1cff6733c9e4/17"}]},
    {"error": {"code": "x", "message": "q\"\\/\n\t\u00e9", "details": [1, -2.5e-3, True]}},
    [0, -0.0, 1e5, "", {}, [[[]]]],
]


def python_accepts(document: bytes) -> bool:
    def refuse(name):
        raise ValueError(name)
    try:
        json.loads(document.decode("ascii"), parse_constant=refuse)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def mutate(rng: random.Random, text: bytes) -> bytes:
    alphabet = b'{}[]":,0123456789-+.eE tfnrul\\abu'
    data = bytearray(text)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) or 1)
        choice = rng.random()
        if choice < 0.4 and data:
            data[at] = rng.choice(alphabet)
        elif choice < 0.7:
            data.insert(at, rng.choice(alphabet))
        elif data:
            del data[at]
    if rng.random() < 0.2:
        data = data[:rng.randint(0, len(data))]
    return bytes(data)


def test_json_reader_agrees_with_python_json(firmware_build):
    rng = random.Random(1201)
    originals = [json.dumps(s, separators=(",", ":")).encode("ascii") for s in SAMPLES]
    documents = originals + [mutate(rng, rng.choice(originals)) for _ in range(4000)]
    records = b"".join(struct.pack("<I", len(d)) + d for d in documents)
    result = subprocess.run([str(firmware_build["fuzz"]), "verdicts"], input=records,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    verdicts = result.stdout.decode().strip()
    assert len(verdicts) == len(documents)
    disagreements = [d for d, v in zip(documents, verdicts, strict=True)
                     if (v == "1") != python_accepts(d)]
    assert not disagreements, disagreements[:5]
    accepted = verdicts.count("1")
    assert 0 < accepted < len(documents)  # the mutations made both kinds
