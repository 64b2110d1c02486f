"""Federated statistics at a site, on NVFLARE's own engine, with the site's own thresholds.

A statistics bundle carries no code: its client config (`client_app.statistics_config`, caia's own
byte for byte) runs NVFLARE's StatisticsExecutor over `CaiaStatistics`, NVFLARE's DataFrame
statistics over exactly the datasets the site's guard released (as `ctx.dataset` reads them), cut
to the columns the bundle's spec names, plus one indicator feature per declared category (1 in the
category, missing otherwise), so NVFLARE's count and minimum-count rule apply to category counts.
A category name comes only from the spec, never from the site's data.

What leaves the site passes `SiteStatisticsFilter`, with the site's thresholds
(`<site>/statistics.json`, `read_thresholds`), which the guard writes into the release, and the
approved spec; never the bundle's or the server's settings: `withhold` removes whatever would reveal
a number between 0 and the minimum count, directly or by subtraction (differencing), `restrict`
whatever the spec does not name, then NVFLARE's cleansers (MinCountCleanser, AddNoiseToMinMax,
HistogramBinsCleanser) apply. The researcher sees what was withheld as suppressed.

The server is the researcher's: it may ask any histogram range and run an approved bundle again and
again. So the min and max sent are the data's own (`own_extremes`; NVFLARE's executor would send a
histogram range of the server's config instead), and NVFLARE's noise on them is drawn from a seed made of the value itself and a
secret the guard derives from the site's own key (`noise_seed`, `noisy_extremes`): a value gets the
same noise in every run of every bundle, so no number of runs or bundles averages it away; a histogram range the spec does not fix must hold the extremes this site sent (as
NVFLARE's agreed range does), and its zero bins are suppressed like small ones (else moving the
edges from run to run would find where no value lies, and so a value).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import random
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from nvflare.apis.fl_constant import FLContextKey
from nvflare.app_common.abstract.statistics_spec import Bin, Histogram
from nvflare.app_common.app_constant import StatisticsConstants as StC
from nvflare.app_common.filters.statistics_privacy_filter import StatisticsPrivacyFilter
from nvflare.app_common.statistics.histogram_bins_cleanser import HistogramBinsCleanser
from nvflare.app_common.statistics.min_count_cleanser import MinCountCleanser
from nvflare.app_common.statistics.min_max_cleanser import AddNoiseToMinMax
from nvflare.app_opt.statistics.df.df_core_statistics import DFStatisticsCore

from ..contracts.client_app import STATISTICS_CONFIG_FILE, STATISTICS_TASKS, canonical
from ..contracts.errors import SiteError
from ..contracts.fsutil import loads_strict, write_json
from ..contracts.manifest import StatisticsSpec, category_feature
from .context import read_released
from .release import Release

THRESHOLDS_FILE = "statistics.json"  # in the site directory
NOISE_KEY_FILE = "statistics.key"  # in the site directory: the secret behind `noise_seed`; never leaves it
RANGES_FILE = "statistics.ranges.json"  # in the site directory: the histogram range each bundle's first run took (`taken_ranges`)
GENERATOR_ID = "caia_statistics"
logger = logging.getLogger(__name__)
SUPPRESSED_BIN = float("nan")  # a suppressed bin's count: NVFLARE sums it into a NaN pooled bin, never a smaller one
PRECISION = 12  # decimal digits NVFLARE rounds each statistic to (its default, 4, is too coarse to check)


@dataclass(frozen=True)
class Thresholds:
    """A site's rules for what statistics may leave it (`<site>/statistics.json`, each field optional).

    min_count: a feature with fewer values is withheld (and a missing count below it);
    min_noise_level/max_noise_level: relative noise NVFLARE adds to local min/max (0..1);
    extremes: False sends no min/max at all (histograms then need a range the researcher gives);
    max_bins_percent: a histogram's bins must stay below this percent of the feature's values.
    """

    min_count: int = 10
    min_noise_level: float = 0.1
    max_noise_level: float = 0.3
    extremes: bool = True
    max_bins_percent: float = 10

    def __post_init__(self):
        problem = self.problem()
        if problem:
            raise SiteError(f"statistics thresholds: {problem}; fix it with `caia site policy DIR --min-count ...`")

    def problem(self) -> str:
        if type(self.min_count) is not int or self.min_count < 1:
            return f"min_count must be a whole number of at least 1, not {self.min_count!r}"
        levels = (self.min_noise_level, self.max_noise_level)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in levels) or levels[0] > levels[1]:
            return f"noise levels must satisfy 0 <= min <= max <= 1, not {list(levels)}"
        if type(self.extremes) is not bool:
            return f"extremes must be true or false, not {self.extremes!r}"
        if isinstance(self.max_bins_percent, bool) or not isinstance(self.max_bins_percent, (int, float)) \
                or not 0 < self.max_bins_percent <= 100:
            return f"max_bins_percent must be in (0, 100], not {self.max_bins_percent!r}"
        return ""


def read_thresholds(site_dir: str | Path) -> Thresholds:
    """The site's statistics thresholds; the defaults when it has no statistics.json. Raises
    SiteError (one line) for a file that is not a JSON object of Thresholds' fields."""
    file = Path(site_dir) / THRESHOLDS_FILE
    if not file.exists():
        return Thresholds()
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        known = {f.name for f in fields(Thresholds)}
        if not isinstance(raw, dict) or set(raw) - known:
            raise ValueError(f"a JSON object with fields among {', '.join(sorted(known))}")
    except (OSError, ValueError) as e:
        raise SiteError(f"{THRESHOLDS_FILE} of the site is unusable: {e}") from None
    return Thresholds(**raw)


def merged_thresholds(site_dir: str | Path, **changes) -> Thresholds:
    """The site's thresholds with some fields changed (None values left out), checked, not written.
    Raises SiteError for a value out of range or an unusable statistics.json."""
    return Thresholds(**{**asdict(read_thresholds(site_dir)), **{k: v for k, v in changes.items() if v is not None}})


def write_thresholds(site_dir: str | Path, thresholds: Thresholds) -> Thresholds:
    """Write the site's statistics.json."""
    write_json(Path(site_dir) / THRESHOLDS_FILE, asdict(thresholds))
    return thresholds


def set_thresholds(site_dir: str | Path, **changes) -> Thresholds:
    """Change some of the site's thresholds (`merged_thresholds`) and write them; nothing is written
    when SiteError is raised."""
    return write_thresholds(site_dir, merged_thresholds(site_dir, **changes))


def noise_seed(site_dir: str | Path) -> str:
    """The secret NVFLARE's noise on min and max is seeded from at this site (`noisy_extremes`):
    HMAC-SHA256 (hex) under the site's key (NOISE_KEY_FILE, 32 random bytes made on first use,
    readable by the site's account only), so the key itself never goes into a job, and nobody
    without it can compute the noise. Raises SiteError for a key that cannot be read or made."""
    file = Path(site_dir) / NOISE_KEY_FILE
    try:
        if not file.exists():
            staged = file.with_name(f".{NOISE_KEY_FILE}.{os.getpid()}")
            descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(secrets.token_bytes(32))
            try:
                os.link(staged, file)  # whole or not at all; a key another guard made first stays
            except FileExistsError:
                pass
            finally:
                staged.unlink()
        key = file.read_bytes()
    except OSError as e:
        raise SiteError(f"{NOISE_KEY_FILE} of the site cannot be read or made ({e.strerror}); "
                        "give the site's account access to its directory") from None
    if len(key) != 32:
        raise SiteError(f"{NOISE_KEY_FILE} of the site is not a key of 32 bytes; remove it and the next statistics run makes one")
    return hmac.new(key, b"caia statistics: noise on min and max", hashlib.sha256).hexdigest()


def noisy_extremes(statistics: dict, thresholds: Thresholds, noise_seed: str, client_name: str) -> None:
    """NVFLARE's noise (AddNoiseToMinMax, with the thresholds' levels) on each min and max in
    `statistics`, in place, drawn from a seed of the statistic, the value and `noise_seed`: the same
    value gets the same noisy one whatever the bundle, run, dataset or feature, so repeating requests
    never averages the noise away."""
    cleanser = AddNoiseToMinMax(thresholds.min_noise_level, thresholds.max_noise_level)
    for statistic in (StC.STATS_MIN, StC.STATS_MAX):
        for ds, features in statistics.get(statistic, {}).items():
            for feature, value in features.items():
                one = {statistic: {ds: {feature: value}}}
                with seeded(hmac.new(noise_seed.encode(), f"{statistic} {float(value)!r}".encode(), hashlib.sha256).hexdigest()):
                    cleanser.apply(one, client_name)
                features[feature] = one[statistic][ds][feature]


@contextmanager
def seeded(seed: str):
    """Python's `random` (NVFLARE's noise draws from it) seeded with `seed` inside the block, and as
    it was after."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def statistics_frames(release: Release) -> dict[str, pd.DataFrame]:
    """Dataset name -> the frame NVFLARE describes (`described`) of each released dataset."""
    spec = StatisticsSpec.model_validate(release.statistics["spec"])
    return {name: described(read_released(release.site, name, dataset), spec) for name, dataset in release.datasets.items()}


def described(frame: pd.DataFrame, spec: StatisticsSpec) -> pd.DataFrame:
    """The spec's columns of `frame` as floats, then one indicator per declared category (1.0 where
    the column's value, as text, is the category; NaN elsewhere, a missing value included)."""
    out = frame[spec.columns].astype(float)
    for column, categories in spec.categories.items():
        text = frame[column].astype("string")
        for category in categories:
            inside = text.eq(category).fillna(False).to_numpy(dtype=bool)
            out[category_feature(column, category)] = np.where(inside, 1.0, np.nan)
    return out


class CaiaStatistics(DFStatisticsCore):
    """NVFLARE's DataFrame statistics over the datasets the site released to this bundle.
    count: the values present; failure_count: the values missing."""

    def initialize(self, fl_ctx) -> None:
        self.data = statistics_frames(Release.read(fl_ctx.get_prop(FLContextKey.APP_ROOT)))

    def count(self, dataset_name: str, feature_name: str) -> int:
        return int(self.data[dataset_name][feature_name].count())

    def failure_count(self, dataset_name: str, feature_name: str) -> int:
        return int(self.data[dataset_name][feature_name].isna().sum())

    def sum(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].sum())

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].std())

    def variance_with_mean(self, dataset_name, feature_name, global_mean, global_count) -> float:
        values = self.data[dataset_name][feature_name].dropna()
        return float(((values - global_mean) ** 2).sum() / (global_count - 1))

    def max_value(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].max())

    def min_value(self, dataset_name: str, feature_name: str) -> float:
        return float(self.data[dataset_name][feature_name].min())

    def quantiles(self, dataset_name: str, feature_name: str, percents: list) -> dict:
        """NVFLARE's quantile answer (its DataFrame generator's, whose t-digest call predates the
        fastdigest installed): the quantiles of the values present, and their t-digest of about
        sqrt(n) centroids, which NVFLARE's controller merges across sites."""
        from fastdigest import TDigest

        values = self.data[dataset_name][feature_name].dropna().to_numpy(dtype=float)
        digest = TDigest.from_values(values, max_centroids=max(1, round(math.sqrt(len(values)))))
        return {StC.STATS_QUANTILE: {p: digest.quantile(p) for p in percents}, StC.STATS_DIGEST_COORD: digest.to_dict()}


class SiteStatisticsFilter(StatisticsPrivacyFilter):
    """NVFLARE's statistics privacy filter: what the approved spec names, caia's withholding and
    NVFLARE's cleansers, all with the site's thresholds (the release's, which the guard read from
    the site directory) and the release's spec, never the server's task."""

    def __init__(self):
        super().__init__(result_cleanser_ids=[])
        self.cleansers = None

    def process_dxo(self, dxo, shareable, fl_ctx):
        if self.cleansers is None:  # one job: its first task's min and max bound its second's histogram ranges
            release = Release.read(fl_ctx.get_prop(FLContextKey.APP_ROOT))
            self.cleansers = _Cleansers(Thresholds(**release.statistics["thresholds"]),
                                        StatisticsSpec.model_validate(release.statistics["spec"]), release.statistics["noise_seed"],
                                        taken_ranges(Path(release.statistics["ranges"]), release.bundle_id),
                                        fl_ctx.get_engine().get_component(GENERATOR_ID).data)
        return super().process_dxo(dxo, shareable, fl_ctx)

    def get_cleansers(self, result_checker_ids, fl_ctx) -> list:
        return [self.cleansers]


class _Cleansers:
    """`withhold`, `restrict` to the spec, NVFLARE's cleansers in turn (its noise on extremes by
    `noisy_extremes`, from `noise_seed`), then the spec's histogram ranges as the min/max NVFLARE needs for them. `sent`:
    (dataset, feature) -> the [min, max] this site sent, which a histogram range the spec does not
    fix must hold; `taken`: `taken_ranges`, which such a range must also pass (None: none does);
    `data`: the frames described (`CaiaStatistics.data`), whose own min and max are the ones sent
    (`own_extremes`; None: those in the statistics are)."""

    def __init__(self, thresholds: Thresholds, spec: StatisticsSpec, noise_seed: str,
                 taken: Callable[[str, str, float, float], bool] | None = None,
                 data: dict[str, pd.DataFrame] | None = None):
        self.thresholds = thresholds
        self.spec = spec
        self.noise_seed = noise_seed
        self.taken = taken
        self.data = data
        self.sent: dict[tuple[str, str], list[float]] = {}

    def apply(self, statistics: dict, client_name: str) -> tuple[dict, bool]:
        t = self.thresholds
        withhold(statistics, t, self.spec)  # first: it reads every missing count, released or not
        restrict(statistics, self.spec, self.sent, self.taken)
        if self.data is not None:
            own_extremes(statistics, self.data)
        # NVFLARE's cleansers count `count - failure_count`; caia's count is already the values present
        view = {**statistics, StC.STATS_FAILURE_COUNT: {ds: {f: 0 for f in counts}
                                                        for ds, counts in statistics.get(StC.STATS_COUNT, {}).items()}}
        for cleanser in (MinCountCleanser(min_count=t.min_count), HistogramBinsCleanser(max_bins_percent=t.max_bins_percent)):
            view, _ = cleanser.apply(view, client_name)
        if t.extremes:
            noisy_extremes(view, t, self.noise_seed, client_name)
        spec_ranges(statistics, self.spec)
        for ds, features in statistics.get(StC.STATS_MIN, {}).items():
            for feature, low in features.items():
                high = statistics.get(StC.STATS_MAX, {}).get(ds, {}).get(feature)
                if high is not None:
                    self.sent[ds, feature] = [low, high]
        return statistics, True


def own_extremes(statistics: dict, data: dict[str, pd.DataFrame]) -> None:
    """Set each min and max in `statistics` to its feature's own in `data` (dataset -> frame), in
    place: NVFLARE's executor sends a histogram range of the server's config as the site's min and
    max, and noise seeded by the value would then answer the noisy value of any number the server
    picks, so a guess matching the site's real noisy extreme would be it."""
    for key, extreme in ((StC.STATS_MIN, pd.Series.min), (StC.STATS_MAX, pd.Series.max)):
        for ds, features in statistics.get(key, {}).items():
            for feature in features:
                features[feature] = float(extreme(data[ds][feature]))


def allowed_statistics(spec: StatisticsSpec) -> set[str]:
    """NVFLARE's statistic names a site may send for `spec`: count, those it names, and what NVFLARE
    pools them from (sum for a mean or standard deviation, var for the latter, min/max for a
    histogram's range)."""
    asked = {StC.STATS_COUNT, *spec.statistics}
    needs = {StC.STATS_MEAN: {StC.STATS_SUM}, StC.STATS_STDDEV: {StC.STATS_SUM, StC.STATS_VAR},
             StC.STATS_HISTOGRAM: {StC.STATS_MIN, StC.STATS_MAX}}
    return asked.union(*(needs.get(name, set()) for name in asked))


def restrict(statistics: dict, spec: StatisticsSpec, sent: dict[tuple[str, str], list[float]],
             taken: Callable[[str, str, float, float], bool] | None = None) -> int:
    """Remove from `statistics` (NVFLARE's statistic -> dataset -> feature -> value) whatever the
    approved `spec` does not name, whatever the server's task asked: other statistics, other
    features, any statistic but count of a category indicator, a histogram with other bins or, when
    the spec fixes a range, another range, or, when it does not, a range that does not hold the
    [min, max] this site sent (`sent`: (dataset, feature) -> them; NVFLARE's agreed range holds every
    site's) or that `taken` (`taken_ranges`; None: none) refuses, and other quantiles. Each is logged at the site. Returns how many values it removed."""
    allowed = allowed_statistics(spec)
    columns = set(spec.columns)
    indicators = set(spec.features()) - columns
    removed = 0
    for statistic, by_dataset in statistics.items():
        for ds, features in by_dataset.items():
            for feature in list(features):
                value = features[feature]
                keep = statistic in allowed and (feature in columns or (feature in indicators and statistic == StC.STATS_COUNT))
                if keep and statistic == StC.STATS_HISTOGRAM:
                    keep = _as_asked(value, spec.histograms.get(feature), sent.get((ds, feature)),
                                     taken and (lambda low, high: taken(ds, feature, low, high)))
                if keep and statistic == StC.STATS_QUANTILE:
                    asked = {q: v for q, v in value.get(StC.STATS_QUANTILE, {}).items()
                             if any(math.isclose(q, a) for a in spec.quantiles)}
                    if len(asked) < len(value.get(StC.STATS_QUANTILE, {})):
                        logger.warning("statistics: quantiles of %r in %r not in the approved request; not released", feature, ds)
                    value[StC.STATS_QUANTILE] = asked
                if not keep:
                    del features[feature]
                    removed += 1
                    if feature not in indicators or statistic not in allowed:  # NVFLARE computes all of an indicator
                        logger.warning("statistics: %s of %r in %r is not in the approved request; not released",
                                       statistic, feature, ds)
    return removed


def taken_ranges(file: Path, bundle_id: str) -> Callable[[str, str, float, float], bool]:
    """taken(dataset, feature, low, high): whether [low, high) is the histogram range the first run of
    bundle `bundle_id` took at this site, where the spec leaves the range to NVFLARE, recording it on
    that first run in `file` (the site's RANGES_FILE). The server is the researcher's: other edges in
    a later run would release counts whose difference is the count between two edges. NVFLARE's
    agreed range is the same in every run of a bundle (the sites' noise on min and max is), so a
    later run with the same sites passes. Jobs at once take turns (an exclusive `flock` on the site
    directory), so two first runs cannot both take a range; a file the site cannot read takes none
    (False), as forgetting the ranges would let the next run take another."""

    def taken(dataset: str, feature: str, low: float, high: float) -> bool:
        name = f"{bundle_id} {dataset} {feature}"
        with locked(file.parent):
            ranges = read_ranges(file)
            if ranges is None:
                logger.warning("statistics: %s cannot be read; no histogram range taken", file.name)
                return False
            if name not in ranges:
                write_json(file, {**ranges, name: [low, high]})
                return True
        return all(math.isclose(a, b) for a, b in zip(ranges[name], (low, high)))

    return taken


def read_ranges(file: Path) -> dict | None:
    """The ranges file's object: {} when it does not exist, None when it cannot be read or is no object."""
    try:
        found = loads_strict(file.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None


@contextmanager
def locked(directory: Path):
    """An exclusive `flock` on `directory` inside the block (other processes and threads wait)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _as_asked(histogram, asked, sent: list[float] | None, taken: Callable[[float, float], bool] | None) -> bool:
    """Whether a histogram has the spec's bins and range, when the spec fixes one, or else a range
    holding `sent`, the min and max this site sent (None: it sent none, so no range is agreed), that
    `taken` (the bundle's pinned range at this site, checked last as it records a first one; None:
    none) accepts."""
    if asked is None or len(histogram.bins) != asked.bins:
        return False
    low, high = histogram.bins[0].low_value, histogram.bins[-1].high_value
    if asked.range is not None:
        return math.isclose(low, asked.range[0]) and math.isclose(high, asked.range[1])
    return sent is not None and low <= sent[0] and high >= sent[1] and taken is not None and taken(low, high)


def withhold(statistics: dict, thresholds: Thresholds, spec: StatisticsSpec) -> int:
    """Remove from `statistics` what would reveal a number between 0 and the minimum count, directly
    or by subtraction from what is released:

    - every statistic of a column with fewer values than the minimum, or with a missing count
      between 0 and the minimum (its count, N - missing, would reveal it);
    - a category's count, and a histogram's bin (sent as SUPPRESSED_BIN, NaN), that `complementary`
      suppresses: the small ones and enough others that none can be recovered from the released
      ones and the total (the remainder, rows in no declared category or out of the histogram's
      range, is never sent; a zero bin too when the spec fixes no range, as the server chose its
      edges); the indicators' failure_count (N - count) is never sent;
    - a quantile q with min(q, 1 - q) x count below the minimum; the t-digest sent is `coarse`;
    - for a site that sends no extremes, every min and max (`spec_ranges` puts back a spec's range).

    Returns how many values it removed (a suppressed bin counts one)."""
    small = lambda n: 0 < n < thresholds.min_count  # noqa: E731
    counts = statistics.get(StC.STATS_COUNT, {})
    missing = statistics.get(StC.STATS_FAILURE_COUNT, {})
    removed = 0
    for ds, features in list(counts.items()):
        gone = {c for c in spec.columns if c in features
                and (features[c] < thresholds.min_count or small(missing.get(ds, {}).get(c, 0)))}
        for column, categories in spec.categories.items():
            names = [category_feature(column, c) for c in categories]
            present = [features.get(n) for n in names]
            if None in present:
                gone.update(names)
                continue
            rows = present[0] + missing.get(ds, {}).get(names[0], 0)  # every row: in a category or not
            hidden = complementary(present, rows - sum(present), thresholds.min_count)
            gone.update(names if hidden is None else (names[i] for i in hidden))
        for by_dataset in statistics.values():
            for feature in gone & set(by_dataset.get(ds, {})):
                del by_dataset[ds][feature]
                removed += 1
        for name in set(spec.features()) - set(spec.columns):
            removed += missing.get(ds, {}).pop(name, None) is not None
    for ds, features in statistics.get(StC.STATS_HISTOGRAM, {}).items():
        for feature, histogram in list(features.items()):
            sizes = [b.sample_count for b in histogram.bins]
            count = counts.get(ds, {}).get(feature)
            agreed = feature not in spec.histograms or spec.histograms[feature].range is None  # edges the server chose
            hidden = None if count is None else complementary(sizes, count - sum(sizes), thresholds.min_count, zeros=agreed)
            if hidden is None:
                del features[feature]
                removed += 1
            elif hidden:
                features[feature] = Histogram(histogram.hist_type, [
                    Bin(b.low_value, b.high_value, SUPPRESSED_BIN if i in hidden else b.sample_count)
                    for i, b in enumerate(histogram.bins)], histogram.hist_name)
                removed += len(hidden)
    for ds, features in statistics.get(StC.STATS_QUANTILE, {}).items():
        for feature, answer in list(features.items()):
            count = counts.get(ds, {}).get(feature)
            if count is None:
                del features[feature]
                removed += 1
                continue
            kept = {q: v for q, v in answer.get(StC.STATS_QUANTILE, {}).items() if min(q, 1 - q) * count >= thresholds.min_count}
            removed += len(answer.get(StC.STATS_QUANTILE, {})) - len(kept)
            answer[StC.STATS_QUANTILE] = kept
            if answer.get(StC.STATS_DIGEST_COORD):
                answer[StC.STATS_DIGEST_COORD] = coarse(answer[StC.STATS_DIGEST_COORD], thresholds.min_count)
    if not thresholds.extremes:
        for key in (StC.STATS_MIN, StC.STATS_MAX):  # emptied, not dropped: NVFLARE expects each site to answer
            for features in statistics.get(key, {}).values():
                removed += len(features)
                features.clear()
    return removed


def complementary(cells: list[float], remainder: float, min_count: int, zeros: bool = False) -> set[int] | None:
    """Cell suppression with complementary suppression, for counts whose total is released (a
    histogram's bins or a column's category counts; `remainder` = total - sum(cells) is never sent).

    Primary: every cell with 0 < count < min_count (the remainder too), and with `zeros` every cell
    of 0 as well. Secondary: while the hidden cells (the suppressed ones and the remainder) hold
    fewer than min_count values, or fewer than two of them hold any (so total - released would give
    a small one exactly), also suppress the smallest remaining non-zero cell, the nearest to a
    suppressed one on a tie. Without `zeros`, zeros are released as such.

    Returns the indices of `cells` to suppress (empty: release all), or None when no suppression
    protects them (withhold all)."""
    small = lambda n: 0 < n < min_count  # noqa: E731
    hidden = {i for i, n in enumerate(cells) if small(n) or (zeros and n == 0)}
    if not hidden and not small(remainder):
        return set()

    def safe():
        values = [remainder, *(cells[i] for i in hidden)]
        return sum(values) >= min_count and sum(n > 0 for n in values) >= 2

    while not safe():
        near = hidden or {-1, len(cells)}  # the remainder lies beyond both ends
        left = [i for i, n in enumerate(cells) if n > 0 and i not in hidden]
        if not left:
            return None
        hidden.add(min(left, key=lambda i: (cells[i], min(abs(i - j) for j in near))))
    return hidden


def coarse(digest: dict, min_count: int) -> dict:
    """A t-digest (fastdigest's `to_dict`) whose adjacent centroids are merged so each summarizes at
    least `min_count` values (their weighted mean), and whose min/max are its first and last
    centroid's mean, never a value of the data."""
    groups: list[list[float]] = []  # [sum of values, weight]
    for centroid in digest.get("centroids", []):
        if groups and groups[-1][1] < min_count:
            groups[-1][0] += centroid["m"] * centroid["c"]
            groups[-1][1] += centroid["c"]
        else:
            groups.append([centroid["m"] * centroid["c"], centroid["c"]])
    if len(groups) > 1 and groups[-1][1] < min_count:
        total, weight = groups.pop()
        groups[-1][0] += total
        groups[-1][1] += weight
    centroids = [{"m": total / weight, "c": weight} for total, weight in groups]
    if not centroids:
        return {}
    return {**digest, "centroids": centroids, "min": centroids[0]["m"], "max": centroids[-1]["m"]}


def spec_ranges(statistics: dict, spec: StatisticsSpec) -> None:
    """Set the min/max NVFLARE agrees a histogram's range from to the spec's range, for each column
    whose histogram the spec fixes one (also for a site that sends no extremes: the number is the
    request's, not the data's)."""
    for key, side in ((StC.STATS_MIN, 0), (StC.STATS_MAX, 1)):
        for ds, features in statistics.get(key, {}).items():
            for column, asked in spec.histograms.items():
                if asked.range is not None and column in statistics.get(StC.STATS_COUNT, {}).get(ds, {}):
                    features[column] = float(asked.range[side])


def add_statistics_app(job, site: str) -> None:
    """The client side of a statistics job (NVFLARE's FedJob): NVFLARE's StatisticsExecutor over
    `CaiaStatistics`, results through `SiteStatisticsFilter`."""
    from nvflare.app_common.executors.statistics.statistics_executor import StatisticsExecutor
    from nvflare.job_config.defs import FilterType

    generator = job.to(CaiaStatistics(), site, id=GENERATOR_ID)
    job.to(StatisticsExecutor(generator_id=generator, precision=PRECISION), site, tasks=list(STATISTICS_TASKS))
    job.to(SiteStatisticsFilter(), site, filter_type=FilterType.TASK_RESULT, tasks=[STATISTICS_TASKS[1]])


def export_statistics_config() -> dict:
    """The statistics client config NVFLARE's FedJob API writes for `add_statistics_app`."""
    from nvflare.job_config.api import FedJob

    job = FedJob(name="caia")
    add_statistics_app(job, "site")
    with tempfile.TemporaryDirectory() as out:
        job.export_job(out)
        return canonical(json.loads((Path(out) / "caia" / "app_site" / "config" / "config_fed_client.json").read_text()))


def write_statistics_config() -> None:
    """Write `client_app.STATISTICS_CONFIG_FILE` afresh (after an NVFLARE upgrade changes it)."""
    STATISTICS_CONFIG_FILE.write_text(json.dumps(export_statistics_config(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
