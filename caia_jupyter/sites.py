"""A site directory: what one cancer center keeps on its side of the firewall.

    site.json        the site's name
    catalog.json     dataset id -> CSV path (relative to the site directory) and columns
    trusted_keys/    public keys of this site's reviewers (<key id>.pub); the only keys it trusts
    reviewer/        a reviewer key pair made by `caia site init` (<key id>.key is mode 0600)
    approvals/       signed approvals, one file per bundle and reviewer key
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import schema
from .errors import SiteError
from .fsutil import staged_dir, write_atomic, write_json

FORMAT = "caia-site/1"
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Site:
    path: Path
    name: str

    @property
    def catalog(self) -> dict[str, dict]:
        """Dataset id -> {"path": absolute CSV path, "columns": its schema when registered}."""
        raw = _read_json(self.path / "catalog.json", "catalog")
        datasets = raw.get("datasets") if isinstance(raw, dict) else None
        if not isinstance(datasets, dict):
            raise SiteError(f"{self.path}/catalog.json has no 'datasets' object; recreate it with `caia site add-dataset`")
        return {name: {**spec, "path": str((self.path / spec["path"]).resolve())} for name, spec in datasets.items()}

    def trusted_keys(self) -> dict[str, Ed25519PublicKey]:
        keys = {}
        for file in sorted((self.path / "trusted_keys").glob("*.pub")):
            key = load_public_key(file)
            keys[key_id(key)] = key
        return keys

    def reviewer_key_file(self) -> Path:
        keys = sorted((self.path / "reviewer").glob("*.key"))
        if len(keys) != 1:
            found = "no reviewer key" if not keys else f"{len(keys)} reviewer keys"
            raise SiteError(f"site {self.name} has {found} in {self.path}/reviewer; pass --key PRIVATE_KEY")
        return keys[0]

    @property
    def approvals_dir(self) -> Path:
        return self.path / "approvals"

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path), "datasets": sorted(self.catalog),
                "trusted_keys": sorted(self.trusted_keys())}


def init(path: str | Path, name: str) -> Site:
    """Create a site directory with an empty catalog and one trusted reviewer key pair."""
    path = Path(path)
    if not _SITE_NAME.match(name):
        raise SiteError(f"site name {name!r} must be letters, digits, '_', '.' or '-' (NVFLARE client names)")
    if path.exists() and any(path.iterdir()):
        raise SiteError(f"{path} already exists and is not empty; choose a new directory")
    private = Ed25519PrivateKey.generate()
    kid = key_id(private.public_key())
    with staged_dir(path) as stage:
        write_json(stage / "site.json", {"format": FORMAT, "name": name})
        write_json(stage / "catalog.json", {"datasets": {}})
        for folder in ("trusted_keys", "reviewer", "approvals"):
            (stage / folder).mkdir()
        pem = public_pem(private.public_key())
        write_atomic(stage / "trusted_keys" / f"{kid}.pub", pem)
        write_atomic(stage / "reviewer" / f"{kid}.pub", pem)
        write_atomic(
            stage / "reviewer" / f"{kid}.key",
            private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            mode=0o600,
        )
    return open_site(path)


def open_site(path: str | Path) -> Site:
    path = Path(path)
    meta = _read_json(path / "site.json", "site description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("name"), str):
        raise SiteError(f"{path}/site.json is not a caia site description; create the site with `caia site init`")
    return Site(path.resolve(), meta["name"])


def add_dataset(site: Site, dataset_id: str, csv_path: str | Path) -> dict:
    """Register a CSV in the site's catalog with the columns it has now."""
    if not _SITE_NAME.match(dataset_id):
        raise SiteError(f"dataset id {dataset_id!r} must be letters, digits, '_', '.' or '-'")
    csv_path = Path(csv_path).resolve()
    entry = {"path": os.path.relpath(csv_path, site.path), "columns": schema.columns_of(csv_path)}
    raw = _read_json(site.path / "catalog.json", "catalog")
    raw.setdefault("datasets", {})[dataset_id] = entry
    write_json(site.path / "catalog.json", raw)
    return entry


def trust(site: Site, public_key_file: str | Path) -> str:
    """Add a reviewer's public key to the keys this site trusts; returns its key id."""
    key = load_public_key(Path(public_key_file))
    kid = key_id(key)
    write_atomic(site.path / "trusted_keys" / f"{kid}.pub", public_pem(key))
    return kid


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(file: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(file.read_bytes())
    except (OSError, ValueError) as e:
        raise SiteError(f"{file} is not a PEM public key; export it with `caia site init` or openssl") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SiteError(f"{file} is not an Ed25519 public key; caia approvals use Ed25519")
    return key


def load_private_key(file: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(file).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise SiteError(f"{file} is not an unencrypted PEM private key; use the key `caia site init` made") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SiteError(f"{file} is not an Ed25519 private key; caia approvals use Ed25519")
    return key


def _read_json(file: Path, what: str):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteError(f"{file.parent} is not a caia site: no {file.name}; create it with `caia site init`") from None
    except (OSError, ValueError) as e:
        raise SiteError(f"{file} ({what}) is unreadable: {e}") from e
