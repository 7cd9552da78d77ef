"""Reading the administrator password a Windows guest posted: cloudbase-init encrypts
it to the instance's first public key (an ``ssh-rsa`` key) with RSA PKCS#1 v1.5 and
posts the ciphertext as base64; the private half of that key decrypts it."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from beachhead.agent.errors import InputError

MAX_KEY_BYTES = 64 * 1024


def load_private_key(path: Path, option: str = "--key") -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key from ``path`` (PEM: PKCS#1, PKCS#8 or OpenSSH's
    format); bad input names the file and says why."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise InputError(path, option, exc.strerror or "cannot read") from None
    if len(data) > MAX_KEY_BYTES:
        raise InputError(path, option, f"larger than {MAX_KEY_BYTES} bytes: not a private key")
    key: object
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no passphrase given"
        raise InputError(path, option, "the key is encrypted: give an unencrypted copy") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(path, option, "not a PEM or OpenSSH private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InputError(path, option, f"a {type(key).__name__.removeprefix('_')} key: the password is RSA-encrypted")
    return key


def decrypt_password(key: rsa.RSAPrivateKey, encrypted: str, key_path: Path) -> str:
    """The plain password from the posted base64 ciphertext; bad input (a key that
    does not match, a ciphertext that is not base64) names the key file."""
    try:
        ciphertext = base64.b64decode(encrypted.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(key_path, "password", "the posted password is not base64") from None
    # PKCS#1 v1.5 with a wrong key may "succeed" with random bytes (implicit
    # rejection): callers check the key with :func:`check_key_matches` first.
    try:
        return key.decrypt(ciphertext, padding.PKCS1v15()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise InputError(key_path, "password", "does not decrypt with this key (not the instance's key)") from None


def check_key_matches(key: rsa.RSAPrivateKey, public_keys: list[str], key_path: Path) -> None:
    """Bad input unless ``key`` is the private half of one of the instance's ``ssh-rsa``
    keys (cloudbase-init encrypts to one of them)."""
    mine = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    for line in public_keys:
        if line.split()[:2] == mine.decode().split()[:2]:
            return
    raise InputError(key_path, "--key", "not the private half of any of the instance's ssh-rsa public keys")
