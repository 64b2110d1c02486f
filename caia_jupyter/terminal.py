"""What a command shows on a terminal: its outcome, and a run followed round by round.

The CLI, the kernel's `%federated` (in a non-interactive kernel) and `caia demo` show runs alike.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field

from .researcher.wording import metric, plural

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass
class Outcome:
    value: object  # what the kernel's magic returns
    text: str  # what the terminal shows; a bundle id, when there is one, is the last line
    data: dict = field(default_factory=dict)  # what --json prints
    exit_code: int = 0


def follow(run, out=None, poll: float = 0.5) -> None:
    """Print a run's progress until it ends: a progress bar on a terminal, a line per round, per site."""
    from .researcher.runs import FINAL  # here: the CLI starts without pandas

    out = out or sys.stdout
    clear = "\r\033[K" if out.isatty() else ""  # a progress bar line is there to overwrite
    printed = -1
    while True:
        status = run.status
        done, total = run.progress
        frame = run.metrics()
        for round in sorted(set(frame["round"])):
            if printed < round < done or (status in FINAL and round > printed):
                rows = frame[(frame["round"] == round) & (frame["name"] != "num_samples")]
                cells = "  ".join(f"{site}: " + " ".join(f"{n}={metric(v)}" for n, v in sorted(zip(g["name"], g["value"])))
                                  for site, g in rows.groupby("site"))
                label = "final model" if round == total else f"round {round}"  # as ctx.round and the tables count
                print(f"{clear}{label:>12}  {cells}", file=out, flush=True)
                printed = round
        if status in FINAL:
            return
        if clear:
            filled = int(20 * done / max(total, 1))
            states = " ".join(f"{site}:{state}" for site, state in run.sites.items())
            out.write(f"{clear}[{'#' * filled}{'.' * (20 - filled)}] {done}/{plural(total, 'round')}  {status}  {states}")
            out.flush()
        time.sleep(poll)


def run_summary(run) -> Outcome:
    sites = run.sites
    lines = [f"run {run.path}: {run.status}" + (f" ({run.message})" if run.message else ""),
             *([f"  bundle {run.bundle_id}"] if run.bundle_id else []), f"  {run.headline}"]
    for site, state in sites.items():
        reason = run.refusals.get(site) or run.failures.get(site) or ""
        lines.append(f"  {site}: {state}" + (f": {reason}" if reason else ""))
    lines += [f"  note: {note}" for note in run.notes]
    final = run.final_metrics() if run.status == "finished" else {"sites": {}, "global": {}}
    if final["global"]:
        shown = ", ".join(f"{k}={metric(v)}" for k, v in final["global"].items() if k != "num_samples")
        lines.append(f"final global model: {shown} (site evaluations weighted by num_samples)")
    model, guarantee, guarantee_file = run.global_model, run.guarantee, run.guarantee_file
    if model:
        lines.append(f"global model: {model}" + (f" (its guarantee: {guarantee_file})" if guarantee_file else ""))
    if guarantee:
        lines.append(guarantee_line(guarantee))
    data = {"run": str(run.path), "bundle_id": run.bundle_id or None, "status": run.status, "message": run.message,
            "headline": run.headline, "sites": sites,
            "refusals": run.refusals, "failures": run.failures, "notes": run.notes, "final_metrics": final,
            "global_model": str(model) if model else None, "guarantee": guarantee,
            "guarantee_file": str(guarantee_file) if guarantee_file else None}
    return Outcome(run, "\n".join(lines), data, exit_code=0 if run.status in ("finished", "running", "starting") else 1)


def guarantee_line(guarantee: dict) -> str:
    """`Run.guarantee` as one line: "guarantee: DP-SGD, (epsilon 3, delta 1e-05) per site; spent: site-1 2.91, site-2 2.87"."""
    spent = ", ".join(f"{site} {metric(value)}" for site, value in guarantee["epsilon_spent"].items()) or "none reported"
    return (f"guarantee: {str(guarantee['mechanism']).upper()}, (epsilon {metric(guarantee['epsilon'])}, "
            f"delta {metric(guarantee['delta'])}) per site; spent: {spent}")


def runs_table(runs: list[dict]) -> str:
    """`overview.runs` as a text table, one run a line: started, short id, target, status, duration,
    the global final metrics, and the headline (long lines are the terminal's to wrap)."""
    if not runs:
        return "no runs"
    rows = [("STARTED", "BUNDLE", "TARGET", "STATUS", "TIME", "GLOBAL", "HEADLINE")]
    for entry in runs:
        overall = " ".join(f"{name}={metric(value)}" for name, value in entry["global"].items() if name != "num_samples")
        took = "live" if entry["duration_s"] is None and entry["status"] in ("starting", "running") else (
            f"{entry['duration_s']:.0f} s" if entry["duration_s"] is not None else "-")
        rows.append((entry["started_at"] or "-", entry["short_id"] or "-", entry["target"] or "-", entry["status"],
                     took, overall or "-", entry["headline"]))
    return table(rows)


def audit_table(records: list[dict]) -> str:
    """A site's audit records (`site.audit.verify`) as a text table, one record a line: seq, time,
    event, bundle short id, key id, outcome and reason, each `escaped`."""
    if not records:
        return "no audit records"
    rows = [("SEQ", "TIME", "EVENT", "BUNDLE", "KEY", "OUTCOME", "REASON")]
    rows += [tuple(map(escaped, (str(r["seq"]), r["time"], r["event"], r["bundle_id"].removeprefix("sha256:")[:12] or "-",
                                 r["key_id"] or "-", r["outcome"], r["reason"]))) for r in records]
    return table(rows)


def escaped(text: str) -> str:
    """`text` with each control character (C0, DEL, C1, line and paragraph separators) and each
    bidirectional control shown as its Python escape ("\\n", "\\x1b", "\\u202e"), never raw: text
    read from a site's files cannot move the cursor, hide or recolour what a terminal shows."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows of text cells as aligned columns; the last column is left as long as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)
