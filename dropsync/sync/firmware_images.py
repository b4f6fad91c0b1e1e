"""Firmware images for nodes that run only their core's stock updater.

The convention: a staged file whose path below its target folder starts with
``firmware/`` and ends in ``.bin`` (``staging/esp001/firmware/app.bin``,
``staging/group-greenhouse/firmware/sensor.bin``) is a firmware image for the devices of
that target. It is a package like any other (our own firmware core fetches it in verified
chunks and streams it into ``Update``), and it is also served whole at
``GET /api/v1/ota/{id}``, the URL a stock ``ESPhttpUpdate.update()`` (ESP8266) or
``httpUpdate.update()`` (ESP32) is pointed at.

An image that could never boot is refused when it is staged, not when a node has already
erased its update slot: its first byte must be 0xE9 (the magic byte of every ESP8266 and
ESP32 application image; both updaters check it too) and it must fit the target's flash
(``FIRMWARE_MAX_BYTES``, per device type). With ``FIRMWARE_SIGNING_KEYS`` set, an image
must also carry a signature one of those keys verifies (``signing.py``), so nothing that
can write to staging, the admin API or the hub's disk can make nodes flash its own image.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..config import flash_limits_from
from ..store import Document
from .keyfiles import ReadAt
from .packages import ALL_TARGET, GROUP_PREFIX, targets_of

if TYPE_CHECKING:  # cryptography is loaded only when keys are configured
    from .signing import PublicKey, Signature

FIRMWARE_FOLDER = "firmware/"
FIRMWARE_SUFFIX = ".bin"
IMAGE_MAGIC = 0xE9
#: The smallest image either updater could boot: a header (8 bytes on the ESP8266, 24 on
#: the ESP32) and one segment's header. A 1-byte 0xE9 passed the magic check alone.
MIN_IMAGE_BYTES = 32
#: Bytes of an image's start that the checks read.
HEAD_BYTES = 16


def is_firmware_path(rel: str) -> bool:
    """Whether a staged path (below its target folder) is a firmware image."""
    return rel.startswith(FIRMWARE_FOLDER) and rel.endswith(FIRMWARE_SUFFIX)


class FirmwareImages:
    """The staging-time check of firmware images against the flash of the devices they
    target: a device folder by its device type, a group or ``all`` by the smallest limit
    of the devices it reaches (the smallest configured one when it reaches none yet)."""

    def __init__(self, limits: str, devices: Any, keys: list[PublicKey] | None = None):
        self.limits = flash_limits_from(limits)
        self.devices = devices  # the devices table (its ``get`` and ``all``)
        #: Public keys an image must be signed with; empty: signatures are not checked.
        self.keys = keys or []
        #: The signature of each image taken in, by its SHA-256, for the package page.
        self.signatures: dict[str, Signature] = {}

    def limit_for_device(self, device: Mapping[str, Any]) -> int:
        """The flash an image for ``device`` must fit, by its type (unknown: the smallest)."""
        return self.limits.get(str(device.get("type") or "").lower(), min(self.limits.values()))

    def too_large_for(self, device: Mapping[str, Any], image: Mapping[str, Any]) -> str | None:
        """Why ``image`` must not be offered to ``device`` (it joined a target after the
        image was staged, with a smaller flash), or None."""
        limit = self.limit_for_device(device)
        if image["size"] > limit:
            return (f"the image {image['path']} is {image['size']} bytes; the flash of "
                    f"{device['id']} ({device.get('type')}) takes at most {limit} "
                    "(FIRMWARE_MAX_BYTES): stage a smaller image for it")
        return None

    def limit_for(self, target: str) -> int:
        smallest = min(self.limits.values())
        if target == ALL_TARGET:
            reached: Iterable[Document] = self.devices.all()
        elif target.startswith(GROUP_PREFIX):
            group = target[len(GROUP_PREFIX):]
            reached = [d for d in self.devices.all() if group in (d.get("groups") or [])]
        else:
            reached = [d for d in self.devices.all() if d["id"] == target]
        return min((self.limit_for_device(d) for d in reached), default=smallest)

    def problem(self, target: str, rel: str, read_at: ReadAt, size: int) -> str | None:
        """Why the staged file at ``target/rel`` cannot be taken in, or None.

        ``read_at(offset, size)`` reads the file's bytes and ``size`` is its length. Files
        that are not firmware images are never refused here.
        """
        if not is_firmware_path(rel):
            return None
        head = read_at(0, HEAD_BYTES)
        if not head or head[0] != IMAGE_MAGIC:
            found = f"0x{head[0]:02X}" if head else "an empty file"
            return (f"not an ESP firmware image: the first byte is {found}, an image "
                    f"starts with 0xE9 (upload the sketch's .bin, not an .elf or a zip)")
        if size < MIN_IMAGE_BYTES:
            return (f"not an ESP firmware image: {size} bytes, shorter than the image "
                    f"header alone ({MIN_IMAGE_BYTES} bytes at least)")
        limit = self.limit_for(target)
        if size > limit:
            return (f"the image is {size} bytes; the flash of {target} takes at most "
                    f"{limit} (FIRMWARE_MAX_BYTES)")
        return self.signature_problem(read_at, size)

    def signature_problem(self, read_at: ReadAt, size: int) -> str | None:
        """Why an image's signature is not good enough, or None (always None when no
        keys are configured). What verified is remembered for ``signature_of``."""
        if not self.keys:
            return None
        from .signing import key_id, verify_image

        found = verify_image(read_at, size, self.keys)
        if found is None:
            wanted = ", ".join(key_id(k) for k in self.keys)
            # (an unsigned image cannot be told from a tampered one by its shape: its
            # last 512 bytes are as good a block as an RSA-4096 signature padded in)
            return ("the image carries no signature that verifies with a key of "
                    f"FIRMWARE_SIGNING_KEYS ({wanted}): it is unsigned, changed after "
                    "signing, or signed with another key; sign it with `dropsync sign` "
                    "on the machine that holds the private key")
        self.signatures[_sha256_of(read_at, size)] = found
        return None

    def signature_dict(self, package: Mapping[str, Any]) -> dict[str, Any] | None:
        """Which key signed a firmware package's image, as the admin API and the package
        page show it (None when signatures are not checked or it is not an image)."""
        found = self.signatures.get(package.get("sha256", ""))
        return found.as_dict() if found else None


def _sha256_of(read_at: ReadAt, size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, 256 * 1024):
        digest.update(read_at(offset, min(256 * 1024, size - offset)))
    return digest.hexdigest()


def choose_image(device: Mapping[str, Any], files: Mapping[str, Document]) -> Document | None:
    """The firmware image a stock updater on ``device`` gets: from the most specific
    target that has one (its own folder, then its groups, then ``all``). Two images in
    that same folder are ambiguous: the caller answers 409."""
    images = [p for path, p in files.items() if is_firmware_path(path)]
    for target in reversed(targets_of(device)):
        found = sorted((p for p in images if p["target"] == target), key=lambda p: p["path"])
        if found:
            if len(found) > 1:
                raise AmbiguousImage([p["path"] for p in found], target)
            return found[0]
    return None


class AmbiguousImage(Exception):
    def __init__(self, paths: list[str], target: str):
        super().__init__(f"{target} has {len(paths)} firmware images ({', '.join(paths)}); "
                         "a stock updater can take only one: keep one per folder")
        self.paths = paths


def appended_digest(blob_path: os.PathLike | str, size: int) -> str | None:
    """The SHA-256 an ESP-IDF image carries in its last 32 bytes (``hash_appended``),
    which is what an ESP32 reports as its running sketch's SHA-256."""
    if size < 33:
        return None
    with open(blob_path, "rb") as blob:
        blob.seek(size - 32)
        return blob.read(32).hex()


def is_running(package: Mapping[str, Any], sketch_md5: str | None,
               sketch_sha256: str | None, appended: str | None) -> bool:
    """Whether the updater's report of its running sketch matches the staged image:
    ``x-ESP8266-sketch-md5`` against its MD5, ``x-ESP32-sketch-sha256`` (upper-case hex)
    against its SHA-256 or the digest an ESP-IDF image appends to itself."""
    if sketch_md5 and sketch_md5.strip().lower() == package["md5"]:
        return True
    if sketch_sha256:
        reported = sketch_sha256.strip().lower()
        return reported in {package["sha256"], appended}
    return False
