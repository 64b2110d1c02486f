"""The site's own privacy policy: NVFLARE privacy scopes whose filters the site applies to every
update it sends, whatever the approved code does.

A site admin writes `privacy.json` in the site directory, in NVFLARE's own format (NVFLARE reads
it as the site's `local/privacy.json`):

    {"scopes": [{"name": "strict",
                 "task_result_filters": [
                     {"path": "nvflare.app_common.filters.ExcludeVars", "args": {"exclude_vars": "fc2\\\\..*"}},
                     {"path": "nvflare.app_common.filters.PercentilePrivacy", "args": {"percentile": 10, "gamma": 0.01}}]}],
     "default_scope": "strict"}

A caia job names no scope, so NVFLARE applies the default scope: `default_scope` is required.
caia admits only NVFLARE's privacy filters (`FILTERS`) as task result filters, in the default
direction (what leaves the site); no task data filters, no components (they could run any code).
PercentilePrivacy and SVTPrivacy act on weight differences: a site whose default scope has one
refuses a bundle that sends full weights (`%%federated ... updates=weight_diff` sends differences).
The guard checks the policy at every admission and installs its default scope alone where NVFLARE
reads it (`install`; `caia poc up` too, before the site starts); a job whose meta.json names another
scope is stopped at the site before its code runs (`check_job_scope`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..contracts.errors import ContractError, SiteError
from ..contracts.fsutil import loads_strict, write_atomic

PRIVACY_FILE = "privacy.json"  # in the site directory; NVFLARE's name too (local/privacy.json)
FILTERS = ("ExcludeVars", "PercentilePrivacy", "SVTPrivacy")  # nvflare.app_common.filters' privacy filters
NEEDS_WEIGHT_DIFF = ("PercentilePrivacy", "SVTPrivacy")  # defined on differences: on full weights they would zero small weights
_PACKAGE = "nvflare.app_common.filters"
_MODULES = {"ExcludeVars": "exclude_vars", "PercentilePrivacy": "percentile_privacy", "SVTPrivacy": "svt_privacy"}
# Arguments whose value would make NVFLARE's filter do nothing, silently: (check, what it must be).
_RANGES = {
    # percentile 0 zeroes no change: with any gamma above the changes, the update leaves as it is
    ("PercentilePrivacy", "percentile"): (lambda v: 0 < v <= 100, "a number above 0 and at most 100 (0 shares every change)"),
    ("PercentilePrivacy", "gamma"): (lambda v: v > 0, "a number above 0"),
    ("SVTPrivacy", "fraction"): (lambda v: 0 < v <= 1, "a number above 0 and at most 1"),
    ("SVTPrivacy", "epsilon"): (lambda v: v > 0, "a number above 0"),
}


@dataclass(frozen=True)
class Scope:
    """One privacy scope: its `name` and its task result filters [(class name in FILTERS, args)]."""

    name: str
    filters: tuple[tuple[str, dict], ...] = field(default_factory=tuple)

    @property
    def needs_weight_diff(self) -> list[str]:
        """The filters of this scope that act only on weight differences ([] if none)."""
        return [name for name, _ in self.filters if name in NEEDS_WEIGHT_DIFF]

    def describe(self) -> str:
        """One line: "strict: ExcludeVars(exclude_vars='fc2\\\\..*'), PercentilePrivacy(percentile=10, gamma=0.01)"."""
        shown = [f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})" for name, args in self.filters]
        return f"{self.name}: {', '.join(shown) or 'no filters'}"

    def to_json(self) -> dict:
        """{"name", "filters": [{"filter": class name, "args": {...}}, ...]}, as `caia site show --json` prints it."""
        return {"name": self.name, "filters": [{"filter": name, "args": args} for name, args in self.filters]}


@dataclass(frozen=True)
class Policy:
    """A site's privacy policy: its scopes by name and the default one, which caia's jobs get."""

    scopes: dict[str, Scope]
    default_scope: str
    source: bytes  # the file's bytes, installed as they are

    @property
    def applied(self) -> Scope:
        """The scope NVFLARE applies to caia's jobs: the default one, the only one caia installs."""
        return self.scopes[self.default_scope]


def read_policy(site_path: str | Path) -> Policy | None:
    """The privacy policy in the site directory `site_path` (PRIVACY_FILE), or None when it has none.

    Raises SiteError, one line naming the file and the problem: not JSON, a part that is not in
    NVFLARE's format, a filter class other than FILTERS, arguments the filter does not take or
    values that would make it do nothing, or a default scope that is missing or unknown."""
    file = Path(site_path) / PRIVACY_FILE
    if not file.exists():
        return None
    where = f"{file.parent.name}/{PRIVACY_FILE}"
    try:
        source = file.read_bytes()
        raw = loads_strict(source)
    except (OSError, ValueError) as e:
        raise SiteError(f"{where} is not readable JSON ({e}); write it in NVFLARE's privacy.json format") from None

    def bad(problem: str) -> SiteError:
        return SiteError(f"{where}: {problem}")

    if not isinstance(raw, dict):
        raise bad('it must be an object {"scopes": [...], "default_scope": NAME}')
    unknown = sorted(set(raw) - {"format_version", "scopes", "default_scope"})
    if unknown:
        raise bad(f"{unknown[0]!r} is not allowed (caia admits scopes of NVFLARE's privacy filters only, "
                  "never components); remove it")
    scopes = raw.get("scopes")
    if not isinstance(scopes, list) or not scopes:
        raise bad('"scopes" must be a non-empty list of scopes')
    found: dict[str, Scope] = {}
    for index, scope in enumerate(scopes):
        parsed = _scope(scope, f"scope #{index + 1}", bad)
        if parsed.name in found:
            raise bad(f"scope {parsed.name!r} is defined twice; give each scope its own name")
        found[parsed.name] = parsed
    default = raw.get("default_scope")
    if default not in found:
        raise bad(f"default_scope {default!r} is not one of its scopes ({', '.join(found)}); caia's jobs name no scope, "
                  "so NVFLARE applies the default scope: set default_scope to one of them")
    return Policy(found, default, source)


def _scope(scope, label: str, bad) -> Scope:
    if not isinstance(scope, dict):
        raise bad(f"{label} must be an object with a name and task_result_filters")
    name = scope.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{label} has no name text")
    unknown = sorted(set(scope) - {"name", "properties", "task_data_filters", "task_result_filters"})
    if unknown:
        raise bad(f"scope {name!r}: {unknown[0]!r} is not part of an NVFLARE privacy scope; remove it")
    if not isinstance(scope.get("properties", {}), dict):
        raise bad(f"scope {name!r}: properties must be an object")
    if scope.get("task_data_filters"):
        raise bad(f"scope {name!r}: task_data_filters would change the global model the code receives; caia applies "
                  "a site's filters to what leaves it: use task_result_filters")
    filters = scope.get("task_result_filters", [])
    if not isinstance(filters, list):
        raise bad(f"scope {name!r}: task_result_filters must be a list of filters")
    return Scope(name, tuple(_filter(spec, name, bad) for spec in filters))


def _filter(spec, scope: str, bad) -> tuple[str, dict]:
    """(class name, args) of one filter entry {"path": ..., "args": {...}}, checked by building it."""
    if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
        raise bad(f"scope {scope!r}: a filter must be an object with a \"path\" naming its class")
    unknown = sorted(set(spec) - {"path", "args", "direction"})
    if unknown:
        raise bad(f"scope {scope!r}: {unknown[0]!r} is not part of a filter entry; give only path and args")
    path, args = spec["path"], spec.get("args", {})
    name = path.rpartition(".")[2]
    if name not in FILTERS or path not in (f"{_PACKAGE}.{name}", f"{_PACKAGE}.{_MODULES[name]}.{name}"):
        raise bad(f"scope {scope!r}: filter {path!r} is not one of NVFLARE's privacy filters caia admits "
                  f"({', '.join(f'{_PACKAGE}.{f}' for f in FILTERS)})")
    if str(spec.get("direction", "out")).lower() != "out":
        raise bad(f"scope {scope!r}: {name} must filter what leaves the site (direction \"out\", the default)")
    if not isinstance(args, dict):
        raise bad(f"scope {scope!r}: {name}'s args must be an object")
    if "data_kinds" in args:
        raise bad(f"scope {scope!r}: {name}'s data_kinds is caia's to leave as NVFLARE sets it (weights and weight "
                  "differences); remove it")
    for (owner, arg), (fits, what) in _RANGES.items():
        value = args.get(arg)
        if owner == name and arg in args and (isinstance(value, bool) or not isinstance(value, (int, float)) or not fits(value)):
            raise bad(f"scope {scope!r}: {name}'s {arg} {value!r} must be {what}")
    if name == "ExcludeVars":
        _check_exclude_vars(args.get("exclude_vars"), scope, bad)
    import nvflare.app_common.filters as filters  # here: NVFLARE's filters import numpy and more

    try:
        getattr(filters, name)(**args)
    except Exception as e:  # an argument it does not take, or one it cannot use
        raise bad(f"scope {scope!r}: NVFLARE's {name} does not take these args ({e})") from None
    return name, dict(args)


def _check_exclude_vars(value, scope: str, bad) -> None:
    """ExcludeVars ignores, without a word, anything but a regex text or a list of entry names."""
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return
    if isinstance(value, str) and value:
        try:
            re.compile(value)
        except re.error as e:
            raise bad(f"scope {scope!r}: ExcludeVars' exclude_vars {value!r} is not a regular expression ({e})") from None
        return
    raise bad(f"scope {scope!r}: ExcludeVars' exclude_vars must be a regular expression or a list of state_dict entry names")


def scope_refusal(policy: Policy | None, job: dict) -> str | None:
    """Why a site with `policy` cannot run a bundle whose manifest's job is `job`, or None: its
    default scope filters an encrypted update (NVFLARE applies the scope before the job's encryptor:
    an excluded entry leaves an update the server cannot add, and percentile or SVT privacy need
    weight differences, which encrypted bundles do not send), or needs weight differences a bundle
    sending full weights lacks."""
    scope = policy.applied if policy else None
    if scope and scope.filters and job.get("encryption"):
        names = ", ".join(name for name, _ in scope.filters)
        return (f"its privacy scope {scope.name!r} applies {names} to every update, which an encrypted update cannot "
                "pass through; this site cannot take a bundle with encryption=he")
    needs = scope.needs_weight_diff if scope else []
    if not needs or job.get("updates") == "weight_diff":
        return None
    act = "which act" if len(needs) > 1 else "which acts"
    return (f"its privacy scope {scope.name!r} applies {', '.join(needs)}, {act} on weight differences, "
            "and this bundle sends full weights; rebuild it with `%%federated ... updates=weight_diff`")


def installed(policy: Policy) -> bytes:
    """The privacy.json NVFLARE gets from `policy`: its default scope alone, as the site wrote it,
    and as the default. A job's meta.json may name a scope (NVFLARE applies it instead of the
    default): with one scope installed, NVFLARE's deployment refuses any other name once the site
    has loaded the policy, and `check_job_scope` refuses it in the job."""
    raw = loads_strict(policy.source)
    scope = next(scope for scope in raw["scopes"] if scope["name"] == policy.default_scope)
    return json.dumps({"scopes": [scope], "default_scope": policy.default_scope}, indent=2).encode()


def install(policy: Policy | None, destination: str | Path) -> None:
    """Make NVFLARE's site privacy file `destination` (a site workspace's local/privacy.json) hold
    `policy`'s default scope alone (`installed`), or nothing when the site has no policy. Called at
    site setup (`caia poc up`), so the NVFLARE client loads it when it starts, and at every admission."""
    destination = Path(destination)
    if policy is None:
        destination.unlink(missing_ok=True)
    else:
        write_atomic(destination, installed(policy))


def check_job_scope(app_dir: str | Path) -> None:
    """In a job at a site, before any of its code runs: raise ContractError (failure "privacy_scope")
    unless the job's meta.json (NVFLARE's, beside the app folder `app_dir`, in the simulator and at
    deployed sites alike) names no privacy scope or the default scope of the policy installed in the
    site's workspace (local/privacy.json, two levels above the app). NVFLARE applies the scope a job
    names, and no filter at all for a name its policy lacks; caia's jobs name none."""
    app_dir = Path(app_dir)
    try:
        meta = json.loads((app_dir.parent / "meta.json").read_text())
        named = meta.get("scope") or ""
        policy_file = app_dir.parents[1] / "local" / PRIVACY_FILE
        default = json.loads(policy_file.read_text()).get("default_scope") if policy_file.exists() else None
    except (OSError, ValueError, AttributeError) as e:
        raise ContractError(f"the job's privacy scope cannot be checked: {e}", failure="privacy_scope", entry="runtime") from e
    if named and named != default:
        raise ContractError(f"the job's meta.json names privacy scope {named!r}; this site applies only its default "
                            f"scope {default!r}", failure="privacy_scope", entry="runtime")


def describe(policy: Policy | None) -> list[str]:
    """Lines for a person: the scope caia's jobs get, then any other scope."""
    if policy is None:
        return ["privacy scope: none (no privacy.json): updates leave the site as the code computed them"]
    others = [scope.describe() for name, scope in policy.scopes.items() if name != policy.default_scope]
    return [f"privacy scope applied to every job: {policy.applied.describe()}",
            *(f"other privacy scope (caia's jobs name none, so it is never applied): {line}" for line in others)]


def to_json(policy: Policy | None) -> dict | None:
    """{"default_scope", "scopes": [Scope.to_json(), ...]}, or None for a site without privacy.json."""
    if policy is None:
        return None
    return {"default_scope": policy.default_scope, "scopes": [scope.to_json() for scope in policy.scopes.values()]}
