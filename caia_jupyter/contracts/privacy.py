"""What protection a bundle requests, as its manifest records it (the bundle id covers it).

    job.privacy     record-level differential privacy of each site's training (DP-SGD, Abadi et al.
                    2016, "Deep Learning with Differential Privacy"), as Opacus implements it: the
                    whole run at a site (every round, every local epoch, that site's sample rate) is
                    (epsilon, delta)-differentially private with respect to one record of its data.
    job.encryption  "he-ckks": sites encrypt their updates with CKKS homomorphic encryption (Cheon et
                    al. 2017; TenSEAL, through NVFLARE's HE filters), so the aggregator sums ciphertexts.
    job.updates     "weight_diff": each round a site sends its weights' difference from the global model
                    it received (what NVFLARE's percentile and SVT privacy filters need), not its weights.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENCRYPTIONS = ("he-ckks",)
EPSILON = "epsilon"  # the metric a DP site reports each round: the epsilon it has spent so far (the code may not)
MAX_EPSILON = 100.0  # beyond this a "guarantee" protects nothing; a request above it is a typo
ACCOUNTANT = "rdp"  # the Opacus accountant every site counts DP-SGD steps with (site.dp_sgd), named in a run's guarantee


def exact(value: float) -> str:
    """A number as the shortest text that reads back as the same float: 3, 3.0000001, 1e-05 (never
    rounded as `:g` does: 3.0000001 is not 3). Integers in full."""
    text = repr(value)
    return text[:-2] if isinstance(value, float) and text.endswith(".0") else text


def finite_number(value) -> bool:
    """An int or float that is a finite float (bool is no number here); never raises (an integer
    too large for a float, 10**400 say, is no finite number)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


class DifferentialPrivacy(BaseModel):
    """A DP-SGD request: each site's whole run is (`epsilon`, `delta`)-DP; per-example gradients are
    clipped to L2 norm `max_grad_norm`; the noise is calibrated for `local_epochs` passes over the
    site's data per round."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "3" is not a number here: the guard reads the raw JSON

    mechanism: Literal["dp-sgd"] = "dp-sgd"
    epsilon: float = Field(gt=0, le=MAX_EPSILON, description="the privacy budget of each site's whole run")
    delta: float = Field(gt=0, lt=1, description="probability the epsilon bound may fail; well below 1/records")
    max_grad_norm: float = Field(1.0, gt=0, description="per-example gradient clipping bound (L2)")
    local_epochs: int = Field(1, ge=1, le=10_000, description="passes over a site's data in each round")

    @field_validator("epsilon", "delta", "max_grad_norm")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def describe(self) -> str:
        """One line for people, each number exactly (`exact`): `DP-SGD, epsilon 3, delta 1e-05, max_grad_norm 1,
        1 local epoch per round`."""
        epochs = f"{self.local_epochs} local epoch{'s' if self.local_epochs > 1 else ''} per round"
        return (f"DP-SGD, epsilon {exact(self.epsilon)}, delta {exact(self.delta)}, "
                f"max_grad_norm {exact(self.max_grad_norm)}, {epochs}")
