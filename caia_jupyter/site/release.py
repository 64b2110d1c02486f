"""The release: what a site's guard let an approved bundle see, written into its app folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..contracts.errors import SiteError

RELEASE = "caia_release.json"  # in the deployed app folder, outside custom/ and config/


@dataclass(frozen=True)
class Release:
    """The only source of `ctx` at a site."""

    site: str
    bundle_id: str
    datasets: dict  # requested name -> {"path": table at the site, "read": how (schema.detect), "columns": requested schema}
    params: dict
    rounds: int
    approval: str
    files: dict  # bundle path -> sha256 the guard admitted; the runtime loads nothing else
    sandbox: str  # where the code runs: "landlock", "process" (no kernel support; policy preferred) or "off" (`sandbox`)
    privacy: dict | None = None  # the manifest's job.privacy (`contracts.privacy.DifferentialPrivacy`); None: no DP
    encryption: str | None = None  # the manifest's job.encryption: the global model arrives encrypted (`flare_client`)
    statistics: dict | None = None  # a statistics bundle: {"spec": job.statistics, "thresholds": the site's, "noise_seed": `statistics.noise_seed`, "ranges": its `statistics.RANGES_FILE`}
    # one `contracts.standard.Report` (a dict) per released dataset breaking its standard, admitted under the site's
    # policy "report": the rules it breaks, no count; the runtime sends them as they are
    standard_reports: list = field(default_factory=list)

    @classmethod
    def read(cls, app_dir: str | Path) -> Release:
        try:
            return cls(**json.loads((Path(app_dir) / RELEASE).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise SiteError(
                f"this app was not admitted by the caia site guard ({RELEASE}: {e}); install the guard at the site"
            ) from e
