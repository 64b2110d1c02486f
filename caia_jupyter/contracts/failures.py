"""What a site may tell the researcher about a failure: a closed vocabulary.

A site whose run fails sends one report, and nothing else about the failure:

    {"entry": "build_model" | "load_data" | "train" | "evaluate" | "runtime",
     "round": int >= 0 | null,        # ctx.round when it failed; null before the first round
     "category": one of CATEGORIES}

Each category has one fixed text; the only values a rendered report holds are the site's name
(from the run's own list of sites), the entry point and the round. The exception's type, message
and traceback stay at the site: in its log and in its app folder (FAILURE_FILE).

Every report read anywhere (by the server's receiver, the POC/prod follower, a `Run`) is untrusted
input: `parse` turns anything that is not exactly a report into the category "unknown".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .weights import MAX_NUM_SAMPLES

FAILURE_TAG = "caia.failure"  # the analytics record a site sends, holding its report
FAILURE_FILE = "caia_failure.json"  # the whole story of that failure, kept in the site's app folder
MAX_REPORT = 200  # characters; a report is about 60
MAX_ROUND = 1_000_000

Entry = Literal["build_model", "load_data", "train", "evaluate", "runtime"]
Category = Literal[
    "raised", "dataset_not_released", "dataset_unreadable", "schema_changed",
    "not_a_module", "bad_num_samples", "bad_metrics", "unsupported_state", "contract", "beyond_release", "site_error",
    "dp_unsupported", "not_private", "budget_spent", "privacy_scope",
    "sandbox_read", "sandbox_write", "sandbox_network", "sandbox_program", "sandbox_signal", "exited",
    "unknown",
]
ENTRY_POINTS = ("build_model", "load_data", "train", "evaluate")
CATEGORIES = get_args(Category)

# The one text of each category, after "SITE failed in ENTRY at round N: ".
REASONS = {
    "raised": "the federated code raised an exception (details kept at the site)",
    "dataset_not_released": "the federated code asked ctx.dataset for a dataset this site did not release to the "
                            "bundle; request it with %%federated dataset= and ask the site's reviewers to approve it",
    "dataset_unreadable": "a dataset released to the bundle cannot be read at the site; the site must fix its catalog",
    "schema_changed": "a dataset released to the bundle no longer matches the schema its reviewers approved; "
                      "the site must fix its data or approve again",
    "not_a_module": "build_model() must return a torch.nn.Module",
    "bad_num_samples": f"train(model, data, ctx) must return a dict holding 'num_samples', an integer from 0 to {MAX_NUM_SAMPLES} "
                       "and at most the rows the site released to it",
    "bad_metrics": "metrics must be a dict of numbers (int, float, numpy scalars or 0-d tensors) under metric names",
    "unsupported_state": "the model's state_dict() holds an entry caia cannot average (not a tensor, or a tensor "
                         "that is not float, integer or bool)",
    "contract": "the federated code broke the entry-point contract (see the README)",
    "beyond_release": "the server asked for more rounds or evaluations than this site's reviewers approved; "
                      "the site stopped",
    "site_error": "caia's runtime at the site failed (details kept at the site)",
    # Differential privacy (the bundle's job.privacy); the site stops, its numbers kept at the site.
    "dp_unsupported": "the model holds a layer Opacus cannot train with differential privacy (such as BatchNorm); "
                      "local validation names it",
    "not_private": "the federated code trained without the differential privacy the bundle requests "
                   "(train must use ctx.make_private); the site sent no update",
    "budget_spent": "its privacy budget is spent; the site stopped sending updates",
    "privacy_scope": "the job names a privacy scope other than the site's default (caia's jobs name none: submit "
                     "with `caia submit`); the site stopped before the code ran",
    # What the site's sandbox stopped (the attempted path, port or program is kept at the site); the site stops.
    "sandbox_read": "the federated code tried to read a file outside its release; the site stopped its part of the run",
    "sandbox_write": "the federated code tried to write outside its scratch folder; the site stopped its part of the run",
    "sandbox_network": "the federated code tried to open a network connection; the site stopped its part of the run",
    "sandbox_program": "the federated code tried to start a program; the site stopped its part of the run",
    "sandbox_signal": "the federated code tried to signal a process outside its sandbox; the site stopped its part of the run",
    "exited": "the federated code's process ended without answering (details kept at the site)",
}
UNKNOWN_TEXT = "its failure report is not one caia can read (details kept at the site)"


# Why the server left a site's update of one round out of the global model (status.json "excluded"),
# after "SITE's update of round N was left out of the average: ". The site keeps running.
EXCLUDED = {
    "no_examples": "it trained on no examples (num_samples 0: no rows, or none left after load_data)",
    "non_finite_weights": "its weights hold NaN or values infinite in their dtype",
    "malformed_update": "its weights or num_samples do not fit the global model",
    "alone_encrypted": "it was the only usable encrypted update: the sum would have been that site's own weights, "
                       "which every site decrypts (the global model stays as it was)",
}
UNCONFINED = ("{site} ran the federated code without the kernel's sandbox: this machine's kernel has no Linux "
              "Landlock and the site's sandbox policy is preferred (`caia site show` tells what a kernel supports)")
NON_FINITE_METRIC = "{site}'s {name} at round {round} was not a finite number; it is recorded as missing"


class Report(BaseModel):
    """One site's failure: where (entry point, round) and which category; nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    entry: Entry
    round: Annotated[int, Field(ge=0, le=MAX_ROUND)] | None
    category: Category


UNKNOWN = Report(entry="runtime", round=None, category="unknown")


def parse(value) -> Report:
    """A report from anything received (a dict, or its JSON text); anything else is `UNKNOWN`."""
    try:
        if isinstance(value, str):
            return Report.model_validate_json(value) if len(value) <= MAX_REPORT else UNKNOWN
        return Report.model_validate(value)
    except ValidationError:
        return UNKNOWN


def parse_all(value, sites) -> dict[str, Report]:
    """{site: report} from a received mapping, keeping only the run's own `sites`."""
    if not isinstance(value, dict):
        return {}
    return {site: parse(report) for site, report in value.items() if site in sites}


def describe_excluded(site: str, round: int, reason: str) -> str:
    """The one line the researcher reads about one left-out update (`reason` a key of EXCLUDED)."""
    return f"{site}'s update of round {round} was left out of the average: {EXCLUDED[reason]}"


def describe(site: str, report: Report, local_record: Path | None = None) -> str:
    """The one line the researcher reads about `site`'s failure. `local_record` (the simulator only,
    where the researcher owns the simulated site) says where the full story lies on this machine."""
    if report.category == "unknown":
        text = f"{site} failed: {UNKNOWN_TEXT}"
    else:
        place = "caia's site runtime" if report.entry == "runtime" else report.entry
        if report.round is not None:
            place += f" at round {report.round}"
        text = f"{site} failed in {place}: {REASONS[report.category]}"
    return f"{text}; full record on this machine: {local_record}" if local_record else text
