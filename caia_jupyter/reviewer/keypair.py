"""A reviewer's Ed25519 key pair: made and kept on the reviewer's own machine, never at a site.

`caia reviewer init KEYFILE` makes KEYFILE (private, mode 0600 from its creation) and KEYFILE.pub;
the site's admin trusts the public half (`caia site trust`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..contracts.errors import SiteError
from ..site.keys import key_id, public_pem


def public_key_file(key_file: Path) -> Path:
    """Where `caia reviewer init` puts the public half of `key_file`: KEYFILE.pub."""
    return key_file.with_name(key_file.name + ".pub")


def create_key_pair(key_file: str | Path) -> tuple[str, Path]:
    """Make a new Ed25519 key pair: `key_file` (private, PEM, mode 0600 from its creation) and
    `key_file`.pub (public, PEM). Returns (key id, public key file).

    Raises SiteError when either file exists (a key is never overwritten) or `key_file` lies inside
    a caia site directory; nothing is left behind on failure.
    """
    key_file = Path(key_file)
    public_file = public_key_file(key_file)
    for folder in key_file.resolve().parents:
        if (folder / "site.json").is_file() and (folder / "trusted_keys").is_dir():
            raise SiteError(f"{key_file} lies inside the caia site directory {folder}, where approved code could read it; "
                            "keep reviewer keys on your own machine")
    for file in (key_file, public_file):
        if os.path.lexists(file):
            raise SiteError(f"{file} already exists; a reviewer key is never overwritten, choose another file name")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    made = []
    try:
        _create(key_file, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
        made.append(key_file)
        _create(public_file, public_pem(private.public_key()), 0o644)
    except BaseException:
        for file in made:
            file.unlink(missing_ok=True)
        raise
    return key_id(private.public_key()), public_file


def _create(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start; refuse an existing path (or symlink) there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise SiteError(f"{path} already exists; a reviewer key is never overwritten, choose another file name") from None
    except OSError as e:
        raise SiteError(f"cannot create {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
