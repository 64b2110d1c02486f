"""Dataset standards: the Table Schema a requested dataset must meet, and its violations counted per rule.

A standard is a Frictionless Table Schema (https://specs.frictionlessdata.io/table-schema/) in a
JSON file beside the notebook, requested with `%%federated ... standard.NAME=FILE`; the bundle holds
it as `standards/NAME.schema.json` (role "standard", hashed like every bundle file). caia checks:

    fields[].name          a column of the dataset (every field must be present)
    fields[].type          string, number, integer, boolean, date, datetime or any
    fields[].constraints   required, minimum, maximum (numbers, or ISO dates for date fields),
                           enum (the allowed values), pattern (an RE2 regular expression matching
                           the whole value: linear time, whatever the pattern)
    fields[].unit          free text, metadata only (shown in the review)
    fields[].description   free text, shown in the review
    missingValues          texts that mean "missing" (Table Schema's default: [""])

`violations` counts the ROWS breaking each rule of each field, never keeping a value: it is what
a site answers (`caia site check`, its guard at admission) and what a sample must not have (local
validation). Rules: "missing-field", "type", "required", "minimum", "maximum", "enum", "pattern".
A row whose value is not of the field's type counts under "type" only.

A standard is a counting query on the site's data: the site sees its exact counts (`summary`); a
researcher is shown only the rules broken, no count (`Report`): two exact counts, however large,
subtract from the number of rows (which statistics release) to a small one.

A site whose policy refuses such data names the rules in its refusal; one whose policy admits it
("report") tells the researcher so: its runtime sends one `Report` per such dataset at the start
of its run (STANDARD_TAG),

    {"dataset": name, "breaks": [{"field": name, "rule": one of RULES}, ...]}

Every report read anywhere is untrusted input: `parse` keeps only a report of exactly that shape,
and a run (`reports`) only one of its own sites whose every (dataset, field, rule) is a rule of the
bundle's own standards (`rules_of`); anything else is dropped.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ContractError
from .fsutil import loads_strict

if TYPE_CHECKING:  # pandas and pandera are imported where data is checked
    import pandas as pd

TYPES = ("string", "number", "integer", "boolean", "date", "datetime", "any")
CONSTRAINTS = ("required", "minimum", "maximum", "enum", "pattern")
RULES = ("missing-field", "type", "required", "minimum", "maximum", "enum", "pattern")
_TRUE, _FALSE = ("true", "True", "TRUE", "1"), ("false", "False", "FALSE", "0")  # Table Schema's defaults
_FIX = "fix it as a Frictionless Table Schema (or start again with `caia standard infer SAMPLE.csv -o FILE`)"


STANDARD_TAG = "caia.standard"  # the analytics record a site sends, holding one `Report`
MAX_REPORT = 100_000  # characters of a report's JSON; one break is about 40


class Break(BaseModel):
    """One rule a dataset breaks at a site, `rule` of `field`: what a researcher may know of it (no count)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    field: Annotated[str, Field(min_length=1, max_length=1000)]
    rule: Literal[RULES]


class Report(BaseModel):
    """A site's word that a dataset released to the bundle breaks its standard: the rules it breaks."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    dataset: Annotated[str, Field(min_length=1, max_length=1000)]
    breaks: Annotated[list[Break], Field(min_length=1, max_length=1000)]

    @model_validator(mode="after")
    def _distinct(self):
        if len({(b.field, b.rule) for b in self.breaks}) != len(self.breaks):
            raise ValueError("a rule is broken once per report")
        return self

    def rules(self) -> str:
        """"age maximum, stage enum": the rules broken, as a refusal and a run's note name them."""
        return ", ".join(f"{b.field} {b.rule}" for b in self.breaks)

    def text(self, site: str) -> str:
        """The line a researcher reads: "site-2 admitted the bundle with dataset tumours breaking its
        standard: age maximum, stage enum"."""
        return f"{site} admitted the bundle with dataset {self.dataset} breaking its standard: {self.rules()}"


@dataclass(frozen=True)
class Violation:
    """`count` rows of a dataset break `rule` (one of RULES) of field `field`."""

    field: str
    rule: str
    count: int

    def __str__(self) -> str:
        """"age maximum (7 rows)": for the site, which sees its exact counts."""
        return f"{self.field} {self.rule} ({self.count} row{'s' if self.count != 1 else ''})"


def summary(found: list[Violation]) -> str:
    """"age maximum (17 rows), stage enum (2 rows)": field names and exact counts, never a value;
    for the site (`caia site check`, its log and audit log), never for a researcher (`report`)."""
    return ", ".join(map(str, found))


def report(dataset: str, found: list[Violation]) -> Report:
    """What a researcher may know of `dataset` breaking its standard (`found`: its violations, at
    least one): the rules, no count."""
    return Report(dataset=dataset, breaks=[Break(field=v.field, rule=v.rule) for v in found])


def parse(value) -> Report | None:
    """A report from anything received (a dict, or its JSON text), or None when it is not exactly one."""
    try:
        if isinstance(value, str):
            return Report.model_validate_json(value) if len(value) <= MAX_REPORT else None
        return Report.model_validate(value)
    except ValidationError:
        return None


def rules_of(standard: dict) -> dict[str, list[str]]:
    """Field -> the rules (RULES order) data can break under `standard` (as `read_standard` returns
    it): "missing-field" always; "type" unless the field takes any text ("string", "any"); "required"
    when it is required; each of its constraints minimum, maximum, enum, pattern."""
    found = {}
    for field in standard["fields"]:
        constraints = field.get("constraints", {})
        can = {"missing-field", *constraints} - {"required"}
        if field.get("type", "any") not in ("string", "any"):
            can.add("type")
        if constraints.get("required"):
            can.add("required")
        found[field["name"]] = [rule for rule in RULES if rule in can]
    return found


def reports(received, sites, known: dict[str, dict[str, list[str]]] | None) -> dict[str, list[Report]]:
    """{site: [Report]} from `received`, untrusted ({site: [report, ...]} as a server keeps them):
    only the run's own `sites` (names, or a mapping by name), and of their reports (`parse`) only
    those whose dataset and every (field, rule) are in `known` (dataset -> `rules_of` its standard,
    the bundle's own, as run.json records them); a site with none left is left out."""
    if not isinstance(received, dict) or not isinstance(known, dict):
        return {}

    def fits(report: Report) -> bool:
        fields = known.get(report.dataset)
        return isinstance(fields, dict) and all(isinstance(fields.get(b.field), list) and b.rule in fields[b.field]
                                                for b in report.breaks)

    kept = {}
    for site, sent in received.items():
        if site not in sites or not isinstance(sent, list):
            continue
        first: dict[str, Report] = {}  # one report per dataset: the first
        for one in map(parse, sent):
            if one is not None and fits(one):
                first.setdefault(one.dataset, one)
        if first:
            kept[site] = list(first.values())
    return kept


def bundle_standards(manifest: dict, read: Callable[[str], bytes]) -> dict[str, dict]:
    """Requested dataset name -> its standard (`read_standard`), for each dataset of a bundle's
    `manifest` that has one; `read(path)` gives a bundle file's bytes (checked against the manifest).
    Raises ContractError for a standard caia cannot read, and whatever `read` raises."""
    return {name: read_standard(read(spec["standard"]), spec["standard"])
            for name, spec in manifest["datasets"].items() if spec.get("standard")}


def read_standard(data: bytes, where: str) -> dict:
    """The standard in `data` (the bytes of file `where`, as named in errors), checked: strict JSON
    (no duplicate keys, no NaN), a valid Table Schema by frictionless's own metadata validation,
    and one caia checks (module doc: the types and constraints caia knows, a bound of the field's
    type, a pattern RE2 compiles, distinct field names). Returns the parsed descriptor.

    Raises ContractError, one line naming `where`, the problem and the fix.
    """
    import frictionless

    def bad(problem: str) -> ContractError:
        return ContractError(f"standard {where}: {problem}; {_FIX}")

    try:
        standard = loads_strict(data)
    except (ValueError, RecursionError) as e:
        raise bad(f"is not JSON ({e})") from None
    if not isinstance(standard, dict) or not isinstance(standard.get("fields"), list) or not standard["fields"]:
        raise bad("is not a Table Schema (an object with a non-empty 'fields' list)")
    report = frictionless.Schema.validate_descriptor(standard)
    if not report.valid:
        raise bad(" ".join(report.errors[0].message.split()))
    names = [field.get("name") for field in standard["fields"]]
    if len(set(names)) != len(names):
        raise bad(f"names field {next(n for n in names if names.count(n) > 1)!r} twice")
    for field in standard["fields"]:
        problem = _field_problem(field)
        if problem:
            raise bad(f"field {field['name']!r} {problem}")
    missing = standard.get("missingValues", [""])
    if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
        raise bad("missingValues must be a list of texts")
    return standard


def _field_problem(field: dict) -> str | None:
    """Why caia cannot check `field` (a Table Schema field frictionless accepted), or None."""
    kind = field.get("type", "any")
    if kind not in TYPES:
        return f"has type {kind!r}, which caia does not check (use one of {', '.join(TYPES)})"
    constraints = field.get("constraints", {})
    unknown = sorted(set(constraints) - set(CONSTRAINTS))
    if unknown:
        return f"has constraint {unknown[0]!r}, which caia does not check (use {', '.join(CONSTRAINTS)})"
    if not isinstance(constraints.get("required", False), bool):
        return "has a 'required' that is not true or false"
    for bound in ("minimum", "maximum"):
        if bound in constraints and _bound(constraints[bound], kind) is None:
            return f"has a {bound} {constraints[bound]!r} that is no bound for type {kind} (a number, or an ISO date for dates)"
    if "enum" in constraints and not (isinstance(constraints["enum"], list) and constraints["enum"]):
        return "has an enum that is not a non-empty list of allowed values"
    if "pattern" in constraints:
        if kind != "string":
            return "has a pattern, which applies to string fields only"
        return _pattern_problem(constraints["pattern"])
    for text in ("unit", "description"):
        if not isinstance(field.get(text, ""), str):
            return f"has a {text} that is not text"
    return None


def _pattern(pattern: str):
    """`pattern` compiled by RE2 (linear-time matching: no pattern can freeze a site); re2.error when
    RE2 cannot compile it. Errors are not logged by RE2 itself (the caller words them)."""
    import re2

    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _pattern_problem(pattern) -> str | None:
    """Why `pattern` is no pattern caia checks, or None."""
    import re2

    problem = None
    if not isinstance(pattern, str):
        problem = "is not text"
    else:
        try:
            _pattern(pattern)
        except re2.error as e:
            problem = (e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)) or "invalid"
    if problem is None:
        return None
    return (f"has a pattern RE2 cannot compile ({' '.join(problem.split())}); caia checks patterns in RE2 syntax "
            "(ordinary regular expressions: no lookaround or backreferences)")


def _bound(value, kind: str):
    """A minimum/maximum as compared with values of type `kind` (`_as_type`: dates as timezone-naive
    UTC), or None when it is not one."""
    import pandas as pd

    if kind in ("number", "integer") and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    if kind in ("date", "datetime") and isinstance(value, str):
        stamp = pd.to_datetime(value, errors="coerce", format="ISO8601")
        return None if pd.isna(stamp) else _naive_utc(stamp)
    return None


def _naive_utc(stamp):
    """A timestamp as caia compares them: an aware one converted to UTC, then without its zone."""
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def infer_standard(sample_path: str | Path) -> dict:
    """A starting standard for the table at `sample_path` (CSV): frictionless `describe` infers each
    column's type; a column with no missing value in the sample is marked required. Ranges, allowed
    categories, units and descriptions are the researcher's to add: a sample of a few synthetic
    rows cannot tell them. Raises ContractError (one line) for a file frictionless cannot read."""
    import frictionless

    from . import schema

    path = Path(sample_path)
    if not path.is_file():
        raise ContractError(f"{sample_path} does not exist; give the CSV sample to start the standard from")
    try:
        described = frictionless.describe(str(path), type="schema").to_descriptor()
    except frictionless.FrictionlessException as e:
        raise ContractError(f"{sample_path} cannot be described as a table ({e.error.message}); give a CSV sample") from None
    frame = schema.read_table(path)  # which columns have missing values, read as every table is read
    fields = []
    for field in described["fields"]:
        kind = field.get("type") if field.get("type") in TYPES else "string"  # e.g. "year": checked as text
        inferred = {"name": field["name"], "type": kind}
        if field["name"] in frame and frame[field["name"]].notna().all():
            inferred["constraints"] = {"required": True}
        fields.append(inferred)
    return {"fields": fields, "missingValues": [""]}


def dumps(standard: dict) -> bytes:
    """A standard as caia writes it: indented JSON, UTF-8, ending with a newline."""
    return (json.dumps(standard, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def field_names(standard: dict) -> list[str]:
    return [field["name"] for field in standard["fields"]]


def violations(frame: pd.DataFrame, standard: dict) -> list[Violation]:
    """The rows of `frame` (a table as the site or the sample reader read it) breaking each rule of
    `standard` (as `read_standard` returns it): [Violation(field, rule, rows)], in the standard's
    field order, rules in RULES order, only counts above 0. A missing field counts every row.

    Each value is first read as its field's type (a value that is not counts under "type"; the
    standard's missingValues count as missing); pandera then validates the typed table lazily, and
    its failure cases are counted per column and check (their values are dropped unread). A check
    that fails as a whole (no row named) counts every row it checks: never silently nothing."""
    import pandas as pd
    import pandera.pandas as pa

    missing_values = set(standard.get("missingValues", [""]))
    counts: Counter = Counter()
    typed, mistyped, columns, rules = {}, {}, {}, {}
    for field in standard["fields"]:
        name, kind = field["name"], field.get("type", "any")
        if name not in frame.columns:
            counts[(name, "missing-field")] = len(frame)
            continue
        raw = frame[name]
        raw = raw.mask(raw.notna() & raw.astype(str).isin(missing_values))
        typed[name] = _as_type(raw, kind)
        mistyped[name] = raw.notna() & typed[name].isna()
        counts[(name, "type")] = int(mistyped[name].sum())
        constraints = field.get("constraints", {})
        checks, rules[name] = [], []
        for rule in ("minimum", "maximum", "enum", "pattern"):
            if rule in constraints:
                checks.append(_check(rule, constraints[rule], kind))
                rules[name].append(rule)
        columns[name] = pa.Column(checks=checks, nullable=not constraints.get("required", False))
    if typed:
        table = pd.DataFrame(typed, index=frame.index).reset_index(drop=True)
        mistyped = {name: rows.reset_index(drop=True) for name, rows in mistyped.items()}
        try:
            pa.DataFrameSchema(columns).validate(table, lazy=True)
        except pa.errors.SchemaErrors as e:
            cases = e.failure_cases[["column", "check", "check_number", "index"]]
            for (name, check, number), rows in cases.groupby(["column", "check", "check_number"], dropna=False):
                if check == "not_nullable":  # a value of another type is a "type" violation only
                    rule, broken = "required", set(rows["index"].dropna().astype(int)) - set(mistyped[name][lambda s: s].index)
                else:
                    rule = rules[name][int(number)] if name in rules and pd.notna(number) else None
                    if rule is None:
                        raise ContractError(f"the standard's field {name!r} could not be checked ({check}); {_FIX}")
                    whole = rows["index"].isna().any()  # the check failed as a whole: every value it checks breaks it
                    broken = set(table.index[table[name].notna()]) if whole else set(rows["index"].astype(int))
                counts[(name, rule)] += len(broken)
    order = {name: i for i, name in enumerate(field_names(standard))}
    return [Violation(name, rule, count) for (name, rule), count in
            sorted(counts.items(), key=lambda item: (order[item[0][0]], RULES.index(item[0][1]))) if count]


def _as_type(values: pd.Series, kind: str) -> pd.Series:
    """`values` read as Table Schema type `kind`; a value that is not one becomes missing."""
    import pandas as pd

    if kind == "any":
        return values
    if kind == "string":
        return values.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore").astype(object)
    if kind in ("number", "integer"):
        if values.dtype == bool:
            return pd.Series(float("nan"), index=values.index)
        numbers = pd.to_numeric(values.astype(object).where(values.map(lambda v: not isinstance(v, bool))), errors="coerce")
        return numbers.where(numbers % 1 == 0) if kind == "integer" else numbers
    if kind == "boolean":
        if values.dtype == bool:
            return values.astype(object)
        return values.map(lambda v: True if str(v) in _TRUE else False if str(v) in _FALSE else None,
                          na_action="ignore").astype(object)
    # dates with a zone in UTC, then all timezone-naive: compared alike with `_bound`
    stamps = pd.to_datetime(values.astype(object).where(values.notna()).astype("string"), errors="coerce",
                            format="ISO8601", utc=True)
    return stamps.dt.tz_localize(None)


def _check(rule: str, value, kind: str):
    """The pandera check of constraint `rule` with `value` on values of type `kind`."""
    import pandas as pd
    import pandera.pandas as pa

    if rule == "minimum":
        return pa.Check.ge(_bound(value, kind))
    if rule == "maximum":
        return pa.Check.le(_bound(value, kind))
    if rule == "enum":
        return pa.Check.isin(list(_as_type(pd.Series(value, dtype=object), kind).dropna()))
    pattern = _pattern(value)  # Table Schema patterns match the whole value
    return pa.Check(lambda values: values.map(lambda v: pattern.fullmatch(v) is not None), name="pattern")


def check_frame(frame: pd.DataFrame, standard: dict, what: str) -> None:
    """Raise ContractError "`what` breaks its standard: age maximum (7 rows), ..." when `frame` breaks `standard`."""
    found = violations(frame, standard)
    if found:
        raise ContractError(f"{what} breaks its standard: {summary(found)}; fix the data or the standard")


def check_samples(samples: dict[str, str], standards: dict[str, str]) -> None:
    """Local validation: each dataset's sample (name -> CSV path) must satisfy its standard (name ->
    the bundle's standard file). Raises ContractError naming the dataset and each rule with its count."""
    from . import schema

    for name, standard_path in standards.items():
        standard = read_standard(Path(standard_path).read_bytes(), standard_path)
        check_frame(schema.read_table(samples[name]), standard, f"the sample of dataset {name!r}")
