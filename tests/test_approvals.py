import json
import stat
from datetime import datetime, timedelta, timezone

import pytest

import corpus
from caia_jupyter import approvals, bundle, sites
from caia_jupyter.errors import ApprovalRejected, SiteError

OTHER_ID = "sha256:" + "ab" * 32


@pytest.fixture
def site(tmp_path):
    site = sites.init(tmp_path / "site-1", "site-1")
    (tmp_path / "tiny.csv").write_text(corpus.SAMPLE_CSV)
    sites.add_dataset(site, "tiny", tmp_path / "tiny.csv")
    return site


@pytest.fixture
def built(write_notebook, tmp_path):
    return bundle.build(write_notebook("good"), tmp_path / "bundle")


def test_site_init_makes_catalog_keys_and_store(site):
    key = site.reviewer_key_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert list(site.trusted_keys()) == [key.stem]
    assert site.catalog["tiny"]["columns"] == [{"name": "x1", "kind": "float"}, {"name": "x2", "kind": "float"}, {"name": "label", "kind": "int"}]
    assert site.approvals_dir.is_dir()


def test_site_init_refuses_a_non_empty_directory_and_bad_names(tmp_path, site):
    with pytest.raises(SiteError, match="not empty"):
        sites.init(site.path, "site-1")
    with pytest.raises(SiteError, match="site name"):
        sites.init(tmp_path / "x", "bad name")
    assert not (tmp_path / "x").exists()


def test_an_approval_verifies(site, built):
    approval = approvals.approve(site, built.id, {"tiny": "tiny"})
    verified = approvals.verify_approval(approval.path, site, built.id, {"tiny"})
    assert verified.datasets == {"tiny": "tiny"} and verified.site == "site-1"
    found, reasons = approvals.find_approval(site, built.id, {"tiny"})
    assert found is not None and reasons == []


def test_untrusted_key_is_rejected(site, built, tmp_path):
    stranger = sites.init(tmp_path / "stranger", "site-1")
    approval = approvals.approve(site, built.id, {"tiny": "tiny"}, key_file=stranger.reviewer_key_file(), output=tmp_path / "a.json")
    with pytest.raises(ApprovalRejected, match=f"signed by key {stranger.reviewer_key_file().stem}, which site site-1 does not trust"):
        approvals.verify_approval(approval.path, site, built.id)


def test_other_bundle_id_is_rejected(site, built):
    approval = approvals.approve(site, OTHER_ID, {"tiny": "tiny"})
    with pytest.raises(ApprovalRejected, match=f"approves bundle {OTHER_ID}, not {built.id}"):
        approvals.verify_approval(approval.path, site, built.id)
    assert approvals.find_approval(site, built.id) == (None, [])  # an approval of another bundle is no reason


def test_other_site_is_rejected(site, built, tmp_path):
    other = sites.init(tmp_path / "site-2", "site-2")
    sites.trust(other, next(site.path.glob("trusted_keys/*.pub")))
    approval = approvals.approve(site, built.id, {}, output=tmp_path / "a.json")
    with pytest.raises(ApprovalRejected, match="is for site 'site-1', not 'site-2'"):
        approvals.verify_approval(approval.path, other, built.id)


def test_dataset_not_in_catalog_is_rejected(site, built):
    approval = approvals.approve(site, built.id, {"tiny": "genomes"})
    with pytest.raises(ApprovalRejected, match="releases genomes, not in site site-1's catalog"):
        approvals.verify_approval(approval.path, site, built.id)


def test_dataset_the_bundle_does_not_request_is_rejected(site, built):
    approval = approvals.approve(site, built.id, {"other": "tiny"})
    with pytest.raises(ApprovalRejected, match="releases other, which the bundle does not request"):
        approvals.verify_approval(approval.path, site, built.id, {"tiny"})


def test_expired_approval_is_rejected(site, built):
    issued = datetime.now(timezone.utc) - timedelta(days=3)
    approval = approvals.approve(site, built.id, {"tiny": "tiny"}, expires_in_days=1, now=issued)
    with pytest.raises(ApprovalRejected, match="expired at"):
        approvals.verify_approval(approval.path, site, built.id)


def test_an_altered_approval_is_rejected(site, built):
    approval = approvals.approve(site, built.id, {"tiny": "tiny"})
    content = json.loads(approval.path.read_text())
    content["statement"]["expires_at"] = "2099-01-01T00:00:00Z"
    approval.path.write_text(json.dumps(content))
    with pytest.raises(ApprovalRejected, match="signature that does not match its content"):
        approvals.verify_approval(approval.path, site, built.id)
    found, reasons = approvals.find_approval(site, built.id)
    assert found is None and "altered after signing" in reasons[0]


def test_cli_approve_checks_the_bundle_and_catalog(site, built, caia, tmp_path):
    code, out, _ = caia("approve", built.path, "--site", site.path, "--dataset", "tiny")
    assert code == 0 and out.strip().splitlines()[-1] == built.id
    code, _, err = caia("approve", built.path, "--site", site.path, "--dataset", "tiny=genomes")
    assert code == 2 and "no dataset genomes in its catalog" in err
    code, _, err = caia("approve", built.path, "--site", site.path, "--dataset", "imaging")
    assert code == 2 and "bundle does not request imaging" in err
    (built.path / "federated.py").write_text("tampered\n")
    before = sorted(site.approvals_dir.iterdir())
    code, _, err = caia("approve", built.path, "--site", site.path, "--dataset", "tiny")
    assert code == 2 and "is not intact: file federated.py" in err
    assert sorted(site.approvals_dir.iterdir()) == before
