"""Errors a user can act on.

Every `CaiaError` carries one line that names the thing at fault and the fix. Surfaces
show that line alone (CLI: stderr + exit 2; kernel: UsageError; server: HTTP 4xx);
anything else is a bug and keeps its traceback.
"""


class CaiaError(Exception):
    """Bad input or a refused operation; the message is one line meant for the user.

    Raised at a site while its run goes on, the message stays at the site: the researcher is told
    only `failure`, a category of caia_jupyter.contracts.failures, and `entry`, the entry point it concerns
    (None: whichever entry point was running).
    """

    exit_code = 2
    failure = "site_error"

    def __init__(self, *args, failure: str | None = None, entry: str | None = None):
        super().__init__(*args)
        if failure is not None:
            self.failure = failure
        self.entry = entry


class NotebookError(CaiaError):
    """The notebook cannot be turned into a bundle."""


class BundleError(CaiaError):
    """A bundle is missing, unreadable or not intact."""


class ValidationFailed(CaiaError):
    """A bundle has not passed local validation, so it is not submitted or approved (exit 2, as
    every refusal; `caia validate` itself exits 1 when validation fails)."""


class SubmitRefused(CaiaError):
    """A run is not started: its bundle id is not validated, not approved at a site it would run at,
    or already running (each surface refuses through `targets.submit.check_ready`)."""


class Busy(CaiaError):
    """The same action on the same notebook is already under way (a validation); try again once it ends."""


class SiteError(CaiaError):
    """A site directory, its catalog or its keys are unusable."""


class ApprovalRejected(CaiaError):
    """An approval does not authorise this bundle at this site."""


class DatasetNotReleased(CaiaError):
    """Federated code asked for a dataset this site did not release to the bundle."""

    failure = "dataset_not_released"


class FlareError(CaiaError):
    """NVFLARE could not run or reach the job."""


class ContractError(CaiaError):
    """Federated code does not keep the entry-point contract (see the README)."""

    failure = "contract"
