"""Does the workshop fit Binder (2 GB, 2 cores)? Runs binder/workshop.ipynb with papermill, as a
participant would run it top to bottom, and reports the peak memory of the whole process tree:
papermill, the kernel, and every simulator process the notebook starts.

    .venv/bin/python benchmarks/binder.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from simulator import REPO, measure

BINDER_LIMIT_MB = 2048


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="caia-binder-") as folder:
        shutil.copy(REPO / "binder" / "workshop.ipynb", folder)
        command = [sys.executable, "-c",
                   "import json, papermill; papermill.execute_notebook('workshop.ipynb', 'out.ipynb', cwd='.', "
                   "progress_bar=False, kernel_name='python3'); print(json.dumps({}))"]
        os.chdir(folder)
        result = measure(command)
    result.pop("final_accuracy", None)
    verdict = "fits" if result["peak_pss_mb"] <= BINDER_LIMIT_MB else "does NOT fit"
    print(json.dumps(result))
    print(f"workshop notebook: {result['wall_s']} s, peak RSS {result['peak_rss_mb']} MB, peak PSS {result['peak_pss_mb']} MB "
          f"over {result['processes']} processes: {verdict} Binder's {BINDER_LIMIT_MB} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
