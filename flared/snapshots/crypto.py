"""Optional client-side encryption of snapshot blobs: AES-256-GCM in chunks.

The store only ever sees ciphertext. Chunks are sealed one by one so a
500 MB blob never sits in memory; each chunk's nonce carries its index and
a last-chunk flag, so reordering, dropping or truncating chunks fails
authentication like any other tampering.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cryptography costs ~6 MiB of RSS: loaded only when a blob is sealed or opened
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"FLAREENC1"
CHUNK = 4 * 1024 * 1024
_TAG = 16
_HEADER = struct.Struct(">9s16s7sI")  # magic, salt, nonce prefix, chunk size


class DecryptError(Exception):
    """The blob cannot be decrypted with the configured key."""


def key_id(secret: str) -> str:
    """A short public name for a key, so a restore can say "wrong key" before downloading."""
    return hmac.new(secret.encode(), b"hermes-flare snapshot key id", hashlib.sha256).hexdigest()[:16]


def _derive(secret: str, salt: bytes) -> AESGCM:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"hermes-flare snapshot v1").derive(
        secret.encode()
    )
    return AESGCM(key)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def encrypt_file(src: Path, dest: Path, secret: str) -> None:
    salt, prefix = os.urandom(16), os.urandom(7)
    header = _HEADER.pack(MAGIC, salt, prefix, CHUNK)
    aead = _derive(secret, salt)
    size = src.stat().st_size
    with src.open("rb") as fin, dest.open("wb") as fout:
        fout.write(header)
        index, done = 0, 0
        while True:
            chunk = fin.read(CHUNK)
            done += len(chunk)
            last = done >= size
            fout.write(aead.encrypt(_nonce(prefix, index, last), chunk, header))
            index += 1
            if last:
                break


def decrypt_file(src: Path, dest: Path, secret: str) -> None:
    with src.open("rb") as fin, dest.open("wb") as fout:
        header = fin.read(_HEADER.size)
        try:
            magic, salt, prefix, chunk_size = _HEADER.unpack(header)
        except struct.error:
            raise DecryptError("blob is too short to be an encrypted snapshot") from None
        if magic != MAGIC:
            raise DecryptError("blob is not an encrypted snapshot (unknown header)")
        aead = _derive(secret, salt)
        from cryptography.exceptions import InvalidTag

        index = 0
        while True:
            sealed = fin.read(chunk_size + _TAG)
            last = not fin.peek(1)
            try:
                fout.write(aead.decrypt(_nonce(prefix, index, last), sealed, header))
            except InvalidTag:
                raise DecryptError(
                    "cannot decrypt the snapshot: wrong snapshots.encryption.key, or the blob is damaged"
                ) from None
            index += 1
            if last:
                return
