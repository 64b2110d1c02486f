import base64
import json
import os
import shutil
import stat
from datetime import datetime, timedelta, timezone

import pytest

from caia_jupyter.contracts.errors import ApprovalRejected, CaiaError, SiteError
from caia_jupyter.contracts.manifest import canonical
from caia_jupyter.researcher import bundle as bundles, compose
from caia_jupyter.reviewer import keypair, signing
from caia_jupyter.site import approvals, keys, sites
from caia_jupyter.targets import poc as pocs
from caia_jupyter.targets.demo_sites import add_reviewer, make_sites
from conftest import approve, make_site, reviewer_key

OTHER_ID = "sha256:" + "ab" * 32
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "sites", "site-1")


@pytest.fixture
def built(write_notebook, tmp_path):
    return compose.build(write_notebook("good"), tmp_path / "bundle")


def private_key_files_under(folder):
    return [p for p in folder.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]


def sign(statement: dict, key_file) -> dict:
    """What any holder of a trusted key could write: `statement`, signed as caia signs."""
    private = keys.load_private_key(key_file)
    return {"statement": statement, "signature": base64.b64encode(private.sign(canonical(statement))).decode()}


def statement_for(site, bundle_id, issued=T0, expires=T0 + timedelta(days=7), **changes):
    kid = keys.key_id(keys.load_private_key(reviewer_key(site)).public_key())
    return {"format": "caia-approval/1", "site": site.name, "bundle_id": bundle_id, "datasets": {"tiny": "tiny"},
            "key_id": kid, "issued_at": approvals.iso(issued), "expires_at": approvals.iso(expires), **changes}


# Sites hold no private key


def test_site_init_makes_catalog_trusted_keys_approvals_revocations_and_policy_but_no_key(tmp_path):
    site = sites.init(tmp_path / "s", "site-1")
    assert sorted(p.name for p in site.path.iterdir()) == ["approvals", "catalog.json", "revocations", "site.json", "trusted_keys"]
    assert site.trusted_keys() == {} and site.max_approval_days == 90
    assert json.loads((site.path / "site.json").read_text())["policy"] == {"max_approval_days": 90}
    assert sites.init(tmp_path / "short", "site-2", max_approval_days=7).max_approval_days == 7
    for bad in ("bad name", "site-1\n", "../x"):
        with pytest.raises(SiteError, match="site name"):
            sites.init(tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SiteError, match="not empty"):
        sites.init(site.path, "site-1")


@pytest.mark.parametrize("creator", ["caia_site_init", "demo_make_sites", "poc_demo_sites", "poc_plain_sites"])
def test_no_private_key_lies_under_any_site_directory(tmp_path, caia, creator):
    if creator == "caia_site_init":
        assert caia("site", "init", tmp_path / "sites" / "site-1", "--name", "site-1")[0] == 0
    elif creator == "demo_make_sites":
        centers = make_sites(tmp_path / "sites")
        assert all(c.reviewer_key.parent == tmp_path / "reviewers" for c in centers)
    else:
        keys_by_site = pocs._create_sites(pocs.Poc(tmp_path), ["site-1", "site-2"], creator == "poc_demo_sites")
        assert keys_by_site == {name: tmp_path / "reviewers" / f"{name}.key" for name in ("site-1", "site-2")}
        assert all(sites.open_site(tmp_path / "sites" / name).trusted_keys() for name in keys_by_site)
    site_dirs = sorted((tmp_path / "sites").iterdir())
    assert site_dirs and all((d / "site.json").is_file() for d in site_dirs)
    assert [p for d in site_dirs for p in private_key_files_under(d)] == []


def test_a_reviewer_key_is_mode_0600_from_creation_and_never_overwritten(tmp_path):
    old = os.umask(0)  # the mode must not depend on the umask
    try:
        kid, public = keypair.create_key_pair(tmp_path / "me" / "jane.key")
    finally:
        os.umask(old)
    private = tmp_path / "me" / "jane.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and public == tmp_path / "me" / "jane.key.pub"
    assert keys.key_id(keys.load_public_key(public)) == kid == keys.key_id(keys.load_private_key(private).public_key())
    before = private.read_bytes()
    with pytest.raises(SiteError, match="already exists"):
        keypair.create_key_pair(private)
    assert private.read_bytes() == before
    (tmp_path / "link.key").symlink_to(tmp_path / "elsewhere.key")  # a planted link is not followed
    with pytest.raises(SiteError, match="already exists"):
        keypair.create_key_pair(tmp_path / "link.key")
    assert not (tmp_path / "elsewhere.key").exists() and not (tmp_path / "link.key.pub").exists()


def test_a_reviewer_key_is_refused_inside_a_site_directory(site):
    with pytest.raises(SiteError, match="lies inside the caia site directory"):
        keypair.create_key_pair(site.path / "keys" / "r.key")
    assert not (site.path / "keys").exists()


def test_approve_refuses_a_key_inside_the_site_and_a_key_the_site_does_not_trust(site, built, tmp_path):
    inside = site.path / "stash" / "r.key"
    inside.parent.mkdir()
    inside.write_bytes(reviewer_key(site).read_bytes())
    with pytest.raises(SiteError, match="lies inside site directory .* where approved code could read it"):
        signing.approve(site, built.id, {"tiny": "tiny"}, inside)
    keypair.create_key_pair(tmp_path / "stranger.key")
    with pytest.raises(SiteError, match="site site-1 does not trust reviewer key .*use your own key, whose public half the site.s admin trusted"):
        signing.approve(site, built.id, {"tiny": "tiny"}, tmp_path / "stranger.key")
    assert list(site.approvals_dir.iterdir()) == []


# Approvals


def test_an_approval_verifies(site, built):
    approval = approve(site, built.id, {"tiny": "tiny"})
    verified = approvals.verify_approval(approval.path, site, built.id, {"tiny"})
    assert verified.datasets == {"tiny": "tiny"} and verified.site == "site-1"
    assert verified.expires_at - verified.issued_at == timedelta(days=30)
    found, reasons = approvals.find_approval(site, built.id, {"tiny"})
    assert found is not None and reasons == []


def test_untrusted_key_is_rejected(site, built, tmp_path):
    stranger = make_site(tmp_path / "elsewhere" / "sites", "site-1")
    approval = approve(stranger, built.id, {"tiny": "tiny"}, output=tmp_path / "a.json")
    with pytest.raises(ApprovalRejected, match=f"signed by key {approval.key_id}, which site site-1 does not trust"):
        approvals.verify_approval(approval.path, site, built.id)


def test_other_bundle_id_is_rejected(site, built):
    approval = approve(site, OTHER_ID, {"tiny": "tiny"})
    with pytest.raises(ApprovalRejected, match=f"approves bundle {OTHER_ID}, not {built.id}"):
        approvals.verify_approval(approval.path, site, built.id)
    assert approvals.find_approval(site, built.id) == (None, [])  # an approval of another bundle is no reason


def test_other_site_is_rejected(site, built, tmp_path):
    other = sites.init(tmp_path / "site-2", "site-2")
    sites.trust(other, keypair.public_key_file(reviewer_key(site)))
    approval = approve(site, built.id, {}, output=tmp_path / "a.json")
    with pytest.raises(ApprovalRejected, match="is for site 'site-1', not 'site-2'"):
        approvals.verify_approval(approval.path, other, built.id)


def test_dataset_not_in_catalog_is_rejected(site, built):
    approval = approve(site, built.id, {"tiny": "genomes"})
    with pytest.raises(ApprovalRejected, match="releases genomes, not in site site-1's catalog"):
        approvals.verify_approval(approval.path, site, built.id)


@pytest.mark.parametrize("entry", [["data.csv"], "data.csv", {}, {"path": 5}, {"path": ""}, {"path": "data\0.csv"}],
                         ids=["a-list", "a-text", "no-path", "path-a-number", "path-empty", "path-with-a-null-byte"])
def test_a_malformed_catalog_entry_is_a_one_line_site_error_and_the_approval_is_rejected(site, built, entry):
    approval = approve(site, built.id, {"tiny": "tiny"})
    (site.path / "catalog.json").write_text(json.dumps({"datasets": {"tiny": entry}}))
    with pytest.raises(SiteError, match=r"catalog.json: dataset 'tiny' is not an object with a 'path' text; register it again") as error:
        site.catalog
    assert "\n" not in str(error.value)
    with pytest.raises(ApprovalRejected, match="site site-1's catalog is unreadable"):
        approvals.verify_approval(approval.path, site, built.id)


def test_dataset_the_bundle_does_not_request_is_rejected(site, built):
    approval = approve(site, built.id, {"other": "tiny"})
    with pytest.raises(ApprovalRejected, match="releases other, which the bundle does not request"):
        approvals.verify_approval(approval.path, site, built.id, {"tiny"})


def test_expired_approval_is_rejected(site, built):
    issued = datetime.now(timezone.utc) - timedelta(days=3)
    approval = approve(site, built.id, {"tiny": "tiny"}, expires_in_days=1, now=issued)
    with pytest.raises(ApprovalRejected, match="expired at"):
        approvals.verify_approval(approval.path, site, built.id)


def test_an_altered_approval_is_rejected(site, built):
    approval = approve(site, built.id, {"tiny": "tiny"})
    content = json.loads(approval.path.read_text())
    content["statement"]["expires_at"] = "2099-01-01T00:00:00Z"
    approval.path.write_text(json.dumps(content))
    with pytest.raises(ApprovalRejected, match="signature that does not match its content"):
        approvals.verify_approval(approval.path, site, built.id)
    found, reasons = approvals.find_approval(site, built.id)
    assert found is None and "altered after signing" in reasons[0]


@pytest.mark.parametrize("days", [float("inf"), float("nan"), -1, 0, 1e9, 91, True])
def test_approve_takes_only_a_finite_positive_lifetime_within_the_site_policy(site, built, days):
    with pytest.raises(CaiaError, match="must be a finite number of days above 0 and at most 90"):
        approve(site, built.id, {"tiny": "tiny"}, expires_in_days=days)
    assert list(site.approvals_dir.iterdir()) == []


def test_the_default_lifetime_follows_a_shorter_site_policy(tmp_path, built):
    site = sites.init(tmp_path / "sites" / "site-1", "site-1", max_approval_days=7)
    add_reviewer(site, reviewer_key(site))
    approval = approve(site, built.id, {})
    assert approval.expires_at - approval.issued_at == timedelta(days=7)


def test_an_approval_longer_than_the_site_policy_allows_is_rejected(site, built):
    approval = approve(site, built.id, {"tiny": "tiny"}, expires_in_days=60, now=T0)
    meta = json.loads((site.path / "site.json").read_text())
    meta["policy"]["max_approval_days"] = 30  # the site tightened its policy since
    (site.path / "site.json").write_text(json.dumps(meta))
    with pytest.raises(ApprovalRejected, match=r"is valid for 60 days, longer than site site-1's policy allows \(30 days\)"):
        approvals.verify_approval(approval.path, sites.open_site(site.path), built.id, now=T0 + HOUR)


def test_an_approval_that_expires_before_it_is_issued_is_rejected(site, built):
    path = site.approvals_dir / "backwards.json"
    path.write_text(json.dumps(sign(statement_for(site, built.id, issued=T0, expires=T0 - HOUR), reviewer_key(site))))
    with pytest.raises(ApprovalRejected, match="expires .* before it is issued"):
        approvals.verify_approval(path, site, built.id, now=T0 - 2 * HOUR)


@pytest.mark.parametrize("policy", [0, -5, "90", None, float("inf"), 1e9, [90]])
def test_a_site_with_a_bad_policy_does_not_open(site, policy):
    meta = json.loads((site.path / "site.json").read_text())
    meta["policy"] = {"max_approval_days": policy}
    (site.path / "site.json").write_text(json.dumps(meta))
    with pytest.raises(SiteError, match="policy.max_approval_days must be a number of days"):
        sites.open_site(site.path)


# Malformed approvals: each one is a rejection with its reason, and a valid one beside it still admits.


def _valid(site, bundle_id):
    return sign(statement_for(site, bundle_id), reviewer_key(site))


def _with_statement(**changes):
    def make(site, bundle_id):
        return sign(statement_for(site, bundle_id, **changes), reviewer_key(site))
    return make


def _replace(field, value, resign=False):
    def make(site, bundle_id):
        content = _valid(site, bundle_id)
        content["statement"][field] = value
        return sign(content["statement"], reviewer_key(site)) if resign else content
    return make


def _text(edit):
    """A file whose text is `edit(valid JSON text)`."""
    def make(site, bundle_id):
        return edit(json.dumps(_valid(site, bundle_id)))
    return make


MALFORMED = {
    "not_json": (lambda site, bid: "{not json", "is malformed (Expecting property name"),
    "empty_file": (lambda site, bid: "", "is malformed (Expecting value"),
    "not_utf8": (lambda site, bid: b'{"statement": "\xff"}', "is malformed (not UTF-8)"),
    "a_list": (lambda site, bid: [], "not an object with exactly 'statement' and 'signature'"),
    "a_number": (lambda site, bid: 7, "not an object with exactly 'statement' and 'signature'"),
    "no_signature": (lambda site, bid: {"statement": _valid(site, bid)["statement"]}, "not an object with exactly"),
    "extra_top_level_field": (lambda site, bid: {**_valid(site, bid), "note": "x"}, "not an object with exactly"),
    "statement_is_a_list": (lambda site, bid: {"statement": [bid], "signature": "AA=="}, "statement is not an object"),
    "statement_is_a_string": (lambda site, bid: {"statement": "approved", "signature": "AA=="}, "statement is not an object"),
    "numeric_issued_at": (_replace("issued_at", 1893499200), "issued_at is not a string"),
    "issued_at_without_timezone": (_replace("issued_at", "2030-01-01T12:00:00", resign=True), "issued_at is not an ISO 8601 time with a timezone"),
    "issued_at_not_a_time": (_replace("issued_at", "tomorrow", resign=True), "issued_at is not an ISO 8601 time"),
    "expires_at_a_date_only": (_replace("expires_at", "2030-02-01", resign=True), "expires_at is not an ISO 8601 time"),
    "expires_at_out_of_range": (_replace("expires_at", "0001-01-01T00:00:00+01:00", resign=True), "expires_at is not an ISO 8601 time"),
    "nan_issued_at": (_text(lambda t: t.replace('"issued_at": "2030-01-01T12:00:00Z"', '"issued_at": NaN')), "NaN is not a JSON number"),
    "datasets_is_a_list": (_replace("datasets", ["tiny"], resign=True), "datasets is not an object of dataset names to catalog ids"),
    "dataset_id_is_a_number": (_replace("datasets", {"tiny": 1}, resign=True), "datasets is not an object of dataset names"),
    "site_is_a_number": (_replace("site", 1, resign=True), "site is not a string"),
    "key_id_is_a_list": (_replace("key_id", ["k"]), "key_id is not a string"),
    "key_id_not_hex": (_replace("key_id", "../../etc/passwd"), "key_id is not 16 hex digits"),
    "key_id_with_a_newline": (lambda site, bid: _replace("key_id", _valid(site, bid)["statement"]["key_id"] + "\n")(site, bid), "key_id is not 16 hex digits"),
    "bundle_id_not_sha256": (_replace("bundle_id", "latest", resign=True), "bundle_id is not sha256:<64 hex digits>"),
    "missing_expires_at": (lambda site, bid: sign({k: v for k, v in statement_for(site, bid).items() if k != "expires_at"}, reviewer_key(site)), "statement lacks expires_at"),
    "unknown_statement_field": (_with_statement(conditions="none"), "statement has unknown fields conditions"),
    "other_format": (_with_statement(format="caia-approval/2"), "format is not caia-approval/1"),
    "signature_not_base64": (lambda site, bid: {**_valid(site, bid), "signature": "not base64!"}, "signature is not a base64 Ed25519 signature"),
    "signature_too_short": (lambda site, bid: {**_valid(site, bid), "signature": "AAAA"}, "signature is not a base64 Ed25519 signature"),
    "signature_is_a_number": (lambda site, bid: {**_valid(site, bid), "signature": 12}, "signature is not a base64 Ed25519 signature"),
    "lone_surrogate_in_site": (_text(lambda t: t.replace('"site": "site-1"', '"site": "\\ud800"')), "statement holds text that is not valid Unicode"),
    "duplicate_site_in_statement": (_text(lambda t: t.replace('"site": "site-1"', '"site": "site-1", "site": "site-9"')), "duplicate key 'site'"),
    "duplicate_dataset": (_text(lambda t: t.replace('"tiny": "tiny"', '"tiny": "tiny", "tiny": "genomes"')), "duplicate key 'tiny'"),
    "duplicate_statement": (_text(lambda t: t.replace('{"statement": ', '{"statement": {}, "statement": ', 1)), "duplicate key 'statement'"),
    "nested_too_deeply": (lambda site, bid: "[" * 50_000, "is malformed (nested too deeply)"),
    "too_large": (lambda site, bid: {**_valid(site, bid), "padding": "x" * 70_000}, "is larger than 65536 bytes"),
    "expires_before_issue": (_with_statement(issued_at="2030-01-02T00:00:00Z", expires_at="2030-01-01T00:00:00Z"), "before it is issued"),
    "lifetime_beyond_policy": (_with_statement(expires_at="2040-01-01T00:00:00Z"), "longer than site site-1's policy allows (90 days)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_approval_is_rejected_and_a_valid_one_beside_it_admits(site, built, case):
    make, reason = MALFORMED[case]
    content = make(site, built.id)
    bad = site.approvals_dir / "0-malformed.json"  # sorts before any approval caia names
    bad.write_bytes(content if isinstance(content, bytes) else (content if isinstance(content, str) else json.dumps(content)).encode("utf-8", "surrogatepass"))
    with pytest.raises(ApprovalRejected) as rejected:
        approvals.verify_approval(bad, site, built.id, {"tiny"}, now=T0 + HOUR)
    message = str(rejected.value)
    assert reason in message and message.startswith("approval 0-malformed.json ")
    assert "\n" not in message and str(site.path) not in message

    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + HOUR)
    assert found is None and reasons == [message]
    approve(site, built.id, {"tiny": "tiny"}, now=T0)
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + HOUR)
    assert found is not None and found.path.name != bad.name
    assert all(str(site.path) not in r for r in reasons)


@pytest.mark.parametrize("kind", ["directory", "dangling_link"])
def test_an_approval_that_is_no_regular_file_is_rejected_and_a_valid_one_admits(site, built, kind):
    bad = site.approvals_dir / "0-odd.json"
    bad.mkdir() if kind == "directory" else bad.symlink_to(site.path / "nowhere.json")
    approve(site, built.id, {"tiny": "tiny"}, now=T0)
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + HOUR)
    assert found is not None and reasons == ["approval 0-odd.json is missing or not a regular file"]


def test_reasons_for_this_bundle_come_before_files_that_are_no_approval(site, built):
    (site.approvals_dir / "0-garbage.json").write_text("[]")
    approve(site, built.id, {"tiny": "tiny"}, expires_in_days=1, now=T0)
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + timedelta(days=2))
    assert found is None and "expired at" in reasons[0] and "0-garbage.json" in reasons[1]


def test_garbage_in_trusted_keys_is_skipped_with_its_reason_and_the_site_still_admits(site, built):
    trusted = site.path / "trusted_keys"
    (trusted / "garbage.pub").write_text("not a key")
    (trusted / "private-by-mistake.pub").write_bytes(reviewer_key(site).read_bytes())
    (trusted / "folder.pub").mkdir()
    problems = []
    assert len(site.trusted_keys(problems)) == 1
    assert problems == [f"site site-1 skips trusted_keys/{name}: not an Ed25519 public key in PEM"
                        for name in ("folder.pub", "garbage.pub", "private-by-mistake.pub")]
    approve(site, built.id, {"tiny": "tiny"}, now=T0)
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + HOUR)
    assert found is not None and reasons == []
    assert site.to_json()["key_problems"] == problems


def test_a_key_whose_private_half_lies_in_the_site_is_distrusted(site, built):
    approve(site, built.id, {"tiny": "tiny"}, now=T0)
    legacy = site.path / "reviewer"  # where earlier versions of `caia site init` put a reviewer's key
    legacy.mkdir()
    (legacy / "old.key").write_bytes(reviewer_key(site).read_bytes())
    problems = []
    assert site.trusted_keys(problems) == {} and "its private key lies in the site's reviewer/ folder" in problems[0]
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + HOUR)
    assert found is None and "which site site-1 does not trust" in reasons[0]


# Revocations


def test_revoking_rejects_earlier_approvals_and_a_later_approval_is_valid_again(site, built):
    approve(site, built.id, {"tiny": "tiny"}, now=T0)
    assert approvals.find_approval(site, built.id, {"tiny"}, now=T0 + HOUR)[0] is not None

    revocation = signing.revoke(site, built.id, reviewer_key(site), "releases too much", now=T0 + 2 * HOUR)
    assert revocation.path.parent == site.revocations_dir
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + 3 * HOUR)
    assert found is None
    assert reasons == [f"approval {built.id[7:23]}-{revocation.key_id}.json was revoked by revocation "
                       f"{revocation.path.name} at 2030-01-01T14:00:00Z; ask a reviewer to approve the bundle again"]
    assert "releases too much" not in reasons[0]  # the reviewer's note stays at the site

    approve(site, built.id, {}, now=T0 + 4 * HOUR)  # narrowed: no dataset released any more
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + 5 * HOUR)
    assert found is not None and found.datasets == {} and found.issued_at == T0 + 4 * HOUR


def test_an_approval_made_right_after_a_revocation_is_issued_after_what_it_covers(site, built):
    revocation = signing.revoke(site, built.id, reviewer_key(site), now=T0)
    assert revocation.covers_until == T0 + approvals.CLOCK_SKEW
    approval = approve(site, built.id, {"tiny": "tiny"}, now=T0)
    assert approval.issued_at == T0 + approvals.CLOCK_SKEW + timedelta(seconds=1)
    assert approvals.find_approval(site, built.id, {"tiny"}, now=T0 + timedelta(seconds=1))[0] is not None


def test_an_approval_from_a_fast_clock_does_not_outlive_a_later_revocation(site, built):
    approve(site, built.id, {"tiny": "tiny"}, now=T0 + timedelta(minutes=4))  # the approver's clock runs 4 minutes fast
    revocation = signing.revoke(site, built.id, reviewer_key(site), now=T0 + timedelta(minutes=1))
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + timedelta(minutes=2))
    assert found is None and f"was revoked by revocation {revocation.path.name}" in reasons[0]


def test_a_revocation_is_dated_no_earlier_than_an_approval_from_a_clock_far_ahead(site, built):
    approve(site, built.id, {"tiny": "tiny"}, now=T0 + HOUR)  # the approver's clock runs an hour fast
    revocation = signing.revoke(site, built.id, reviewer_key(site), now=T0 + timedelta(minutes=1))
    assert revocation.issued_at == T0 + HOUR
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + 2 * HOUR)
    assert found is None and "was revoked" in reasons[0]


def test_a_revocation_counts_after_the_site_stops_trusting_its_signer(site, built, tmp_path):
    approve(site, built.id, {"tiny": "tiny"}, now=T0)
    officer = tmp_path / "officer" / "b.key"
    add_reviewer(site, officer)
    revocation = signing.revoke(site, built.id, officer, reason="exfiltrates data", now=T0 + HOUR)
    (site.path / "trusted_keys" / f"{revocation.key_id}.pub").unlink()  # the officer left; nobody touched revocations/
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + 2 * HOUR)
    assert found is None and "was revoked" in reasons[0]


def test_a_revocation_counts_for_its_bundle_and_site_only_whoever_signed_it(site, built, tmp_path):
    approve(site, built.id, {"tiny": "tiny"}, now=T0)
    signing.revoke(site, OTHER_ID, reviewer_key(site), now=T0 + HOUR)
    other = make_site(tmp_path / "more" / "sites", "site-2")
    sites.trust(other, keypair.public_key_file(reviewer_key(site)))
    signing.revoke(other, built.id, reviewer_key(site), now=T0 + HOUR, output=site.revocations_dir / "for-site-2.json")
    for name, text in {"list.json": "[]", "garbage.json": "{", "dup.json": '{"statement": {}, "statement": {}}'}.items():
        (site.revocations_dir / name).write_text(text)
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + 2 * HOUR)
    assert found is not None and reasons == []

    stranger = make_site(tmp_path / "elsewhere" / "sites", "site-1")  # a key this site never trusted
    signing.revoke(stranger, built.id, reviewer_key(stranger), now=T0 + HOUR, output=site.revocations_dir / "by-a-stranger.json")
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + 2 * HOUR)
    assert found is None and "was revoked by revocation by-a-stranger.json" in reasons[0]


def test_a_revocation_dated_far_ahead_stops_approvals_without_a_crash(site, built):
    approve(site, built.id, {"tiny": "tiny"}, now=T0)
    far = datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc)
    signing.revoke(site, built.id, reviewer_key(site), now=far)
    found, reasons = approvals.find_approval(site, built.id, {"tiny"}, now=T0 + HOUR)
    assert found is None and "was revoked" in reasons[0]
    with pytest.raises(CaiaError, match="more than 5 minutes ahead of this machine's clock"):
        approve(site, built.id, {"tiny": "tiny"}, now=T0 + HOUR)


def test_revoke_refuses_a_malformed_bundle_id_and_an_untrusted_key(site, tmp_path):
    with pytest.raises(CaiaError, match="is not a bundle id"):
        signing.revoke(site, "sha256:abc", reviewer_key(site))
    keypair.create_key_pair(tmp_path / "stranger.key")
    with pytest.raises(SiteError, match="does not trust reviewer key"):
        signing.revoke(site, OTHER_ID, tmp_path / "stranger.key")
    assert list(site.revocations_dir.iterdir()) == []


@pytest.mark.slow
def test_cli_approve_checks_the_bundle_and_catalog(site, validated_good, caia, tmp_path):
    built = bundles.load(shutil.copytree(validated_good.path, tmp_path / "validated"))
    key = reviewer_key(site)
    code, out, _ = caia("approve", built.path, "--site", site.path, "--key", key, "--dataset", "tiny")
    assert code == 0 and out.strip().splitlines()[-1] == built.id
    code, _, err = caia("approve", built.path, "--site", site.path, "--key", key, "--dataset", "tiny=genomes")
    assert code == 2 and "has no dataset genomes in its catalog; add it with `caia site add-dataset`" in err
    code, _, err = caia("approve", built.path, "--site", site.path, "--key", key, "--dataset", "imaging")
    assert code == 2 and "the bundle does not request imaging; it requests tiny" in err
    (built.path / "federated.py").write_text("tampered\n")
    before = sorted(site.approvals_dir.iterdir())
    code, _, err = caia("approve", built.path, "--site", site.path, "--key", key, "--dataset", "tiny")
    assert code == 2 and "is not intact: file federated.py" in err
    assert sorted(site.approvals_dir.iterdir()) == before
