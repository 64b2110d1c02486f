"""The bundle manifest: every file with its sha256 and size, datasets, job settings.

The bundle id is `sha256:` + the digest of the canonical manifest (sorted keys, fixed
separators, UTF-8). `manifest.schema.json` beside this module is generated from `Manifest`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .privacy import ENCRYPTIONS, DifferentialPrivacy
from .schema import KINDS, NUMERIC

FORMAT = "caia-bundle/1"
BUNDLE_ID = re.compile(r"sha256:[0-9a-f]{64}")  # every id `bundle_id` returns, and nothing else
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Kind = Literal[KINDS]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: Sha256
    size: int = Field(ge=0)
    role: Literal["module", "runner", "flare-config", "requirements", "captured", "standard"]
    opaque: bool = Field(False, description="a pickle of a plain value (caia_jupyter.contracts.captured), not source")
    python_name: str | None = Field(None, description="the name a captured value is bound to")
    python_type: str | None = Field(None, description="the type of a captured value")


class Column(_Strict):
    name: str
    kind: Kind


class DatasetSpec(_Strict):
    columns: list[Column] = Field(description="expected columns, in the order sites hand them to the code")
    standard: str | None = Field(None, description="the bundle path of the dataset's standard, standards/<name>.schema.json "
                                                   "(`contracts.standard`); None: no standard")


STATISTICS = ("count", "failure_count", "mean", "stddev", "quantile", "histogram")  # NVFLARE's names


class HistogramSpec(_Strict):
    bins: int = Field(ge=1, le=1000)
    range: tuple[float, float] | None = Field(None, description="[low, high); None: NVFLARE's global range (noisy min/max)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.range and not self.range[0] < self.range[1]:
            raise ValueError(f"histogram range {list(self.range)} must have low < high")
        return self


class StatisticsSpec(_Strict):
    """What a statistics bundle asks each site to release: NVFLARE statistics of `columns` (numeric,
    in every requested dataset), histograms of some of them, counts of declared categories."""

    columns: list[str] = Field(min_length=1, description="numeric columns described, in every requested dataset")
    statistics: list[Literal[STATISTICS]] = Field(min_length=1, description="NVFLARE statistics of each column")
    histograms: dict[str, HistogramSpec] = Field(default_factory=dict, description="column -> bins (and range)")
    quantiles: list[float] = Field(default_factory=list, description="quantiles (0..1) when 'quantile' is asked")
    categories: dict[str, list[str]] = Field(default_factory=dict,
                                             description="column -> declared categories, counted at each site")

    @model_validator(mode="after")
    def _consistent(self):
        for what, values in (("column", self.columns), ("quantile", self.quantiles)):
            twice = next((v for v in values if values.count(v) > 1), None)
            if twice is not None:
                raise ValueError(f"{what} {twice!r} is named twice in {what}s=; name each once")
        unknown = sorted(set(self.histograms) - set(self.columns))
        if unknown:
            raise ValueError(f"histogram of {unknown[0]!r}, which is not among the columns described")
        if bool(self.histograms) != ("histogram" in self.statistics):
            raise ValueError("histograms need the statistic 'histogram', and it needs histograms=COLUMN:BINS")
        if bool(self.quantiles) != ("quantile" in self.statistics) or any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError("the statistic 'quantile' needs quantiles=Q,... each strictly between 0 and 1")
        if any(not values or len(set(values)) != len(values) for values in self.categories.values()):
            raise ValueError("each categorical column needs distinct declared categories")
        # a described column's count minus its category counts would give the rows in no category
        both = sorted(set(self.categories) & set(self.columns))
        if both:
            raise ValueError(f"{both[0]!r} is both described and counted by category; request one of the two")
        return self

    def features(self) -> list[str]:
        """The NVFLARE features a site describes: the columns, then one indicator per declared
        category, named `column=category`."""
        return [*self.columns, *(category_feature(c, v) for c, values in self.categories.items() for v in values)]


def category_feature(column: str, category: str) -> str:
    """The feature counting rows of `column` equal to `category`."""
    return f"{column}={category}"


class JobSettings(_Strict):
    rounds: int = Field(ge=1)
    min_clients: int = Field(ge=1)
    params: dict[str, Any] = Field(default_factory=dict, description="ctx.params at every site")
    privacy: DifferentialPrivacy | None = Field(None, description="differential privacy each site applies (`contracts.privacy`)")
    encryption: Literal[ENCRYPTIONS] | None = Field(None, description="homomorphic encryption of the updates (`contracts.privacy`)")
    updates: Literal["weight_diff"] | None = Field(None, description="sites send weight differences, not weights (`contracts.privacy`)")
    statistics: StatisticsSpec | None = Field(None, description="a statistics bundle: what each site describes (no code)")

    @model_validator(mode="after")
    def _one_kind_of_update(self):
        if self.encryption and self.updates:  # NVFLARE's HE aggregation sums encrypted weights
            raise ValueError("encryption=he sends encrypted weights: it cannot be combined with updates=weight_diff")
        if self.statistics and (self.privacy or self.encryption or self.updates or self.rounds != 1):
            raise ValueError("a statistics bundle runs one round, without privacy, encryption or updates settings")
        return self


class Manifest(_Strict):
    format: Literal["caia-bundle/1"]
    caia_version: str
    python: str = Field(description="major.minor of the Python the bundle was built and validated with")
    module: Literal["federated.py"] = "federated.py"
    runner: Literal["caia_runner.py"] = "caia_runner.py"
    files: dict[str, FileEntry]
    datasets: dict[str, DatasetSpec]
    job: JobSettings

    @model_validator(mode="after")
    def _standards_listed(self):
        """Each dataset's standard is the listed file standards/<its name>.schema.json, and each such file is one's."""
        wanted = {spec.standard: name for name, spec in self.datasets.items() if spec.standard is not None}
        for path, name in wanted.items():
            entry = self.files.get(path)
            if path != f"standards/{name}.schema.json" or entry is None or entry.role != "standard":
                raise ValueError(f"dataset {name!r} must name its standard as the listed file standards/{name}.schema.json")
        unused = sorted(path for path, entry in self.files.items() if entry.role == "standard" and path not in wanted)
        if unused:
            raise ValueError(f"{unused[0]} is the standard of no requested dataset")
        return self

    @model_validator(mode="after")
    def _statistics_columns(self):
        spec = self.job.statistics
        for name, dataset in self.datasets.items() if spec else ():
            kinds = {column.name: column.kind for column in dataset.columns}
            for column in [*spec.columns, *spec.categories]:
                if column not in kinds:
                    raise ValueError(f"statistics of column {column!r}, which dataset {name!r} does not have")
            for column in spec.columns:
                if kinds[column] not in NUMERIC:
                    raise ValueError(f"column {column!r} of dataset {name!r} is {kinds[column]}, not numeric; "
                                     "count its values with categories= instead")
        if spec and not self.datasets:
            raise ValueError("a statistics bundle requests at least one dataset")
        return self


def canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def same_json(old, new) -> bool:
    """Whether two JSON values are the same as JSON: their canonical texts are equal. Unlike `==`,
    which holds 1 == 1.0 == True, it tells a number from a boolean and 1 from 1.0."""
    return canonical(old) == canonical(new)


def bundle_id(manifest: dict) -> str:
    return "sha256:" + hashlib.sha256(canonical(manifest)).hexdigest()


def json_schema() -> dict:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://caia-jupyter.org/schemas/manifest-1.json"
    return schema
