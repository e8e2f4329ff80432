"""NATS nkeys and ``.creds`` files, without the ``nkeys`` package: what a node needs to
log in with a user JWT (``[bus].creds_file``), and what tests need to make them.

An nkey is an Ed25519 key written in base32 (no padding): a prefix byte naming its kind
(``O`` operator, ``A`` account, ``U`` user), the 32 key bytes, and a CRC-16 (XMODEM,
little endian) of what precedes it. A seed (``SU...``) carries two prefix bytes: the
seed marker and the kind. A ``.creds`` file (``nsc`` writes them) holds a user JWT and
the user's seed between ``-----BEGIN NATS USER JWT-----`` / ``-----BEGIN USER NKEY
SEED-----`` markers. The server sends a nonce; the client answers with the user JWT and
the nonce signed by the seed (base64).

Nothing here ever puts a seed or a signature in an error message.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bus.exceptions import CredentialsError

PREFIX_SEED = 18 << 3
PREFIX_OPERATOR = 14 << 3
PREFIX_ACCOUNT = 0
PREFIX_USER = 20 << 3
KEY_BYTES = 32


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"-{{3,}}BEGIN {name}-{{3,}}\s*(\S+)\s*-{{3,}}END {name}-{{3,}}")


_JWT = _block("NATS USER JWT")
_SEED = _block("USER NKEY SEED")


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), as nkeys checks keys with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _encode(raw: bytes) -> str:
    checked = raw + crc16(raw).to_bytes(2, "little")
    return base64.b32encode(checked).decode().rstrip("=")


def _decode(text: str) -> bytes:
    """The bytes of an encoded key, its checksum verified (``ValueError`` if bad)."""
    padded = text.strip() + "=" * (-len(text.strip()) % 8)
    raw = base64.b32decode(padded)
    if len(raw) < 3 or crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise ValueError("not an nkey (bad checksum)")
    return raw[:-2]


def encode_public(prefix: int, key: bytes) -> str:
    return _encode(bytes([prefix]) + key)


def encode_seed(prefix: int, seed: bytes) -> str:
    return _encode(bytes([PREFIX_SEED | prefix >> 5, (prefix & 31) << 3]) + seed)


def decode_seed(text: str) -> tuple[int, bytes]:
    """(kind prefix, 32-byte Ed25519 seed) of an encoded seed (``ValueError`` if bad)."""
    raw = _decode(text)
    if len(raw) != 2 + KEY_BYTES or raw[0] & 0xF8 != PREFIX_SEED:
        raise ValueError("not an nkey seed")
    prefix = (raw[0] & 7) << 5 | (raw[1] & 0xF8) >> 3
    return prefix, raw[2:]


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An nkey's kind and Ed25519 seed; ``sign`` and its encoded public key."""

    prefix: int
    seed: bytes = field(repr=False)

    @classmethod
    def generate(cls, prefix: int) -> KeyPair:
        key = Ed25519PrivateKey.generate()
        return cls(prefix, key.private_bytes_raw())

    @property
    def public_key(self) -> str:
        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return encode_public(self.prefix, public.public_bytes(Encoding.Raw, PublicFormat.Raw))

    @property
    def encoded_seed(self) -> str:
        return encode_seed(self.prefix, self.seed)

    def sign(self, data: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(data)


@dataclass(frozen=True, slots=True)
class UserCreds:
    """A ``.creds`` file's user JWT and key."""

    jwt: str
    key: KeyPair

    def sign_nonce(self, nonce: str) -> bytes:
        """The server's nonce signed, base64 (what the NATS CONNECT carries as ``sig``)."""
        return base64.b64encode(self.key.sign(nonce.encode()))


def read_creds(path: str | Path) -> UserCreds:
    """The user JWT and seed of a ``.creds`` file; ``CredentialsError`` naming the file
    and what is wrong with it (never its content)."""
    where = f"[bus].creds_file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CredentialsError(f"{where}: cannot read it ({reason})") from None
    jwt, seed = _JWT.search(text), _SEED.search(text)
    if jwt is None or seed is None:
        raise CredentialsError(
            f"{where}: not a NATS credentials file (it needs a NATS USER JWT and a USER "
            "NKEY SEED block, as nsc writes them)"
        )
    try:
        prefix, raw = decode_seed(seed.group(1))
    except ValueError:
        raise CredentialsError(f"{where}: its USER NKEY SEED is not a valid nkey seed") from None
    if prefix != PREFIX_USER:
        raise CredentialsError(f"{where}: its seed is not a user seed (SU...)")
    return UserCreds(jwt.group(1), KeyPair(prefix, raw))


def creds_text(jwt: str, seed: str) -> str:
    """A ``.creds`` file's text, as ``nsc`` writes it."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
