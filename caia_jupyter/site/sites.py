"""A site directory: what one cancer center keeps on its side of the firewall.

    site.json        the site's name and policy ({"max_approval_days": longest approval lifetime,
                     "sandbox": "required" | "preferred" | "off", where approved code runs: `sandbox`,
                     "max_epsilon": when set, every bundle must request differential privacy with an
                     epsilon at most this: `guard.privacy_ceiling`, "standard_violations": "refuse" |
                     "report", what the guard does with released data that breaks the bundle's standard:
                     `guard.release_of`; default "report")
    catalog.json     dataset id -> table path (CSV or Parquet, relative to the site directory), how it
                     is read (separator, decimal mark, encoding: `schema.detect`) and its columns
    trusted_keys/    public keys of this site's reviewers (<key id>.pub); the only keys it trusts
    approvals/       signed approvals, one file per bundle and reviewer key
    revocations/     signed revocations of approvals
    rejections/      signed rejections: a reviewer read a bundle and would not approve it, and why
    audit.jsonl      the hash-chained audit log of approvals, revocations, rejections, admissions and
                     refusals (`audit`)

No private key lives here: code approved at the site could read it. Reviewers keep their keys
on their own machines (`caia reviewer init`); the site trusts the public halves.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..contracts import schema
from ..contracts.errors import SiteError
from ..contracts.fsutil import staged_dir, write_atomic, write_json
from ..contracts.privacy import exact, finite_number
from .keys import key_id, load_private_key, load_public_key, public_pem

FORMAT = "caia-site/1"
DEFAULT_MAX_APPROVAL_DAYS = 90
SANDBOX_POLICIES = ("required", "preferred", "off")  # where approved code runs (`sandbox`)
VIOLATION_POLICIES = ("report", "refuse")  # released data that breaks its standard: admitted and recorded, or refused
LONGEST_POLICY_DAYS = 36500  # a policy beyond a century is a typo
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Site:
    path: Path
    name: str
    max_approval_days: float = DEFAULT_MAX_APPROVAL_DAYS  # policy: the longest lifetime of an approval
    sandbox: str | None = None  # policy: SANDBOX_POLICIES; None: the target's default (simulator preferred, else required)
    max_epsilon: float | None = None  # policy: the largest DP epsilon a bundle may request; None: DP not required
    standard_violations: str = "report"  # policy: VIOLATION_POLICIES

    @property
    def catalog(self) -> dict[str, dict]:
        """Dataset id -> {"path": absolute table path, "read": how it is read (absent in catalogs
        written before it was recorded), "columns": its schema when registered}.

        Raises SiteError (one line) for a catalog that is unreadable or holds an entry that is not
        an object with a "path" text."""
        raw = _read_json(self.path / "catalog.json", "catalog")
        datasets = raw.get("datasets") if isinstance(raw, dict) else None
        if not isinstance(datasets, dict):
            raise SiteError(f"{self.path}/catalog.json has no 'datasets' object; recreate it with `caia site add-dataset`")
        catalog = {}
        for name, spec in datasets.items():
            path = spec.get("path") if isinstance(spec, dict) else None
            if not isinstance(path, str) or not path or "\0" in path:
                raise SiteError(f"{self.path}/catalog.json: dataset {name!r} is not an object with a 'path' text; "
                                f"register it again with `caia site add-dataset`")
            catalog[name] = {**spec, "path": str((self.path / path).resolve())}
        return catalog

    def trusted_keys(self, problems: list[str] | None = None) -> dict[str, Ed25519PublicKey]:
        """Key id -> public key, for each usable `*.pub` file in trusted_keys/.

        A file that is not an Ed25519 public key in PEM is skipped, never an error, and so is a key
        whose private half lies in the site's reviewer/ folder (where earlier versions of
        `caia site init` put one: code approved at the site could have read it). Each reason (naming the file, not where the site
        lies) is appended to `problems` if given, else logged.
        """
        def skip(reason: str) -> None:
            if problems is None:
                log.warning(reason)
            else:
                problems.append(reason)

        exposed = self._exposed_key_ids()
        keys = {}
        for file in sorted((self.path / "trusted_keys").glob("*.pub")):
            try:
                if not file.is_file():
                    raise SiteError("not a regular file")
                key = load_public_key(file)
            except SiteError:
                skip(f"site {self.name} skips trusted_keys/{file.name}: not an Ed25519 public key in PEM")
                continue
            if key_id(key) in exposed:
                skip(f"site {self.name} distrusts key {key_id(key)}: its private key lies in the site's reviewer/ folder, "
                     f"where approved code could read it; delete reviewer/ and trust keys made with `caia reviewer init`")
                continue
            keys[key_id(key)] = key
        return keys

    def _exposed_key_ids(self) -> set[str]:
        """Ids of private keys that earlier versions of `caia site init` left in reviewer/."""
        exposed = set()
        for file in (self.path / "reviewer").glob("*.key"):
            try:
                exposed.add(key_id(load_private_key(file).public_key()))
            except SiteError:
                continue
        return exposed

    @property
    def approvals_dir(self) -> Path:
        return self.path / "approvals"

    @property
    def revocations_dir(self) -> Path:
        return self.path / "revocations"

    @property
    def rejections_dir(self) -> Path:
        return self.path / "rejections"

    def to_json(self) -> dict:
        problems = []
        keys = sorted(self.trusted_keys(problems))
        return {"name": self.name, "path": str(self.path), "datasets": sorted(self.catalog), "trusted_keys": keys,
                "key_problems": problems, "policy": self.policy}

    @property
    def policy(self) -> dict:
        """The policy as site.json holds it."""
        return {"max_approval_days": self.max_approval_days, **({"sandbox": self.sandbox} if self.sandbox else {}),
                **({"max_epsilon": self.max_epsilon} if self.max_epsilon is not None else {}),
                **({"standard_violations": self.standard_violations} if self.standard_violations != "report" else {})}


def valid_epsilon(value) -> bool:
    """A privacy ceiling: a finite number above 0 (bool is no number here). Never raises."""
    return finite_number(value) and value > 0


def valid_days(value) -> bool:
    """A finite, positive number of days, at most LONGEST_POLICY_DAYS (bool is no number here). Never raises."""
    return finite_number(value) and 0 < value <= LONGEST_POLICY_DAYS


def shown_days(value) -> str:
    """A number as the user typed it (200, not 200.0; 3.0000001 in full); anything else, an integer
    too large for a float included, as its repr (cut to 40 characters)."""
    return exact(value) if finite_number(value) else repr(value)[:40]


def init(path: str | Path, name: str, max_approval_days: float = DEFAULT_MAX_APPROVAL_DAYS,
         sandbox: str | None = None, max_epsilon: float | None = None) -> Site:
    """Create a site directory: an empty catalog, no trusted keys yet, empty approvals and
    revocations, and the policy (`sandbox` None: the target's default; `max_epsilon` None: no
    differential privacy required). Creates no key: reviewers make theirs (`caia reviewer init`).

    Raises SiteError for a bad name or policy, or a directory that exists and is not empty.
    """
    path = Path(path)
    check_site_name(name)
    if not valid_days(max_approval_days):
        raise SiteError(f"--max-approval-days {shown_days(max_approval_days)} must be a finite number of days above 0 and at most {LONGEST_POLICY_DAYS}")
    _check_sandbox(sandbox, "--sandbox")
    _check_epsilon(max_epsilon, "--max-epsilon")
    if path.exists() and any(path.iterdir()):
        raise SiteError(f"{path} already exists and is not empty; choose a new directory")
    with staged_dir(path) as stage:
        write_json(stage / "site.json", {"format": FORMAT, "name": name,
                                         "policy": Site(path, name, max_approval_days, sandbox, max_epsilon).policy})
        write_json(stage / "catalog.json", {"datasets": {}})
        for folder in ("trusted_keys", "approvals", "revocations"):
            (stage / folder).mkdir()
    return open_site(path)


# NVFLARE makes a folder "app_<name>" for each site; a folder name holds at most 255 bytes.
LONGEST_SITE_NAME = 255 - len("app_")


def check_site_name(name: str) -> None:
    """Raise SiteError (one line naming `name` and the rule) unless NVFLARE can use `name` as a
    client name: NVFLARE's own client-name pattern (`nvflare.apis.utils.format_check`, matched in
    full: its own check would let a trailing newline through), not the name NVFLARE gives its server,
    and at most LONGEST_SITE_NAME characters (the pattern admits ASCII only: one byte each)."""
    from nvflare.apis.job_def import SERVER_SITE_NAME  # here: ~0.2 s, for init and submit only
    from nvflare.apis.utils.format_check import type_pattern_mapping

    rule = type_pattern_mapping["client"]
    if not isinstance(name, str) or not re.fullmatch(rule, name):
        raise SiteError(f"site name {name!r} cannot be an NVFLARE client name: use only letters, digits, '-' and '_' "
                        f"(NVFLARE's rule {rule})")
    # A client named as the server gets the server's app in a job; any case: on a case-insensitive
    # file system "Server" is the server's folder. (NVFLARE's other reserved target, "@ALL", fails the pattern.)
    if name.lower() == SERVER_SITE_NAME:
        raise SiteError(f"site name {name!r} cannot be an NVFLARE client name: NVFLARE reserves "
                        f"{SERVER_SITE_NAME!r} (in any case) for its server; choose another name")
    if len(name) > LONGEST_SITE_NAME:
        raise SiteError(f"site name {name!r} cannot be an NVFLARE client name: it has {len(name)} characters, "
                        f"NVFLARE's site folders allow at most {LONGEST_SITE_NAME}; choose a shorter name")


def open_site(path: str | Path) -> Site:
    path = Path(path)
    meta = _read_json(path / "site.json", "site description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("name"), str):
        raise SiteError(f"{path}/site.json is not a caia site description; create the site with `caia site init`")
    policy = meta.get("policy", {})
    days = policy.get("max_approval_days", DEFAULT_MAX_APPROVAL_DAYS) if isinstance(policy, dict) else None
    if not valid_days(days):
        raise SiteError(f"site {meta['name']}: site.json's policy.max_approval_days must be a number of days above 0 "
                        f"and at most {LONGEST_POLICY_DAYS}")
    sandbox = policy.get("sandbox")
    _check_sandbox(sandbox, f"site {meta['name']}: site.json's policy.sandbox")
    max_epsilon = policy.get("max_epsilon")
    _check_epsilon(max_epsilon, f"site {meta['name']}: site.json's policy.max_epsilon")
    violations = policy.get("standard_violations", "report")
    _check_violations(violations, f"site {meta['name']}: site.json's policy.standard_violations")
    return Site(path.resolve(), meta["name"], days, sandbox, max_epsilon, violations)


UNCHANGED = object()  # `set_policy`: leave this part of the policy as it is


def set_policy(path: str | Path, sandbox=UNCHANGED, max_epsilon=UNCHANGED, standard_violations=UNCHANGED) -> Site:
    """Set parts of the policy in the site.json at `path`, whatever it held (a hand-edited value
    included): `sandbox` one of `SANDBOX_POLICIES`; `max_epsilon` a finite number above 0, or None
    to remove it (differential privacy no longer required); `standard_violations` one of
    `VIOLATION_POLICIES`. Returns the site as it now is. Raises
    SiteError, site.json unchanged, for a value out of range or a folder that is not a caia site."""
    changes = {key: value for key, value in (("sandbox", sandbox), ("max_epsilon", max_epsilon),
                                             ("standard_violations", standard_violations)) if value is not UNCHANGED}
    if "standard_violations" in changes:
        _check_violations(standard_violations, "--standard-violations")
    if "sandbox" in changes:
        _check_sandbox(sandbox, "--sandbox")
    if "max_epsilon" in changes:
        _check_epsilon(max_epsilon, "--max-epsilon")
    meta = _read_json(Path(path) / "site.json", "site description")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SiteError(f"{path}/site.json is not a caia site description; create the site with `caia site init`")
    policy = meta.get("policy") if isinstance(meta.get("policy"), dict) else {}
    policy = {**{k: v for k, v in policy.items() if k not in changes}, **{k: v for k, v in changes.items() if v is not None}}
    meta["policy"] = policy
    write_json(Path(path) / "site.json", meta)
    return open_site(path)


def set_sandbox(path: str | Path, sandbox: str) -> Site:
    """`set_policy(path, sandbox=sandbox)`."""
    return set_policy(path, sandbox=sandbox)


def _check_sandbox(value, what: str) -> None:
    if value is not None and value not in SANDBOX_POLICIES:
        raise SiteError(f"{what} {value!r} must be one of {', '.join(SANDBOX_POLICIES)}")


def _check_violations(value, what: str) -> None:
    if value not in VIOLATION_POLICIES:
        raise SiteError(f"{what} {value!r} must be one of {', '.join(VIOLATION_POLICIES)}")


def _check_epsilon(value, what: str) -> None:
    if value is not None and not valid_epsilon(value):
        raise SiteError(f"{what} {shown_days(value)} must be a finite number above 0 (the largest epsilon a bundle may request)")


def add_dataset(site: Site, dataset_id: str, table: str | Path, replace: bool = False) -> dict:
    """Register a table (CSV or Parquet) in the site's catalog as `dataset_id`; returns its entry:
    {"path": relative to the site, "read": how it is read (`schema.detect`), "columns": its schema,
    "notes": {column: what its kind hides, e.g. "integers with missing values"}}.

    Every later read of the dataset (admission, `ctx.dataset`) reads it the way recorded here.
    Raises SiteError (one line; the catalog unchanged) for a bad id, a missing file, a table
    `schema.read_table` refuses (not UTF-8, no rows, an ambiguous separator...), or an id that
    already names another file unless `replace`.
    """
    if not _SITE_NAME.fullmatch(dataset_id):
        raise SiteError(f"dataset id {dataset_id!r} must be letters, digits, '_', '.' or '-'")
    path = Path(table).resolve()
    if not path.is_file():
        raise SiteError(f"{table} does not exist or is not a file; give the path of the CSV or Parquet table to register")
    registered = site.catalog.get(dataset_id)
    if registered and Path(registered["path"]) != path and not replace:
        raise SiteError(f"site {site.name} already has dataset {dataset_id} at {registered['path']}; choose another id, "
                        f"or add --replace to point {dataset_id} at {table}")
    read = schema.detect(path)
    frame = schema.read_table(path, read)
    entry = {"path": os.path.relpath(path, site.path), "read": read, "columns": schema.schema_of(frame),
             "notes": schema.notes_of(frame)}
    raw = _read_json(site.path / "catalog.json", "catalog")
    raw.setdefault("datasets", {})[dataset_id] = entry
    write_json(site.path / "catalog.json", raw)
    return entry


def read_dataset(site: Site, dataset_id: str) -> tuple[pd.DataFrame, dict]:
    """The whole table of catalog dataset `dataset_id`, and where and how it was read:
    {"path": absolute path, "read": as recorded at `add-dataset` (detected now for an entry that
    predates the record)}. Raises SiteError for an id not in the catalog or a table that cannot be read."""
    catalog = site.catalog
    if dataset_id not in catalog:
        raise SiteError(f"site {site.name} has no dataset {dataset_id} in its catalog; add it with `caia site add-dataset`")
    path = catalog[dataset_id]["path"]
    source = {"path": path, "read": catalog[dataset_id].get("read") or schema.detect(path)}
    return schema.read_table(path, source["read"]), source


def trust(site: Site, public_key_file: str | Path) -> str:
    """Add a reviewer's public key to the keys this site trusts; returns its key id."""
    key = load_public_key(Path(public_key_file))
    kid = key_id(key)
    write_atomic(site.path / "trusted_keys" / f"{kid}.pub", public_pem(key))
    return kid


def _read_json(file: Path, what: str):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteError(f"{file.parent} is not a caia site: no {file.name}; create it with `caia site init`") from None
    except (OSError, ValueError) as e:
        raise SiteError(f"{file} ({what}) is unreadable: {e}") from e
