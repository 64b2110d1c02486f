"""Reviewer keys (Ed25519) as a site reads them: key ids, public keys in PEM, and private keys.

A site holds only its reviewers' public keys (`caia site trust`); a reviewer signs approvals
and revocations with the private key `caia reviewer init` made on the reviewer's own machine
(`caia_jupyter.reviewer.keypair`). A site reads a private key only to distrust one left in its
directory by an earlier caia.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..contracts.errors import SiteError


def key_id(key: Ed25519PublicKey) -> str:
    """16 hex digits: the start of the sha256 of the raw public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(file: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM file `file`; SiteError naming the file otherwise."""
    if not Path(file).is_file():
        raise SiteError(f"{file} does not exist; give the .pub file `caia reviewer init` made beside the private key")
    try:
        key = serialization.load_pem_public_key(Path(file).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise SiteError(f"{file} is not a PEM public key; use the .pub file `caia reviewer init` made") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SiteError(f"{file} is not an Ed25519 public key; caia approvals use Ed25519")
    return key


def load_private_key(file: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in unencrypted PEM file `file`; SiteError naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(Path(file).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise SiteError(f"{file} is not an unencrypted PEM private key; use the key `caia reviewer init` made") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SiteError(f"{file} is not an Ed25519 private key; caia approvals use Ed25519")
    return key
