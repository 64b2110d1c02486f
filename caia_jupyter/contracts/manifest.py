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
from .schema import KINDS

FORMAT = "caia-bundle/1"
BUNDLE_ID = re.compile(r"sha256:[0-9a-f]{64}")  # every id `bundle_id` returns, and nothing else
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Kind = Literal[KINDS]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: Sha256
    size: int = Field(ge=0)
    role: Literal["module", "runner", "flare-config", "requirements", "captured"]
    opaque: bool = Field(False, description="a pickle of a plain value (caia_jupyter.contracts.captured), not source")
    python_name: str | None = Field(None, description="the name a captured value is bound to")
    python_type: str | None = Field(None, description="the type of a captured value")


class Column(_Strict):
    name: str
    kind: Kind


class DatasetSpec(_Strict):
    columns: list[Column] = Field(description="expected columns, in the order sites hand them to the code")


class JobSettings(_Strict):
    rounds: int = Field(ge=1)
    min_clients: int = Field(ge=1)
    params: dict[str, Any] = Field(default_factory=dict, description="ctx.params at every site")
    privacy: DifferentialPrivacy | None = Field(None, description="differential privacy each site applies (`contracts.privacy`)")
    encryption: Literal[ENCRYPTIONS] | None = Field(None, description="homomorphic encryption of the updates (`contracts.privacy`)")
    updates: Literal["weight_diff"] | None = Field(None, description="sites send weight differences, not weights (`contracts.privacy`)")

    @model_validator(mode="after")
    def _one_kind_of_update(self):
        if self.encryption and self.updates:  # NVFLARE's HE aggregation sums encrypted weights
            raise ValueError("encryption=he sends encrypted weights: it cannot be combined with updates=weight_diff")
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
