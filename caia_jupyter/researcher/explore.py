"""Federated statistics, the researcher's side: the request, its bundle, and the result.

A notebook asks for statistics with one line (a code cell of its own, or in the kernel):

    %federated explore dataset=breast_cancer:sample.csv columns=age,size histograms=age:10,size:8:0:60
                       categories=stage:I|II|III|IV quantiles=0.25,0.5,0.75 statistics=count,mean,stddev

`dataset=NAME:SAMPLE` (one or more), `columns=` (numeric columns to describe), `statistics=` (NVFLARE's:
count, failure_count (values missing), mean, stddev, quantile, histogram; default count,
failure_count, mean, stddev, plus histogram and quantile when asked for), `histograms=COLUMN:BINS[:LOW:HIGH]`
(without a range, NVFLARE agrees one across sites from their noisy extremes), `quantiles=`,
`categories=COLUMN:A|B|C` (one token per column), `min_clients=N` (default 2).

It becomes a statistics bundle (`statistics_bundle`): a manifest with `job.statistics` (the spec) and
the datasets' columns read from the samples, and caia's statistics client config as its only file;
the sample must satisfy the spec (its columns, numeric where described), checked as the manifest is
made. `Result` reads what NVFLARE's statistics controller wrote.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from ..contracts.client_app import statistics_config
from ..contracts.errors import NotebookError
from ..contracts.fileset import CLIENT_CONFIG, role_of
from ..contracts.fsutil import staged_dir, write_json
from ..contracts.manifest import FORMAT, Manifest, bundle_id, category_feature
from ..contracts.version import __version__
from .bundle import Bundle
from .compose import sample_columns
from .notebook import REQUEST_LINE
from .validation import validate_statistics

LINE = "%federated explore"
KEYS = ["dataset", "columns", "statistics", "histograms", "quantiles", "categories", "min_clients"]
DEFAULT_STATISTICS = ["count", "failure_count", "mean", "stddev"]
SUPPRESSED = "suppressed"
PARTIAL = "partial"  # a pooled value some site withheld its part of: never a silently smaller number
POOLED = "pooled"


def parse(tokens: list[str]) -> tuple[dict[str, str], dict, int]:
    """(dataset name -> sample path, the spec as a dict, min_clients) of the request's tokens
    ("key=value"). Raises NotebookError, one line naming the token and the fix."""
    samples, spec, min_clients = {}, {"categories": {}, "histograms": {}}, 2
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not value:
            raise NotebookError(f"{LINE}: {token!r} is not KEY=VALUE; see `caia explore --help`")
        try:
            if key == "dataset":
                name, _, sample = value.partition(":")
                if not sample:
                    raise ValueError("write dataset=NAME:SAMPLE.csv")
                samples[name] = sample
            elif key == "columns":
                spec["columns"] = value.split(",")
            elif key == "statistics":
                spec["statistics"] = value.split(",")
            elif key == "quantiles":
                spec["quantiles"] = [float(q) for q in value.split(",")]
            elif key == "histograms":
                for part in value.split(","):
                    column, *numbers = part.split(":")
                    if len(numbers) not in (1, 3):
                        raise ValueError("write histograms=COLUMN:BINS or COLUMN:BINS:LOW:HIGH")
                    spec["histograms"][column] = {"bins": int(numbers[0]),
                                                  **({"range": [float(numbers[1]), float(numbers[2])]} if numbers[1:] else {})}
            elif key == "categories":
                column, _, values = value.partition(":")
                if not values or "," in values:  # `,` separates in every other key: I,II is a slip, not a category
                    raise ValueError("write categories=COLUMN:A|B|C, the categories separated by |, one token per column")
                spec["categories"][column] = values.split("|")
            elif key == "min_clients":
                min_clients = int(value)
            else:
                close = difflib.get_close_matches(key, KEYS, n=1)
                raise ValueError(f"{'did you mean ' + close[0] + '=? ' if close else ''}keys are {', '.join(KEYS)}")
        except ValueError as e:
            raise NotebookError(f"{LINE}: {token!r}: {e}") from None
    if not samples:
        raise NotebookError(f"{LINE}: no dataset; add dataset=NAME:SAMPLE.csv")
    if "statistics" not in spec:
        spec["statistics"] = DEFAULT_STATISTICS + [s for s, on in (("histogram", spec["histograms"]),
                                                                   ("quantile", spec.get("quantiles"))) if on]
    return samples, spec, min_clients


def request_of(notebook_path: str | Path) -> list[str]:
    """The request tokens of the last `%federated explore` line of a saved notebook's code cells (also
    `result = %federated explore ...`; a notebook the line names first, as the magic accepts, and
    options such as --sites left out). Raises NotebookError when it has none."""
    import nbformat

    found = None
    for cell in nbformat.read(str(notebook_path), as_version=4).cells:
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                if match := REQUEST_LINE.match(line):
                    found = match.group(1)
    if found is None:
        raise NotebookError(f"{Path(notebook_path).name} has no `{LINE} dataset=... columns=...` line; add one")
    tokens = shlex.split(found, comments=True)
    if tokens and tokens[0].endswith(".ipynb"):
        tokens = tokens[1:]  # `%federated explore NOTEBOOK KEY=VALUE ...`: the request follows the notebook
    options = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
    return tokens[:options]  # the request; options such as --sites are the kernel's, not the bundle's


def default_output(notebook_path: str | Path) -> Path:
    """Where a notebook's statistics bundle is written: bundles/<notebook name>-explore/ beside it."""
    notebook_path = Path(notebook_path)
    return notebook_path.parent / "bundles" / f"{notebook_path.stem}-explore"


def statistics_bundle(notebook_path: str | Path, tokens: list[str] | None = None, output: str | Path | None = None) -> Bundle:
    """Write the statistics bundle of the request `tokens` (default: the notebook's `%federated explore`
    line), samples relative to the notebook's folder, to `output` (default `default_output`).
    Raises NotebookError (one line) for a request or sample that does not satisfy the spec; writes
    nothing then."""
    notebook_path = Path(notebook_path)
    samples, spec, min_clients = parse(request_of(notebook_path) if tokens is None else tokens)
    datasets = {}
    for name, sample in samples.items():
        path = (notebook_path.parent / sample).resolve()
        if not path.is_file():
            raise NotebookError(f"sample {sample} of dataset {name!r} does not exist; create it or fix the path")
        datasets[name] = {"columns": sample_columns(path, name, None)[0]}
    config = statistics_config()
    try:
        manifest = Manifest(
            format=FORMAT, caia_version=__version__, python=f"{sys.version_info.major}.{sys.version_info.minor}",
            files={CLIENT_CONFIG: {"sha256": hashlib.sha256(config).hexdigest(), "size": len(config), "role": role_of(CLIENT_CONFIG)}},
            datasets=datasets, job={"rounds": 1, "min_clients": min_clients, "statistics": spec},
        ).model_dump(mode="json", exclude_none=True)
    except ValidationError as e:
        raise NotebookError(f"{LINE}: {_spec_problem(e.errors()[0])}") from None
    bid = bundle_id(manifest)
    target = Path(output) if output else default_output(notebook_path)
    with staged_dir(target) as stage:
        (stage / CLIENT_CONFIG).write_bytes(config)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (stage / "records").mkdir()
        write_json(stage / "records" / "build.json", {
            "bundle_id": bid, "manifest": manifest, "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "samples": samples, "notebook": Path(os.path.relpath(notebook_path.resolve(), target.resolve())).as_posix()})
    bundle = Bundle(target, bid, manifest)
    validate_statistics(bundle)
    return bundle


def _spec_problem(error: dict) -> str:
    """One pydantic error of the request's spec, in the request's own words: the key it is about."""
    message = error["msg"].removeprefix("Value error, ")
    loc = error["loc"]
    if loc[:2] != ("job", "statistics") or len(loc) < 3:
        return message  # the spec as a whole (its validator names what it is about)
    if error["type"] == "missing":
        return f"no {loc[2]}=; add {loc[2]}=... (see `caia explore --help`)"
    where = "".join(f" {part}" for part in loc[3:] if isinstance(part, str))  # histograms: the column, "bins"
    value = f" {error['input']!r}" if isinstance(error.get("input"), (str, int, float)) else ""
    return f"{loc[2]}={where}{value}: {message[:1].lower()}{message[1:]}"


@dataclass
class Result:
    """NVFLARE's statistics of a run, per site and pooled.

    `raw`: what its controller wrote (feature -> statistic -> site or "Global" -> dataset -> value);
    `spec`: the manifest's job.statistics; `sites`: the sites in it (that answered). A statistic of a site
    that the site did not send (its thresholds suppressed it) is SUPPRESSED; a pooled value is PARTIAL
    when any site withheld its part (NVFLARE pools over the sites that sent theirs: a smaller number
    that would read as the whole).
    """

    raw: dict
    spec: dict
    sites: list[str]
    datasets: list[str]
    bundle_id: str = ""

    @classmethod
    def read(cls, run_dir: str | Path) -> Result:
        """The result in a finished statistics run's folder. Raises NotebookError when it holds none."""
        run_dir = Path(run_dir)
        file = run_dir / "statistics.json"
        if not file.is_file():
            raise NotebookError(f"run {run_dir.name} has no statistics (it did not finish); see its outcome.json")
        spec = json.loads((run_dir / "run.json").read_text())
        manifest = json.loads((Path(spec["bundle"]) / "manifest.json").read_text())
        raw = json.loads(file.read_text())
        answered = {who for statistics in raw.values() for by_site in statistics.values() for who in by_site} - {"Global"}
        return cls(raw, manifest["job"]["statistics"], sorted(answered), sorted(manifest["datasets"]), spec["bundle_id"])

    def _features(self, statistic: str) -> list[str]:
        columns = list(self.spec["columns"])
        if statistic == "count":
            columns += [category_feature(c, v) for c, values in self.spec.get("categories", {}).items() for v in values]
        return columns

    def _value(self, feature: str, statistic: str, who: str, dataset: str):
        return self.raw.get(feature, {}).get(statistic, {}).get(who, {}).get(dataset)

    def _partial(self, feature: str, statistic: str, dataset: str) -> bool:
        """Whether a site withheld (some of) its part of the pooled value."""
        return any(self._value(feature, statistic, who, dataset) is None for who in self.sites)

    def table(self, statistic: str) -> pd.DataFrame:
        """One statistic (count, failure_count, mean, stddev, quantile) as a table: rows (dataset,
        feature; quantile: and q), columns the sites then "pooled"; SUPPRESSED where a site withheld it.
        Raises NotebookError for a statistic the request did not ask for."""
        if statistic not in ["count", *self.spec["statistics"]] or statistic == "histogram":
            raise NotebookError(f"statistic {statistic!r} was not asked for; tables: {', '.join(self.statistics)}")
        rows = {}
        for dataset in self.datasets:
            for feature in self._features(statistic):
                for who in [*self.sites, "Global"]:
                    value = self._value(feature, statistic, who, dataset)
                    column = POOLED if who == "Global" else who
                    if statistic == "quantile":
                        for q in self.spec["quantiles"]:
                            got = _quantile(value, q)
                            if who == "Global" and got is not None and any(_quantile(self._value(feature, statistic, s, dataset), q) is None
                                                       for s in self.sites):
                                got = PARTIAL
                            rows.setdefault((dataset, feature, q), {})[column] = SUPPRESSED if got is None else got
                    elif who == "Global" and value is not None and self._partial(feature, statistic, dataset):
                        rows.setdefault((dataset, feature), {})[column] = PARTIAL
                    else:
                        rows.setdefault((dataset, feature), {})[column] = SUPPRESSED if value is None else value
        names = ["dataset", "feature", "q"] if statistic == "quantile" else ["dataset", "feature"]
        frame = pd.DataFrame.from_dict(rows, orient="index")[[*self.sites, POOLED]]
        frame.index = pd.MultiIndex.from_tuples(frame.index, names=names)
        return frame

    @property
    def statistics(self) -> list[str]:
        """The tables there are (`table`)."""
        return [s for s in dict.fromkeys(["count", *self.spec["statistics"]]) if s != "histogram"]

    def histogram(self, column: str, dataset: str | None = None) -> pd.DataFrame:
        """Histogram of `column`: one row per bin (low, high), one count column per site and "pooled".
        A site's bin is SUPPRESSED where the site suppressed it (it sends NaN, `site.statistics.complementary`)
        or withheld the whole histogram; a pooled bin is PARTIAL where any site's is. Raises
        NotebookError for a column without a histogram."""
        if column not in self.spec.get("histograms", {}):
            raise NotebookError(f"no histogram of {column!r} was asked for; histograms: {', '.join(self.spec.get('histograms', {}))}")
        dataset = dataset or self.datasets[0]
        pooled = self._value(column, "histogram", "Global", dataset) or []
        frame = pd.DataFrame({"low": [b[0] for b in pooled], "high": [b[1] for b in pooled]})
        for who in self.sites:
            bins = self._value(column, "histogram", who, dataset)
            frame[who] = [_bin_count(b[2]) for b in bins] if bins and len(bins) == len(pooled) else SUPPRESSED
        withheld = (frame[self.sites] == SUPPRESSED).any(axis=1) if self.sites else pd.Series(False, index=frame.index)
        frame[POOLED] = [PARTIAL if partial or _bin_count(b[2]) == SUPPRESSED else b[2] for partial, b in zip(withheld, pooled)]
        return frame

    def suppressed(self) -> list[dict]:
        """Every (site, dataset, feature, statistic) the site withheld; a histogram some of whose bins
        a site suppressed also has "bins": their indices."""
        found = []
        for statistic in self.statistics:
            for dataset in self.datasets:
                for feature in self._features(statistic):
                    found += [{"site": s, "dataset": dataset, "feature": feature, "statistic": statistic}
                              for s in self.sites if self._value(feature, statistic, s, dataset) is None]
        for column in self.spec.get("histograms", {}):
            for dataset in self.datasets:
                frame = self.histogram(column, dataset)
                for s in self.sites:
                    bins = [i for i, n in enumerate(frame[s]) if n == SUPPRESSED]
                    if not self._value(column, "histogram", s, dataset):
                        found.append({"site": s, "dataset": dataset, "feature": column, "statistic": "histogram"})
                    elif bins:
                        found.append({"site": s, "dataset": dataset, "feature": column, "statistic": "histogram", "bins": bins})
        return found

    def to_json(self) -> dict:
        """The result as plain JSON: sites, datasets, spec, each table (records), histograms, suppressed."""
        def records(frame):
            return [{**dict(zip(frame.index.names, key if isinstance(key, tuple) else (key,))), **row}
                    for key, row in frame.to_dict(orient="index").items()]

        return {"bundle_id": self.bundle_id, "sites": self.sites, "datasets": self.datasets, "spec": self.spec,
                "tables": {s: records(self.table(s)) for s in self.statistics},
                "histograms": {c: self.histogram(c).to_dict(orient="records") for c in self.spec.get("histograms", {})},
                "suppressed": self.suppressed()}

    def plot_histograms(self, dataset: str | None = None):
        """A matplotlib Figure: per histogram column, each site's bars overlaid (half transparent) and
        the pooled outline; a suppressed bin (a partial pooled one) is left out, the legend saying how
        many; a site that withheld the whole histogram is named in the legend as suppressed."""
        from matplotlib.figure import Figure  # not pyplot's: a notebook shows the returned figure once

        columns = list(self.spec.get("histograms", {}))
        figure = Figure(figsize=(5 * max(len(columns), 1), 3.5))
        axes = figure.subplots(1, max(len(columns), 1), squeeze=False)
        for axis, column in zip(axes[0], columns):
            frame = self.histogram(column, dataset)
            width = frame["high"] - frame["low"]
            for who in self.sites:
                hidden = frame[who] == SUPPRESSED
                if hidden.all():
                    axis.bar([], [], label=f"{who} ({SUPPRESSED})")
                    continue
                shown = ~hidden
                axis.bar(frame["low"][shown], frame[who][shown].astype(float), width=width[shown], align="edge", alpha=0.45,
                         label=f"{who} ({_bins(hidden.sum())} {SUPPRESSED})" if hidden.any() else who)
            partial = frame[POOLED] == PARTIAL
            if len(frame) and not partial.all():
                counts = frame[POOLED].where(~partial, float("nan")).astype(float)  # a partial bin: a gap, not a smaller bar
                axis.stairs(counts, [*frame["low"], *frame["high"].iloc[-1:]], color="black",
                            label=f"{POOLED} ({_bins(partial.sum())} {PARTIAL}: not drawn)" if partial.any() else POOLED)
            elif len(frame):
                axis.bar([], [], label=f"{POOLED} ({PARTIAL}: not drawn)")
            axis.set_title(column)
            axis.set_ylabel("count")
            axis.legend(fontsize="small")
        figure.tight_layout()
        return figure

    def plot_missing(self, dataset: str | None = None):
        """A matplotlib Figure: share of values missing per column (bars per site and pooled), from
        count and failure_count; a withheld value is left out."""
        from matplotlib.figure import Figure

        dataset = dataset or self.datasets[0]
        figure = Figure(figsize=(max(4, 1.2 * len(self.spec["columns"])), 3.5))
        axis = figure.subplots()
        highest = 0.0
        who_list = [*self.sites, "Global"]
        width = 0.8 / len(who_list)
        for i, who in enumerate(who_list):
            shares = []
            for column in self.spec["columns"]:
                count = self._value(column, "count", who, dataset)
                missing = self._value(column, "failure_count", who, dataset)
                if who == "Global" and (self._partial(column, "count", dataset) or self._partial(column, "failure_count", dataset)):
                    count = None  # partial: left out
                shares.append(missing / (count + missing) if count is not None and missing is not None and count + missing else float("nan"))
            axis.bar([j + i * width for j in range(len(shares))], shares, width=width,
                     label=POOLED if who == "Global" else who)
            highest = max([highest, *(x for x in shares if x == x)])  # NaN (withheld) left out
        axis.set_xticks([j + 0.4 - width / 2 for j in range(len(self.spec["columns"]))], self.spec["columns"])
        axis.set_ylabel("share missing")
        axis.set_ylim(0, max(highest * 1.15, 0.05))
        axis.legend(fontsize="small")
        figure.tight_layout()
        return figure


def _bins(n: int) -> str:
    return f"{n} bin{'' if n == 1 else 's'}"


def _bin_count(count):
    """A bin's count as NVFLARE's result holds it; SUPPRESSED for the NaN a site sends for a suppressed bin."""
    return SUPPRESSED if count is None or count != count else count


def _quantile(value: dict | None, q: float):
    """The quantile q of a site's or the pooled answer (keys are q or its text), None when absent."""
    return (value or {}).get(str(q), (value or {}).get(q))
