"""A site's audit log: reviewers' approvals, revocations and rejections and the guard's admissions and
refusals are recorded, hash-chained; `caia site audit` names each record edited, deleted or moved,
a truncated tail given the earlier head, and malformed lines; concurrent writers keep one chain."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from caia_jupyter.contracts.errors import CaiaError
from caia_jupyter.contracts.manifest import canonical
from caia_jupyter.researcher import compose
from caia_jupyter.reviewer import signing
from caia_jupyter.site import audit
from caia_jupyter.site.approvals import read_rejection
from caia_jupyter.site.guard import Refusal, admit
from caia_jupyter.site.keys import key_id, load_private_key
from caia_jupyter.site.release import RELEASE
from caia_jupyter.targets.job import build_job
from caia_jupyter.terminal import audit_table
from conftest import REPO, approve, make_site, reviewer_key
import corpus


@pytest.fixture(scope="module")
def built_job(tmp_path_factory):
    """The good corpus bundle and a real NVFLARE job of it for site-1 (FedJob's own layout)."""
    root = tmp_path_factory.mktemp("audit")
    built = compose.build(corpus.write("good", root / "nb"))
    job = build_job(built, ["site-1"], root / "job", name="caia-audit")
    return built, job / "app_site-1"


@pytest.fixture
def app(built_job, tmp_path):
    return shutil.copytree(built_job[1], tmp_path / "app", symlinks=True)


@pytest.fixture
def history(built_job, app, tmp_path, caia):
    """A site whose log holds: 1 approval, 2 admission, 3 rejection, 4 revocation, 5 refusal."""
    built, _ = built_job
    site = make_site(tmp_path / "sites", "site-1")
    approve(site, built.id, {"tiny": "tiny"})
    admit(app, site.path)
    code, _, err = caia("reject", built.path, "--site", site.path, "--key", reviewer_key(site),
                        "--reason", "it prints every row of the table")
    assert code == 0, err
    signing.revoke(site, built.id, reviewer_key(site), "approved by mistake")
    (app / RELEASE).unlink()  # deployed afresh
    with pytest.raises(Refusal):
        admit(app, site.path)
    return site


def log_lines(site) -> list[str]:
    return audit.audit_file(site).read_text().splitlines()


def write_lines(site, lines: list[str]) -> None:
    audit.audit_file(site).write_text("".join(f"{line}\n" for line in lines))


def test_approvals_revocations_rejections_admissions_and_refusals_are_recorded(history, built_job, caia):
    built, _ = built_job
    kid = key_id(load_private_key(reviewer_key(history)).public_key())
    records, problems = audit.verify(history)
    assert problems == []
    assert [(r["seq"], r["event"], r["outcome"]) for r in records] == [
        (1, "approval", "signed"), (2, "admission", "admitted"), (3, "rejection", "signed"),
        (4, "revocation", "signed"), (5, "refusal", "refused")]
    assert all(r["bundle_id"] == built.id for r in records)
    assert [r["key_id"] for r in records] == [kid, kid, kid, kid, None]
    assert records[0]["reason"].startswith("releases tiny=tiny until ")
    assert records[2]["reason"] == "it prints every row of the table"
    assert records[3]["reason"] == "approved by mistake"
    assert records[4]["reason"].startswith(f"site-1 refused bundle {built.id}: ") and "revoked" in records[4]["reason"]
    assert records[0]["prev"] == audit.GENESIS
    for before, after in zip(log_lines(history), records[1:]):
        assert after["prev"] == hashlib.sha256(before.encode()).hexdigest()

    code, out, _ = caia("site", "audit", history.path)
    assert code == 0
    head = hashlib.sha256(log_lines(history)[-1].encode()).hexdigest()
    assert f"head: {head}" in out and "intact: 5 records" in out
    row = next(line for line in out.splitlines() if line.startswith("3 "))
    assert row.split()[1:6] == [records[2]["time"], "rejection", built.short_id, kid, "signed"]
    assert row.endswith("it prints every row of the table")

    code, out, _ = caia("site", "audit", history.path, "--json")
    data = json.loads(out)
    assert code == 0 and data["intact"] and data["problems"] == [] and data["head"] == head
    assert data["records"] == records


def test_a_rejection_is_a_signed_statement_the_site_can_check(history, built_job):
    (file,) = history.rejections_dir.glob("*.json")
    rejection = read_rejection(file, history)
    assert (rejection.bundle_id, rejection.reason) == (built_job[0].id, "it prints every row of the table")
    statement = json.loads(file.read_text())
    statement["statement"]["reason"] = "fine after all"
    file.write_text(json.dumps(statement))
    with pytest.raises(Exception, match="does not match its content"):
        read_rejection(file, history)


def test_a_rejection_needs_a_reason_and_a_bundle_id(history, built_job, caia):
    code, _, err = caia("reject", built_job[0].id, "--site", history.path, "--key", reviewer_key(history), "--reason", " ")
    assert code == 2 and "needs a reason" in err
    for short in ("sha256:" + built_job[0].id[7:19], built_job[0].id[7:19]):
        code, _, err = caia("reject", short, "--site", history.path, "--key", reviewer_key(history), "--reason", "no")
        assert code == 2 and err.count("\n") == 1
        assert "is neither a bundle folder nor a whole bundle id" in err and "sha256: and 64 hex digits" in err
    assert len(log_lines(history)) == 5


@pytest.mark.parametrize("reason", ["first line\nsecond line", "a\rb", "bell\x07", "tab\there"])
def test_a_rejection_reason_is_one_line_of_printable_text(history, built_job, caia, reason):
    code, _, err = caia("reject", built_job[0].id, "--site", history.path, "--key", reviewer_key(history), "--reason", reason)
    assert code == 2 and err.count("\n") == 1 and "one line of printable text" in err
    with pytest.raises(CaiaError, match="one line of printable text"):
        signing.reject(history, built_job[0].id, reviewer_key(history), reason)
    assert len(log_lines(history)) == 5 and len(list(history.rejections_dir.glob("*.json"))) == 1


def test_rejecting_a_bundle_whose_approval_is_in_force_says_how_to_revoke_it(built_job, tmp_path, caia):
    built, _ = built_job
    site = make_site(tmp_path / "sites", "site-1")
    approval = approve(site, built.id, {"tiny": "tiny"})
    key = reviewer_key(site)
    code, out, _ = caia("reject", built.id, "--site", site.path, "--key", key, "--reason", "on second thought")
    assert code == 0
    assert (f"the approval by key {approval.key_id} still counts until {approval.to_json()['expires_at']}: a rejection "
            f"is a record, not a gate; to withdraw the approval: caia revoke {built.id} --site {site.path} --key {key}") in out
    code, out, _ = caia("reject", built.id, "--site", site.path, "--key", key, "--reason", "again", "--json")
    assert code == 0 and json.loads(out)["approval_in_force"]["key_id"] == approval.key_id
    signing.revoke(site, built.id, key)
    code, out, _ = caia("reject", built.id, "--site", site.path, "--key", key, "--reason", "and once more")
    assert code == 0 and "still counts" not in out


def edit_reason(lines):
    record = json.loads(lines[1])
    record["reason"] = "nothing to see"
    return [lines[0], json.dumps(record, sort_keys=True, separators=(",", ":")), *lines[2:]]


def edit_and_rehash(lines):
    record = json.loads(lines[1])
    record["reason"] = "nothing to see"
    del record["hash"]
    record["hash"] = hashlib.sha256(canonical(record)).hexdigest()
    return [lines[0], canonical(record).decode(), *lines[2:]]


TAMPERING = {  # readable name -> (change to the log's lines, what `caia site audit` names)
    "edit-a-past-record": (edit_reason, "record 2 was edited"),
    "edit-a-past-record-and-its-hash": (edit_and_rehash, "record 2 was edited or replaced (record 3 does not chain to it)"),
    "reformat-a-past-record": (lambda ls: [ls[0], json.dumps(json.loads(ls[1])), *ls[2:]], "record 2 was edited"),
    "delete-a-past-record": (lambda ls: [ls[0], *ls[2:]], "record 2 is missing (deleted)"),
    "delete-the-first-records": (lambda ls: ls[2:], "records 1 to 2 are missing (deleted)"),
    "reorder-two-records": (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "records 2 and 3 are out of order"),
    "replay-a-record": (lambda ls: [*ls, ls[1]], "record 2 appears more than once"),
}


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_with_a_past_record_is_detected_and_named(history, caia, name):
    change, named = TAMPERING[name]
    write_lines(history, change(log_lines(history)))
    code, out, _ = caia("site", "audit", history.path)
    assert code == 1
    assert "AUDIT LOG BROKEN at site-1:" in out and named in out, out
    assert "head:" not in out and "its head hash is not worth keeping" in out
    data = json.loads(caia("site", "audit", history.path, "--json")[1])
    assert not data["intact"] and any(named in p for p in data["problems"])


def test_deleting_the_last_records_is_seen_only_with_the_earlier_head(history, caia):
    head = json.loads(caia("site", "audit", history.path, "--json")[1])["head"]
    write_lines(history, log_lines(history)[:3])
    assert caia("site", "audit", history.path)[0] == 0, "a truncated chain is still a chain"
    code, out, _ = caia("site", "audit", history.path, "--head", head)
    assert code == 1
    assert f"the log no longer holds head {head[:12]}…: the records after record 3 were deleted" in out


def test_an_earlier_head_still_held_passes_as_the_log_grows(history, caia):
    head = json.loads(caia("site", "audit", history.path, "--json")[1])["head"]
    audit.record(history, "refusal", "", None, "refused", "another")
    code, out, _ = caia("site", "audit", history.path, "--head", head)
    assert code == 0 and f"head {head} found: nothing was deleted before it" in out
    code, out, _ = caia("site", "audit", history.path)
    assert code == 0 and "found: nothing was deleted" not in out
    assert caia("site", "audit", history.path, "--head", audit.GENESIS)[0] == 0
    code, _, err = caia("site", "audit", history.path, "--head", "abc")
    assert code == 2 and "is not a head hash" in err


MALFORMED = {  # readable name -> (the line, why)
    "not-json": (b"{not json", "not JSON"),
    "not-utf8": (b'{"reason": "\xc3\x28"}', "not UTF-8"),
    "a-list": (b"[1, 2]", "not an object with exactly the fields"),
    "an-extra-field": (None, "not an object with exactly the fields"),
    "seq-a-string": (None, "seq is not valid"),
    "seq-a-bool": (None, "seq is not valid"),
    "unknown-event": (None, "event is not one of approval"),
    "reason-a-number": (None, "reason is not valid"),
    "prev-not-hex": (None, "prev is not valid"),
    "time-without-zone": (None, "time is not valid"),
    "huge-line": (b"x" * (audit.MAX_LINE * 4), f"longer than {audit.MAX_LINE} bytes"),
    "deeply-nested": (b"[" * 8000, "not JSON"),
}
EDITS = {"an-extra-field": {"extra": 1}, "seq-a-string": {"seq": "2"}, "seq-a-bool": {"seq": True},
         "unknown-event": {"event": "coffee"}, "reason-a-number": {"reason": 5}, "prev-not-hex": {"prev": "zz"},
         "time-without-zone": {"time": "2026-01-01T00:00:00"}}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_line_is_named_and_the_rest_is_still_read(history, caia, name):
    line, why = MALFORMED[name]
    lines = log_lines(history)
    if line is None:
        line = json.dumps({**json.loads(lines[1]), **EDITS[name]}).encode()
    with audit.audit_file(history).open("wb") as f:
        f.write(b"".join(f"{x}\n".encode() for x in lines[:2]) + line + b"\n" + b"".join(f"{x}\n".encode() for x in lines[2:]))
    code, out, _ = caia("site", "audit", history.path, "--json")
    data = json.loads(out)
    assert code == 1
    assert any(p.startswith(f"line 3 is malformed ({why}") for p in data["problems"]), data["problems"]
    assert [r["seq"] for r in data["records"]] == [1, 2, 3, 4, 5]
    assert len(out) < 20000


def test_a_line_cut_short_by_a_crash_is_named_and_the_chain_goes_on_after_it(history):
    with audit.audit_file(history).open("ab") as f:
        f.write(b'{"seq": 6, "tim')
    entry = audit.record(history, "refusal", "", None, "refused", "after the crash")
    records, problems = audit.verify(history)
    assert entry["seq"] == 6 and entry["prev"] == hashlib.sha256(log_lines(history)[4].encode()).hexdigest()
    assert problems == ["line 6 is malformed (not JSON)"]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_a_records_text_is_one_bounded_line(history):
    entry = audit.record(history, "refusal", "sha256:x\nforged", None, "refused", "a\nb\r\x1b[8m" + "x" * 5000)
    assert entry["reason"].startswith("a b [8mxxx") and len(entry["reason"]) == audit.MAX_TEXT
    assert entry["bundle_id"] == "sha256:x forged"
    assert len(log_lines(history)) == 6 and audit.verify(history)[1] == []
    with pytest.raises(Exception, match="is not one of"):
        audit.record(history, "deletion", "", None, "done")


def test_the_log_is_never_written_through_a_link_and_admission_then_fails_closed(built_job, app, tmp_path):
    built, _ = built_job
    site = make_site(tmp_path / "sites", "site-1")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("")
    audit.audit_file(site).symlink_to(elsewhere)
    with pytest.raises(Exception, match="cannot open its audit log audit.jsonl"):
        approve(site, built.id, {"tiny": "tiny"})
    assert list(site.approvals_dir.glob("*.json")) == [], "an approval stayed without its record"
    audit.audit_file(site).unlink()
    approve(site, built.id, {"tiny": "tiny"})
    audit.audit_file(site).rename(tmp_path / "kept.jsonl")
    audit.audit_file(site).symlink_to(elsewhere)
    with pytest.raises(Refusal, match="site-1 refused bundle .*: its guard could not write the site's audit log"):
        admit(app, site.path)
    assert not (app / RELEASE).exists()
    assert elsewhere.read_text() == ""
    records, problems = audit.verify(site)
    assert records == [] and problems == ["audit.jsonl cannot be read (Too many levels of symbolic links); it must be a plain file, not a link"]


def test_a_statement_written_outside_the_site_is_not_yet_recorded(history, built_job, tmp_path):
    signing.reject(history, built_job[0].id, reviewer_key(history), "later", output=tmp_path / "rejection.json")
    assert (tmp_path / "rejection.json").exists() and len(log_lines(history)) == 5


WRITER = """
import sys
from caia_jupyter.site import audit, sites
site = sites.open_site(sys.argv[1])
for i in range(int(sys.argv[2])):
    audit.record(site, "refusal", "", None, "refused", f"writer {sys.argv[3]} record {i}")
"""


def test_concurrent_writers_keep_one_valid_chain(tmp_path):
    site = make_site(tmp_path / "sites", "site-1")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(site.path), "40", str(n)], env=env) for n in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    records, problems = audit.verify(site)
    assert problems == []
    assert [r["seq"] for r in records] == list(range(1, 161))
    assert sorted(r["reason"] for r in records) == sorted(f"writer {n} record {i}" for n in range(4) for i in range(40))


DISGUISE = "r1\nhead: " + "0" * 64 + "\nintact: 3 records, hash-chained\x1b[8m"  # hides the rest of a terminal's output


@pytest.mark.parametrize("rehash", [False, True], ids=["edited", "edited-and-rehashed"])
def test_a_record_whose_text_holds_control_characters_is_named_and_never_printed_raw(history, caia, rehash):
    lines = log_lines(history)
    record = json.loads(lines[1])
    record["reason"] = DISGUISE
    if rehash:
        del record["hash"]
        record["hash"] = hashlib.sha256(canonical(record)).hexdigest()
    write_lines(history, [lines[0], canonical(record).decode(), *lines[2:]])
    records, problems = audit.verify(history)
    assert "line 2 is malformed (reason holds control characters, which caia never writes)" in problems
    assert 2 not in [r["seq"] for r in records]
    code, out, _ = caia("site", "audit", history.path)
    assert code == 1 and "AUDIT LOG BROKEN at site-1:" in out and "\x1b" not in out
    assert not any(line.startswith(("head: 0000", "intact:")) for line in out.splitlines())


def test_the_audit_table_shows_control_characters_escaped():
    record = {"seq": 1, "time": "2026-01-01T00:00:00Z", "event": "refusal", "bundle_id": "sha256:ab\u202e",
              "key_id": None, "outcome": "refused", "reason": DISGUISE}
    shown = audit_table([record])
    assert len(shown.splitlines()) == 2 and "\x1b" not in shown and "\u202e" not in shown
    assert shown.endswith("r1\\nhead: " + "0" * 64 + "\\nintact: 3 records, hash-chained\\x1b[8m")
    assert "ab\\u202e" in shown


def forge_last_record(site, **fields):
    """Append a record whose fields are `fields`, correctly hashed and chained: a forgery by whoever can write the log."""
    lines = log_lines(site)
    entry = {**json.loads(lines[-1]), "prev": hashlib.sha256(lines[-1].encode()).hexdigest(), **fields}
    del entry["hash"]
    entry["hash"] = hashlib.sha256(canonical(entry)).hexdigest()
    write_lines(site, [*lines, canonical(entry).decode()])


@pytest.mark.parametrize("fields, why", [({"seq": int("9" * 4300)}, "seq is not valid"),
                                         ({"seq": audit.MAX_SEQ + 1}, "seq is not valid"),
                                         ({"reason": "x\x1b[2J"}, "reason holds control characters")])
def test_a_malformed_last_record_refuses_the_next_statement_in_one_line(history, built_job, caia, fields, why):
    forge_last_record(history, **fields)
    before, statements = audit.audit_file(history).read_bytes(), read_rejection_files(history)
    code, out, err = caia("reject", built_job[0].path, "--site", history.path, "--key", reviewer_key(history),
                          "--reason", "no")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"audit log audit.jsonl ends in a malformed record ({why}" in err
    assert f"run `caia site audit {history.path}`" in err and "the rejection was not stored" in err
    assert read_rejection_files(history) == statements and len(statements) == 1  # the fixture's rejection alone
    assert audit.audit_file(history).read_bytes() == before


def read_rejection_files(site):
    return sorted(site.rejections_dir.glob("*.json"))


def test_a_statement_is_removed_whatever_stops_its_record(history, built_job, monkeypatch):
    def broken(*args, **kwargs):  # a fake audit.record that fails with no SiteError
        raise ValueError("not a SiteError")
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    earlier = signing.reject(history, built_job[0].id, reviewer_key(history), "first", now=now).path
    kept = {p: p.read_bytes() for p in read_rejection_files(history)}
    monkeypatch.setattr(audit, "record", broken)
    with pytest.raises(ValueError):
        signing.reject(history, built_job[0].id, reviewer_key(history), "second", now=now + timedelta(days=1))
    with pytest.raises(ValueError):  # the same file name as the earlier rejection: that one is put back
        signing.reject(history, built_job[0].id, reviewer_key(history), "second", now=now)
    assert {p: p.read_bytes() for p in read_rejection_files(history)} == kept and earlier in kept
