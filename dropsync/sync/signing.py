"""Signed firmware images in the formats the ESP cores' own ``Update`` verifies.

Keys are made and images signed on an operator's machine (``dropsync keys new``,
``dropsync sign``); the hub holds public keys only and checks every staged image against
them before it offers it. The byte layouts are the cores' own:

- **esp8266** (esp8266/Arduino ``tools/signing.py``, ``doc/ota_updates/readme.rst``,
  "Signed Binary Format"): ``image | signature | uint32 little-endian signature length``.
  The signature is RSA PKCS#1 v1.5 over the image's SHA-256 (``openssl dgst -sha256
  -sign``), which the core's ``BearSSL::SigningVerifier`` checks in ``Update.end()``.
- **esp32** (arduino-esp32 ``tools/bin_signing.py``, ``Update.installSignature`` with
  ``UpdaterRSAVerifier`` or ``UpdaterECDSAVerifier``): ``image | signature`` with the
  signature zero-padded to 512 bytes (room for RSA-4096); RSA-PSS (MGF1, the longest salt)
  or ECDSA (DER), over SHA-256 by default (SHA-384 and SHA-512 are options of the script).

Both leave the image itself first and unchanged, so a signed image still starts with the
0xE9 magic byte and boots where no verifier is installed.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .keyfiles import PRIVATE_KEY_PEM, ReadAt

FORMATS = ("esp8266", "esp32")
#: Key kinds ``dropsync keys new`` makes: those of arduino-esp32's ``bin_signing.py``;
#: the ESP8266 core verifies RSA only.
KEY_KINDS = ("rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384")
CURVES = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}
#: The ESP32 format's signature block: every signature is padded to this size.
ESP32_SIGNATURE_BLOCK = 512
#: The ESP8266 format's trailer: the signature's length, a little-endian uint32.
LENGTH_TRAILER = struct.Struct("<I")
#: Hashes an ESP32 image may be signed over (``bin_signing.py --hash``).
ESP32_HASHES = (hashes.SHA256(), hashes.SHA384(), hashes.SHA512())
READ_BLOCK = 256 * 1024

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SigningError(ValueError):
    """A key or an image that cannot be used as asked; the message says why."""


@dataclass(frozen=True)
class Signature:
    """What verified: the format, the key (its id) and how many bytes it covers."""

    format: str
    key_id: str
    signed_size: int

    def as_dict(self) -> dict[str, str | int]:
        return {"format": self.format, "key_id": self.key_id,
                "signed_size": self.signed_size}


# -- keys ---------------------------------------------------------------------------------
def new_private_key(kind: str = "rsa-2048") -> PrivateKey:
    if kind not in KEY_KINDS:
        raise SigningError(f"unknown key kind {kind!r}: one of {', '.join(KEY_KINDS)}")
    algorithm, size = kind.split("-")
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(size))
    return ec.generate_private_key(CURVES[size])


def private_pem(key: PrivateKey) -> bytes:
    """Unencrypted PEM, as ``openssl genrsa`` and ``bin_signing.py --generate-key`` write."""
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def public_pem(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM: the ESP8266 sketch's ``public.key`` (``openssl rsa
    -pubout``) and the ESP32 verifier's key (``bin_signing.py --extract-pubkey``)."""
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKey) -> str:
    """A short, stable name for a public key: the SHA-256 of its DER form, 16 hex digits."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def describe_key(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return f"ecdsa-{key.curve.name}"


def esp32_header(pem: bytes) -> str:
    """The C array ``bin_signing.py --extract-pubkey`` writes beside the PEM (with the NUL
    mbedtls's PEM parser needs)."""
    data = pem + b"\x00"
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    body = "".join(f"  {row},\n" for row in rows)
    return ("// Public key for OTA signature verification (dropsync keys new)\n"
            f"const uint8_t PUBLIC_KEY[] PROGMEM = {{\n{body}}};\n"
            f"const size_t PUBLIC_KEY_LEN = {len(data)};\n")


def load_private_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SigningError("only RSA and ECDSA keys sign ESP images")
    return key


def load_public_keys(paths: Iterable[str | Path]) -> list[PublicKey]:
    """The public keys the hub checks images with. A private key is refused: it must
    never be on the hub (give it the ``public.key`` that ``dropsync keys new`` wrote)."""
    keys = []
    for path in paths:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise SigningError(f"cannot read the signing key {path}: {exc.strerror}") \
                from None
        if PRIVATE_KEY_PEM.search(pem):
            raise SigningError(f"{path} is a PRIVATE key: the hub must hold only public "
                               "keys; keep the private key on the machine that signs")
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise SigningError(f"{path} is not a PEM public key ({exc})") from None
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise SigningError(f"{path}: only RSA and ECDSA keys verify ESP images")
        keys.append(key)
    return keys


# -- signing ------------------------------------------------------------------------------
def sign_image(image: bytes, key: PrivateKey, fmt: str) -> bytes:
    """The signed image in ``fmt``; refuses an image that is already signed by ``key``."""
    if fmt not in FORMATS:
        raise SigningError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if not image:
        raise SigningError("the image is empty")
    if verify_bytes(image, [key.public_key()]) is not None:
        raise SigningError("the image is already signed with this key")
    if fmt == "esp8266":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SigningError("the ESP8266 core verifies RSA signatures only: make the "
                               "key with --kind rsa-2048")
        signature = key.sign(image, padding.PKCS1v15(), hashes.SHA256())
        return image + signature + LENGTH_TRAILER.pack(len(signature))
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(image, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                salt_length=padding.PSS.MAX_LENGTH),
                             hashes.SHA256())
    else:
        signature = key.sign(image, ec.ECDSA(hashes.SHA256()))
    return image + signature.ljust(ESP32_SIGNATURE_BLOCK, b"\x00")


# -- verifying ----------------------------------------------------------------------------
def verify_bytes(data: bytes, keys: Iterable[PublicKey]) -> Signature | None:
    return verify_image(lambda offset, size: data[offset:offset + size], len(data), keys)


def verify_image(read_at: ReadAt, size: int, keys: Iterable[PublicKey]) -> Signature | None:
    """The signature of the image that verifies with one of ``keys``, or None.

    Both formats are tried; what a format's shape cannot hold (a length trailer that
    fits no key, a padding that is not zero) is skipped without hashing. The signed part
    is hashed once per format and hash algorithm, reading ``READ_BLOCK`` at a time.
    """
    keys = list(keys)
    for candidate in (_esp8266_candidate, _esp32_candidate):
        found = candidate(read_at, size, keys)
        if found is not None:
            return found
    return None


def _digest(read_at: ReadAt, length: int, algorithm: hashes.HashAlgorithm) -> bytes:
    digest = hashlib.new(algorithm.name)
    offset = 0
    while offset < length:
        piece = read_at(offset, min(READ_BLOCK, length - offset))
        if not piece:
            raise SigningError("the image ended while it was read")
        digest.update(piece)
        offset += len(piece)
    return digest.digest()


def _esp8266_candidate(read_at: ReadAt, size: int, keys: list[PublicKey]) -> Signature | None:
    if size <= LENGTH_TRAILER.size:
        return None
    (length,) = LENGTH_TRAILER.unpack(read_at(size - LENGTH_TRAILER.size,
                                              LENGTH_TRAILER.size))
    rsa_keys = [k for k in keys if isinstance(k, rsa.RSAPublicKey)
                and k.key_size // 8 == length]
    signed = size - LENGTH_TRAILER.size - length
    if not rsa_keys or signed <= 0:
        return None
    signature = read_at(signed, length)
    digest = _digest(read_at, signed, hashes.SHA256())
    for key in rsa_keys:
        try:
            key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        except InvalidSignature:
            continue
        return Signature("esp8266", key_id(key), signed)
    return None


def _esp32_signature_length(block: bytes) -> int | None:
    """How much of a 512-byte signature block is signature: the DER length of an ECDSA
    signature, else the block up to its zero padding (RSA signatures are checked at each
    key's own size, so a signature that happens to end in zero bytes still verifies)."""
    if len(block) >= 2 and block[0] == 0x30 and block[1] < 0x80 \
            and not block[2 + block[1]:].strip(b"\x00"):
        return 2 + block[1]
    used = len(block.rstrip(b"\x00"))
    return used or None


def _esp32_candidate(read_at: ReadAt, size: int, keys: list[PublicKey]) -> Signature | None:
    signed = size - ESP32_SIGNATURE_BLOCK
    if signed <= 0 or not keys:
        return None
    block = read_at(signed, ESP32_SIGNATURE_BLOCK)
    if _esp32_signature_length(block) is None:
        return None
    for algorithm in ESP32_HASHES:
        digest = None
        for key in keys:
            if isinstance(key, rsa.RSAPublicKey):
                length = key.key_size // 8
                if block[length:].strip(b"\x00"):
                    continue
                signature = block[:length]
                scheme = (padding.PSS(mgf=padding.MGF1(algorithm),
                                      salt_length=padding.PSS.AUTO),)
            else:
                length = _esp32_signature_length(block)
                if length is None or block[0] != 0x30:
                    continue
                signature = block[:length]
                scheme = ()
            digest = digest or _digest(read_at, signed, algorithm)
            prehashed = utils.Prehashed(algorithm)
            try:
                if scheme:
                    key.verify(signature, digest, scheme[0], prehashed)
                else:
                    key.verify(signature, digest, ec.ECDSA(prehashed))
            except InvalidSignature:
                continue
            return Signature("esp32", key_id(key), signed)
    return None
