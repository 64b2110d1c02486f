import json
import shutil

import pytest


@pytest.mark.parametrize("name, message", [
    ("not_json", "is not a notebook: not valid JSON"),
    ("nbformat_invalid", "is not a valid notebook:"),
    ("no_federated_cells", "has no federated cells; start the cells meant for the sites with %%federated"),
    ("syntax_error", "federated cell 2 (notebook cell 6) line 2: SyntaxError"),
    ("magic_inside", "federated cell 3 (notebook cell 7) line 3 uses IPython syntax ('%time frame = ctx.dataset(\"tiny\")')"),
    ("shell_inside", "line 5 uses IPython syntax ('!pip install torch')"),
    ("missing_evaluate", "federated cells do not define evaluate(model, data, ctx)"),
    ("free_name", "uses 'LEARNING_RATE', which no federated cell defines"),
])
@pytest.mark.parametrize("command", ["bundle", "validate"])
def test_bad_notebooks_get_one_line_errors_exit_2_and_nothing_written(write_notebook, caia, name, message, command):
    path = write_notebook(name)
    before = sorted(p.name for p in path.parent.rglob("*"))
    code, out, err = caia(command, path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("caia: error: ")
    assert message in err
    assert sorted(p.name for p in path.parent.rglob("*")) == before


def test_a_notebook_with_only_an_explore_line_is_told_where_its_statistics_bundle_comes_from(caia, tmp_path):
    import nbformat

    cell = nbformat.v4.new_code_cell("result = %federated explore dataset=t:s.csv columns=age")
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "study.ipynb")
    code, _, err = caia("bundle", tmp_path / "study.ipynb")
    assert code == 2 and err.endswith("has no federated cells; start the cells meant for the sites with %%federated (its "
                                      "%federated explore line makes a statistics bundle: caia explore study.ipynb --sites ...)\n")


def test_missing_notebook_and_missing_sample(write_notebook, caia, tmp_path):
    code, _, err = caia("bundle", tmp_path / "nope.ipynb")
    assert code == 2 and "does not exist" in err
    path = write_notebook("good")
    (path.parent / "samples" / "tiny.csv").unlink()
    code, _, err = caia("bundle", path)
    assert code == 2 and "sample samples/tiny.csv of dataset 'tiny' does not exist" in err


def test_bundle_prints_the_id_last_and_json_on_request(write_notebook, caia, tmp_path):
    path = write_notebook("good")
    code, out, _ = caia("bundle", path, "-o", tmp_path / "b")
    assert code == 0
    bundle_id = out.strip().splitlines()[-1]
    assert bundle_id.startswith("sha256:") and len(bundle_id) == 71
    code, out, _ = caia("bundle", path, "-o", tmp_path / "b", "--json")
    data = json.loads(out)
    assert data["bundle_id"] == bundle_id and data["manifest"]["job"]["rounds"] == 2


def test_usage_errors_are_one_line_exit_2(caia):
    code, _, err = caia("bundle")
    assert code == 2 and err.count("\n") == 1 and "required" in err
    code, _, err = caia("frobnicate")
    assert code == 2 and "invalid choice" in err
    code, _, err = caia("--json", "site", "show", ".")
    assert err == "caia: error: unrecognized arguments: --json\n"  # --json belongs after the command
    code, _, err = caia("site", "init")
    assert err.startswith("caia: error: site init: the following arguments are required")


def test_a_closed_pipe_ends_the_output_quietly(tmp_path, caia):
    import subprocess
    import sys

    caia("site", "init", tmp_path / "s", "--name", "site-1")
    header = ",".join(f"c{i}" for i in range(3000))
    (tmp_path / "wide.csv").write_text(f"{header}\n{','.join('1' * 3000)}\n")  # 100 kB of JSON: more than a pipe holds
    command = f"{sys.executable} -m caia_jupyter.cli site add-dataset {tmp_path / 's'} d {tmp_path / 'wide.csv'} --json | head -c 10"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    assert done.stdout == '{\n  "path"' and done.stderr == ""


def test_site_commands(tmp_path, caia):
    code, out, _ = caia("site", "init", tmp_path / "s", "--name", "site-9")
    assert code == 0 and "site site-9 created" in out and "caia reviewer init KEYFILE" in out
    assert not (tmp_path / "s" / "reviewer").exists() and list((tmp_path / "s" / "trusted_keys").iterdir()) == []
    (tmp_path / "d.csv").write_text("a,b\n1,x\n")
    code, out, _ = caia("site", "add-dataset", tmp_path / "s", "d1", tmp_path / "d.csv", "--json")
    assert code == 0 and json.loads(out)["columns"] == [{"name": "a", "kind": "int"}, {"name": "b", "kind": "str"}]
    code, _, err = caia("site", "add-dataset", tmp_path / "s", "d2", tmp_path / "missing.csv")
    assert code == 2 and "does not exist" in err
    code, out, _ = caia("site", "show", tmp_path / "s", "--json")
    assert json.loads(out)["datasets"] == ["d1"] and json.loads(out)["policy"] == {"max_approval_days": 90}
    code, _, err = caia("site", "show", tmp_path)
    assert code == 2 and "is not a caia site" in err
    code, _, err = caia("site", "trust", tmp_path / "s", tmp_path / "jane.key.pub")
    assert code == 2 and err == f"caia: error: {tmp_path / 'jane.key.pub'} does not exist; give the .pub file `caia reviewer init` made beside the private key\n"


def test_site_init_sets_the_longest_approval_lifetime(tmp_path, caia):
    code, out, _ = caia("site", "init", tmp_path / "s", "--name", "site-1", "--max-approval-days", "14", "--json")
    assert code == 0 and json.loads(out)["policy"] == {"max_approval_days": 14}
    code, _, err = caia("site", "init", tmp_path / "zero", "--name", "site-1", "--max-approval-days", "0")
    assert err.startswith("caia: error: --max-approval-days 0 must be")  # as typed, not 0.0
    for days in ("0", "inf", "nan", "-3", "abc"):
        code, out, err = caia("site", "init", tmp_path / f"bad{days}", "--name", "site-1", "--max-approval-days", days)
        assert code == 2 and out == "" and err.count("\n") == 1 and "max-approval-days" in err
        assert not (tmp_path / f"bad{days}").exists()


def test_site_init_and_policy_set_the_sandbox_policy_and_show_tells_it(tmp_path, caia):
    code, out, _ = caia("site", "init", tmp_path / "s", "--name", "site-1", "--sandbox", "off", "--json")
    assert code == 0 and json.loads(out)["policy"] == {"max_approval_days": 90, "sandbox": "off"}
    code, out, _ = caia("site", "show", tmp_path / "s")
    assert "sandbox off" in out and "the site runs approved code in NVFLARE's job process" in out
    code, out, _ = caia("site", "policy", tmp_path / "s", "--sandbox", "preferred")
    assert code == 0 and out.startswith("site site-1: sandbox preferred\n")
    assert json.loads((tmp_path / "s" / "site.json").read_text())["policy"]["sandbox"] == "preferred"
    code, out, err = caia("site", "policy", tmp_path / "s", "--sandbox", "strict")
    assert (code, out) == (2, "") and err == "caia: error: --sandbox 'strict' must be one of required, preferred, off\n"
    assert json.loads((tmp_path / "s" / "site.json").read_text())["policy"]["sandbox"] == "preferred"
    code, _, err = caia("site", "init", tmp_path / "t", "--name", "site-2", "--sandbox", "maybe")
    assert code == 2 and err.count("\n") == 1 and "--sandbox 'maybe'" in err and not (tmp_path / "t").exists()
    code, out, _ = caia("site", "policy", tmp_path / "s")  # without --sandbox: shown, unchanged
    assert code == 0 and out.startswith("site site-1: sandbox preferred\n")
    site_json = tmp_path / "s" / "site.json"
    site_json.write_text(site_json.read_text().replace('"preferred"', '"Required"'))  # a hand-edited typo
    code, _, err = caia("site", "show", tmp_path / "s")
    assert code == 2 and "policy.sandbox 'Required' must be one of required, preferred, off" in err
    code, out, _ = caia("site", "policy", tmp_path / "s", "--sandbox", "required")  # the repair
    assert code == 0 and json.loads(site_json.read_text())["policy"]["sandbox"] == "required"


def test_site_show_reports_the_kernel_and_an_unset_policy(tmp_path, caia):
    from caia_jupyter.site import landlock

    caia("site", "init", tmp_path / "s", "--name", "site-1")
    code, out, _ = caia("site", "show", tmp_path / "s")
    assert "sandbox not set: required at POC and production sites, preferred in the simulator" in out
    kernel = landlock.support()
    if kernel["landlock_abi"] >= 6:  # this machine kind's kernel offers ABI 7
        assert f"kernel sandbox: Landlock ABI {kernel['landlock_abi']} (files, TCP, signals and abstract UNIX sockets)" in out
        assert "refuses" not in out
    data = json.loads(caia("site", "show", tmp_path / "s", "--json")[1])
    assert data["kernel"] == kernel and "sandbox" not in data["policy"]


def test_site_show_says_a_required_site_refuses_on_a_kernel_without_landlock(tmp_path, caia, monkeypatch):
    monkeypatch.setenv("CAIA_LANDLOCK_ABI", "0")
    caia("site", "init", tmp_path / "s", "--name", "site-1", "--sandbox", "required")
    code, out, _ = caia("site", "show", tmp_path / "s")
    assert code == 0 and "  kernel sandbox: no Linux Landlock" in out
    assert ("  here the site refuses every bundle: its policy requires the sandbox and this machine's kernel has no "
            "Linux Landlock") in out
    data = json.loads(caia("site", "show", tmp_path / "s", "--json")[1])
    assert data["kernel"]["landlock_abi"] == 0 and not data["kernel"]["filesystem"]
    assert data["refusal"].startswith("its policy requires the sandbox")
    code, out, _ = caia("site", "policy", tmp_path / "s", "--sandbox", "preferred", "--json")
    assert json.loads(out)["refusal"] is None and json.loads(out)["policy"]["sandbox"] == "preferred"
    code, out, _ = caia("site", "show", tmp_path / "s")
    assert "refuses" not in out and "without the kernel's restrictions, with a warning" in out
    caia("site", "init", tmp_path / "u", "--name", "site-2")
    code, out, _ = caia("site", "show", tmp_path / "u")
    assert "refuses every bundle at a POC or in production" in out and "the simulator runs it" in out


def test_kernel_line_names_what_each_landlock_abi_enforces():
    from caia_jupyter.cli import kernel_line
    from caia_jupyter.site.landlock import _enforced

    assert kernel_line(_enforced(7, True)) == ("kernel sandbox: Landlock ABI 7 (files, TCP, signals and abstract UNIX "
                                               "sockets); sockets closed by seccomp")
    assert kernel_line(_enforced(4, False)) == ("kernel sandbox: Landlock ABI 4 (files, TCP); sockets left open "
                                                "(no seccomp filter here)")
    assert kernel_line(_enforced(1, True)) == "kernel sandbox: Landlock ABI 1 (files); sockets closed by seccomp"
    assert kernel_line(_enforced(0, True)).startswith("kernel sandbox: no Linux Landlock")


def test_reviewer_init_makes_a_0600_key_pair_and_says_how_a_site_trusts_it(tmp_path, caia):
    key = tmp_path / "me" / "jane.key"
    code, out, _ = caia("reviewer", "init", key)
    assert code == 0 and oct(key.stat().st_mode & 0o777) == "0o600"
    assert f"caia site trust SITE_DIR {key}.pub" in out and "reviewer key " in out
    code, _, err = caia("reviewer", "init", key)
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    code, out, _ = caia("reviewer", "init", tmp_path / "other.key", "--json")
    data = json.loads(out)
    assert code == 0 and data["public_key"] == f"{tmp_path / 'other.key'}.pub" and len(data["key_id"]) == 16
    assert data["trust"] == f"caia site trust SITE_DIR {tmp_path / 'other.key'}.pub"


@pytest.fixture
def reviewed(tmp_path, caia, write_notebook):
    """A bundle, a site with dataset tiny, and a reviewer key the site trusts (outside it)."""
    site, key = tmp_path / "site", tmp_path / "me" / "reviewer.key"
    assert caia("site", "init", site, "--name", "site-1")[0] == 0
    (tmp_path / "tiny.csv").write_text("x1,x2,label\n0.1,0.2,1\n")
    assert caia("site", "add-dataset", site, "tiny", tmp_path / "tiny.csv")[0] == 0
    assert caia("reviewer", "init", key)[0] == 0
    assert caia("site", "trust", site, f"{key}.pub")[0] == 0
    assert caia("bundle", write_notebook("good"), "-o", tmp_path / "bundle")[0] == 0
    return tmp_path / "bundle", site, key


def test_approve_needs_a_key(reviewed, caia):
    bundle, site, _ = reviewed
    code, _, err = caia("approve", bundle, "--site", site, "--dataset", "tiny")
    assert code == 2 and err.count("\n") == 1 and "--key" in err and "required" in err


@pytest.mark.parametrize("days", ["inf", "nan", "-1", "0", "1e9", "91", "abc"])
def test_approve_refuses_a_lifetime_that_is_not_a_finite_positive_number_within_the_policy(reviewed, caia, days):
    bundle, site, key = reviewed
    code, out, err = caia("approve", bundle, "--site", site, "--key", key, "--dataset", "tiny", "--expires-in", days)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("caia: error: ")
    assert ("--expires-in" if days == "abc" else "days must be a finite number of days above 0 and at most 90") in err and "Traceback" not in err
    assert list((site / "approvals").iterdir()) == []


def test_approve_refuses_a_key_in_the_site_and_a_key_the_site_does_not_trust(reviewed, caia, tmp_path):
    bundle, site, key = reviewed
    inside = site / "r.key"
    inside.write_bytes(key.read_bytes())
    code, _, err = caia("approve", bundle, "--site", site, "--key", inside, "--dataset", "tiny")
    assert code == 2 and err.count("\n") == 1 and "lies inside site directory" in err
    assert caia("reviewer", "init", tmp_path / "stranger.key")[0] == 0
    code, _, err = caia("approve", bundle, "--site", site, "--key", tmp_path / "stranger.key", "--dataset", "tiny")
    assert code == 2 and err.count("\n") == 1 and "does not trust reviewer key" in err
    assert list((site / "approvals").iterdir()) == []


@pytest.mark.slow
def test_approve_then_revoke(reviewed, caia, validated_good, tmp_path):
    from caia_jupyter.site.approvals import find_approval
    from caia_jupyter.site.sites import open_site

    _, site, key = reviewed
    bundle = shutil.copytree(validated_good.path, tmp_path / "validated")  # approve signs only a validated bundle
    code, out, _ = caia("approve", bundle, "--site", site, "--key", key, "--dataset", "tiny", "--expires-in", "2", "--json")
    bundle_id = json.loads(out)["bundle_id"]
    assert code == 0 and find_approval(open_site(site), bundle_id, {"tiny"})[0] is not None
    code, out, _ = caia("revoke", bundle_id, "--site", site, "--key", key, "--reason", "narrowing", "--json")
    data = json.loads(out)
    assert code == 0 and data["bundle_id"] == bundle_id and data["reason"] == "narrowing"
    found, reasons = find_approval(open_site(site), bundle_id, {"tiny"})
    assert found is None and "was revoked by revocation" in reasons[0]
    code, _, err = caia("revoke", "sha256:nope", "--site", site, "--key", key)
    assert code == 2 and err.count("\n") == 1 and "is not a bundle id" in err


def test_site_init_shows_the_standard_policy_and_statistics_thresholds_it_starts_with(caia, tmp_path):
    code, out, err = caia("site", "init", tmp_path / "s", "--name", "site-9")
    assert code == 0, err
    assert "\ndata breaking a bundle's dataset standard: admitted, the counts recorded in the audit log\n" in out
    assert "\nstatistics thresholds: --min-count 10 (no count between 0 and it leaves the site), --noise 0.1:0.3 (on " \
           "min/max), --extremes noisy, --max-bins-percent 10 (a histogram needs fewer bins than this percent of its " \
           "values); `caia site policy DIR` sets these\n" in out
