"""The site guard as an exact allow-list: a corpus of deployed-app layouts, each refused with its reason,
and a site whose own files are malformed still answers with a refusal (or admits what is valid)."""

from __future__ import annotations

import hashlib
import json
import os
import py_compile
import shutil

import pytest

from caia_jupyter.contracts import fileset
from caia_jupyter.contracts.fsutil import read_json
from caia_jupyter.contracts.manifest import bundle_id
from caia_jupyter.researcher import compose
from caia_jupyter.site.guard import MISCONFIGURED, Refusal, admit
from caia_jupyter.site.release import RELEASE
from caia_jupyter.targets import remote
from caia_jupyter.targets.job import build_job
from conftest import approve, make_site
import corpus

EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('the unreviewed code ran')\n"


def external_process_config(command: str) -> dict:
    """A client config as NVFLARE's FedJob writes it for a ScriptRunner in external-process mode."""
    return {
        "format_version": 2,
        "executors": [{"tasks": ["*"], "executor": {
            "path": "nvflare.app_common.executors.client_api_launcher_executor.ClientAPILauncherExecutor",
            "args": {"launcher_id": "launcher"}}}],
        "components": [{"id": "launcher", "path": "nvflare.app_common.launchers.subprocess_launcher.SubprocessLauncher",
                        "args": {"script": command}}],
    }


EXTERNAL_PROCESS_CONFIG = external_process_config("sh -c 'touch /nonexistent/marker'")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A real NVFLARE job of the good corpus bundle (FedJob's own layout), and a site that approved it."""
    root = tmp_path_factory.mktemp("guard")
    built = compose.build(corpus.write("good", root / "nb"))
    job = build_job(built, ["site-1"], root / "job", name="caia-guard")
    site = make_site(root / "sites", "site-1")
    approve(site, built.id, {"tiny": "tiny"})
    return built, job / "app_site-1", site


@pytest.fixture
def app(deployed, tmp_path):
    """A fresh copy of the deployed app to tamper with."""
    _, source, _ = deployed
    return shutil.copytree(source, tmp_path / "app", symlinks=True)


def write(app, relative, data=b"x = 1\n"):
    path = app / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def bytecode(app, relative, marker="/nonexistent/marker"):
    """An unchecked-hash .pyc of code that writes `marker`: Python imports it without looking at any source."""
    source = app.parent / "evil_source.py"
    source.write_text(EVIL.format(marker=marker))
    target = app / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    py_compile.compile(str(source), cfile=str(target), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def replace_folder_by_link(app, relative):
    real = app.parent / f"real-{relative.replace('/', '-')}"
    shutil.move(app / relative, real)
    os.symlink(real, app / relative)


def edit_manifest(app, edit):
    path = app / "custom" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def resigned(change):
    """Tamper, fix the manifest's hashes to match, and have the site approve the new id: only the
    file-set rules can refuse it then."""

    def tamper(app, site):
        change(app)
        files = {}
        for name in json.loads((app / "custom" / "manifest.json").read_text())["files"]:
            path = app / ("config" if name == fileset.CLIENT_CONFIG else "custom") / name
            if path.is_file():
                data = path.read_bytes()
                files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

        def update(manifest):
            for name, entry in files.items():
                manifest["files"][name].update(entry)

        edit_manifest(app, update)
        manifest = json.loads((app / "custom" / "manifest.json").read_text())
        approve(site, bundle_id(manifest), {"tiny": "tiny"})

    return tamper


def listing(name, role="module"):
    def change(app):
        write(app, f"custom/{name}", "import os\n")
        data = (app / "custom" / name).read_bytes()
        edit_manifest(app, lambda m: m["files"].update({name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "role": role}}))
    return change


def listing_opaque(app, name):
    data = (app / "custom" / name).read_bytes()
    edit_manifest(app, lambda m: m["files"].update({name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                                            "role": "captured", "opaque": True}}))


def plain(change):
    return lambda app, site: change(app)


def flip(relative):
    def change(app):
        data = bytearray((app / relative).read_bytes())
        data[len(data) // 2] ^= 1
        (app / relative).write_bytes(bytes(data))
    return change


def nvflare_signature_in_every_folder(app):
    for folder in [app, *(p for p in app.rglob("*") if p.is_dir())]:
        write(folder, ".__nvfl_sig.json", "{}")
        write(folder, ".__nvfl_submitter.crt", "-----BEGIN CERTIFICATE-----\n")


LAYOUTS = {  # readable name -> (tamper(app, site), what the refusal must say)
    # bytecode and import shadows
    "bytecode-shadow-of-the-module": (plain(lambda a: bytecode(a, "custom/__pycache__/federated.cpython-311.pyc")), "folder custom/__pycache__/"),
    "bytecode-shadow-of-the-runner": (plain(lambda a: bytecode(a, "custom/__pycache__/caia_runner.cpython-311.pyc")), "folder custom/__pycache__/"),
    "empty-pycache-folder": (plain(lambda a: (a / "custom" / "__pycache__").mkdir()), "folder custom/__pycache__/"),
    "bytecode-beside-the-module": (plain(lambda a: bytecode(a, "custom/federated.pyc")), "holds custom/federated.pyc"),
    "bytecode-in-config": (plain(lambda a: bytecode(a, "config/__pycache__/x.cpython-311.pyc")), "folder config/__pycache__/"),
    "bytecode-at-the-app-root": (plain(lambda a: bytecode(a, "__pycache__/x.cpython-311.pyc")), "folder __pycache__/"),
    "sitecustomize": (plain(lambda a: write(a, "custom/sitecustomize.py")), "holds custom/sitecustomize.py"),
    "usercustomize": (plain(lambda a: write(a, "custom/usercustomize.py")), "holds custom/usercustomize.py"),
    "path-configuration-file": (plain(lambda a: write(a, "custom/evil.pth", "import os\n")), "holds custom/evil.pth"),
    "package-shadowing-the-module": (plain(lambda a: write(a, "custom/federated/__init__.py")), "folder custom/federated/"),
    "extension-module-shadowing-the-module": (plain(lambda a: write(a, "custom/federated.cpython-311-x86_64-linux-gnu.so", b"\x7fELF")),
                                              "holds custom/federated.cpython-311-x86_64-linux-gnu.so"),
    "module-shadowing-torch": (plain(lambda a: write(a, "custom/torch.py")), "holds custom/torch.py"),
    "package-shadowing-caia": (plain(lambda a: write(a, "custom/caia_jupyter/runtime.py")), "folder custom/caia_jupyter/"),
    "package-init-file": (plain(lambda a: write(a, "custom/__init__.py")), "holds custom/__init__.py"),
    "case-variant-of-the-module": (plain(lambda a: write(a, "custom/Federated.py")), "holds custom/Federated.py"),
    "lookalike-name-of-the-module": (plain(lambda a: write(a, "custom/feder\u0430ted.py")), "holds custom/feder\u0430ted.py"),
    # client configs
    "approved-config-copy-in-custom": (plain(lambda a: shutil.copy(a / "config" / "config_fed_client.json", a / "custom")),
                                       "holds custom/config_fed_client.json"),
    "approved-copy-in-custom-and-a-command-in-config": (
        plain(lambda a: (shutil.copy(a / "config" / "config_fed_client.json", a / "custom"),
                         write(a, "config/config_fed_client.json", json.dumps(EXTERNAL_PROCESS_CONFIG)))),
        "holds custom/config_fed_client.json"),
    "client-config-in-a-config-subfolder": (plain(lambda a: write(a, "config/site/config_fed_client.json", "{}")), "folder config/site/"),
    "client-config-as-conf": (plain(lambda a: write(a, "config/config_fed_client.conf", "{}")), "holds config/config_fed_client.conf"),
    "client-config-as-yaml": (plain(lambda a: write(a, "config/config_fed_client.yml", "{}")), "holds config/config_fed_client.yml"),
    "server-config-in-a-site-app": (plain(lambda a: write(a, "config/config_fed_server.json", "{}")), "holds config/config_fed_server.json"),
    "extra-file-in-config": (plain(lambda a: write(a, "config/extra.json", "{}")), "holds config/extra.json"),
    "client-config-with-a-command": (plain(lambda a: write(a, "config/config_fed_client.json", json.dumps(EXTERNAL_PROCESS_CONFIG))),
                                     "config_fed_client.json differs from the bundle's manifest"),
    # links and special files
    "module-as-a-symlink": (plain(lambda a: (shutil.move(a / "custom" / "federated.py", a.parent / "f.py"),
                                              os.symlink(a.parent / "f.py", a / "custom" / "federated.py"))),
                            "holds custom/federated.py, which is not a plain file"),
    "custom-folder-as-a-symlink": (plain(lambda a: replace_folder_by_link(a, "custom")), "holds custom, which is not a plain file"),
    "config-folder-as-a-symlink": (plain(lambda a: replace_folder_by_link(a, "config")), "holds config, which is not a plain file"),
    "manifest-as-a-symlink": (plain(lambda a: (shutil.move(a / "custom" / "manifest.json", a.parent / "m.json"),
                                                os.symlink(a.parent / "m.json", a / "custom" / "manifest.json"))), "not a caia bundle"),
    "named-pipe-in-custom": (plain(lambda a: os.mkfifo(a / "custom" / "pipe")), "holds custom/pipe, which is not a plain file"),
    "signature-file-as-a-folder": (plain(lambda a: (a / "custom" / ".__nvfl_sig.json").mkdir()), "folder custom/.__nvfl_sig.json/"),
    "signature-file-as-a-symlink": (plain(lambda a: os.symlink("/etc/hostname", a / "custom" / ".__nvfl_sig.json")),
                                    "holds custom/.__nvfl_sig.json, which is not a plain file"),
    # files added or missing
    "release-file-shipped-with-the-job": (plain(lambda a: write(a, RELEASE, "{}")), f"holds {RELEASE}"),
    "release-file-in-custom": (plain(lambda a: write(a, f"custom/{RELEASE}", "{}")), f"holds custom/{RELEASE}"),
    "unexpected-top-level-folder": (plain(lambda a: (a / "resources").mkdir()), "folder resources/"),
    "unexpected-file-at-the-app-root": (plain(lambda a: write(a, "meta.json", "{}")), "holds meta.json"),
    "unlisted-captured-pickle": (plain(lambda a: write(a, "custom/captured/x.pkl", b"\x80\x05N.")), "folder custom/captured/"),
    "missing-manifest": (plain(lambda a: (a / "custom" / "manifest.json").unlink()), "not a caia bundle"),
    "missing-module": (plain(lambda a: (a / "custom" / "federated.py").unlink()), "lacks federated.py"),
    "missing-runner": (plain(lambda a: (a / "custom" / "caia_runner.py").unlink()), "lacks caia_runner.py"),
    "missing-client-config": (plain(lambda a: (a / "config" / "config_fed_client.json").unlink()), "lacks config_fed_client.json"),
    "missing-requirements": (plain(lambda a: (a / "custom" / "requirements.txt").unlink()), "lacks requirements.txt"),
    # bytes changed
    "module-byte-flipped": (plain(flip("custom/federated.py")), "federated.py differs from the bundle's manifest"),
    "runner-byte-flipped": (plain(flip("custom/caia_runner.py")), "caia_runner.py differs from the bundle's manifest"),
    "requirements-byte-flipped": (plain(flip("custom/requirements.txt")), "requirements.txt differs from the bundle's manifest"),
    "manifest-setting-edited": (plain(lambda a: edit_manifest(a, lambda m: m["job"].update(rounds=99))),
                                "no reviewer of this site approved this bundle id (its reviewers approve it with `caia approve`)"),
    "manifest-not-json": (plain(lambda a: write(a, "custom/manifest.json", "{not json")), "not a caia bundle"),
    "manifest-with-a-duplicate-key": (plain(lambda a: write(a, "custom/manifest.json", (a / "custom" / "manifest.json").read_text()
                                                           .replace('{', '{"format": "caia-bundle/1", ', 1))), "not a caia bundle"),
    # approved, yet outside caia's file set
    "approved-runner-that-is-not-caias": (resigned(lambda a: write(a, "custom/caia_runner.py", fileset.RUNNER + "import os\n")),
                                          "caia_runner.py is not caia's site runner"),
    "approved-client-config-that-starts-a-command": (
        resigned(lambda a: write(a, "config/config_fed_client.json", json.dumps(EXTERNAL_PROCESS_CONFIG))),
        "config_fed_client.json is not caia's NVFLARE client config"),
    "approved-module-that-is-not-utf8": (resigned(lambda a: write(a, "custom/federated.py", (a / "custom" / "federated.py").read_bytes() + b"# \xff\n")),
                                         "federated.py line"),
    "approved-module-with-a-lookalike-name": (resigned(lambda a: write(a, "custom/federated.py", (a / "custom" / "federated.py").read_text()
                                                                       + "\n\ndef tr\u0430in(model, data, ctx):\n    return {}\n")),
                                              "name 'tr\u0430in' is not ASCII"),
    "approved-module-with-right-to-left-letters": (resigned(lambda a: write(a, "custom/federated.py", (a / "custom" / "federated.py").read_text()
                                                                            + "x = ['\u05d0', 0.001, 1000.0, '\u05d1'][1]\n")),
                                                   "right-to-left character U+05D0"),
    "approved-captured-name-ending-in-a-newline": (resigned(lambda a: (write(a, "custom/captured/x.pkl\n", b"\x80\x05N."),
                                                                        listing_opaque(a, "captured/x.pkl\n"))),
                                                   "'captured/x.pkl\\n' is not a bundle file"),
    "approved-extra-module-listed": (resigned(listing("helper.py")), "helper.py is not a bundle file"),
    "approved-sitecustomize-listed": (resigned(listing("sitecustomize.py")), "sitecustomize.py is not a bundle file"),
    "approved-captured-name-escaping": (resigned(listing("captured/../x.pkl", "captured")), "captured/../x.pkl is not a bundle file"),
    "approved-captured-file-not-opaque": (resigned(listing("captured/values.pkl", "captured")), "must have role 'captured' and be opaque"),
    "approved-module-given-another-role": (resigned(lambda a: edit_manifest(a, lambda m: m["files"]["federated.py"].update(role="runner"))),
                                           "manifest entry of federated.py must have role 'module'"),
}


def test_the_corpus_is_large_enough():
    assert len(LAYOUTS) >= 40


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_tampered_layout_is_refused_with_its_reason(deployed, app, name):
    _, _, site = deployed
    tamper, reason = LAYOUTS[name]
    tamper(app, site)
    with pytest.raises(Refusal) as refused:
        admit(app, site.path)
    assert refused.value.args[0].startswith("site-1 refused")
    assert reason in str(refused.value)
    assert str(app) not in str(refused.value) and str(site.path) not in str(refused.value)
    assert "bundle_id" not in read_json(app / RELEASE), "a refused app got a release"


def test_the_untouched_app_is_admitted_with_the_hashes_the_runtime_checks(deployed, app):
    built, _, site = deployed
    release = admit(app, site.path)
    assert release.bundle_id == built.id
    assert release.files == {name: entry["sha256"] for name, entry in built.manifest["files"].items()}
    assert json.loads((app / RELEASE).read_text())["files"] == release.files


def test_nvflare_signature_files_in_every_folder_are_admitted(deployed, app):
    _, _, site = deployed
    nvflare_signature_in_every_folder(app)
    assert admit(app, site.path).bundle_id == deployed[0].id


# -- a site's own files, malformed: that site refuses, or admits what is valid; never a crash ----------


def test_a_malformed_approval_beside_a_valid_one_does_not_stop_admission(deployed, app):
    built, _, site = deployed
    for name, statement in {"list": [], "number-time": {"issued_at": 5, "bundle_id": built.id}}.items():
        (site.approvals_dir / f"00-{name}.json").write_text(json.dumps({"statement": statement, "signature": "AAAA"}))
    (site.approvals_dir / "00-not-json.json").write_text("{")
    try:
        assert admit(app, site.path).bundle_id == built.id
    finally:
        for file in site.approvals_dir.glob("00-*.json"):
            file.unlink()


SITE_BREAKAGES = {
    "no-site-json": lambda s: (s.path / "site.json").unlink(),
    "site-json-not-json": lambda s: (s.path / "site.json").write_text("{"),
    "catalog-not-json": lambda s: (s.path / "catalog.json").write_text("["),
    "catalog-entry-without-a-path": lambda s: (s.path / "catalog.json").write_text(json.dumps({"datasets": {"tiny": {}}})),
    "catalog-entry-a-list": lambda s: (s.path / "catalog.json").write_text(json.dumps({"datasets": {"tiny": []}})),
    "released-csv-unreadable": lambda s: (s.path / "data.csv").write_bytes(b"\x00\xff\xfe binary \x00"),
    "released-csv-a-folder": lambda s: ((s.path / "data.csv").unlink(), (s.path / "data.csv").mkdir()),
    "released-csv-gone": lambda s: (s.path / "data.csv").unlink(),
    "approvals-folder-gone": lambda s: shutil.rmtree(s.approvals_dir),
}


@pytest.mark.parametrize("name", sorted(SITE_BREAKAGES))
def test_a_broken_site_directory_refuses_with_a_reason_and_no_site_path(deployed, app, tmp_path, name):
    built, _, _ = deployed
    site = make_site(tmp_path / "sites", "site-1")
    approve(site, built.id, {"tiny": "tiny"})
    SITE_BREAKAGES[name](site)
    with pytest.raises(Refusal) as refused:
        admit(app, site.path)
    assert str(tmp_path) not in str(refused.value)
    assert not (app / RELEASE).exists()


# -- what of a site's deploy detail reaches the researcher on a deployed federation -----------------

BUNDLE = "sha256:" + "ab" * 32
UNDEPLOYED = "site-1 could not deploy the job (NVFLARE's reason is kept at the site)"
DEPLOY_DETAILS = {  # readable name -> (site-1's deploy detail, the reason the researcher sees)
    "caias-refusal": (f"NVFLARE_ERROR: site-1 refused bundle {BUNDLE}: no reviewer of this site approved this bundle id (its reviewers approve it with `caia approve`)",
                      f"site-1 refused bundle {BUNDLE}: no reviewer of this site approved this bundle id (its reviewers approve it with `caia approve`)"),
    "caias-refusal-naming-paths-inside-the-app": (
        f"NVFLARE_ERROR: site-1 refused bundle {BUNDLE}: the deployed app holds the folder custom/__pycache__/, which is not part of the bundle",
        f"site-1 refused bundle {BUNDLE}: the deployed app holds the folder custom/__pycache__/, which is not part of the bundle"),
    "caias-refusal-of-the-job": ("NVFLARE_ERROR: site-1 refused the job: its guard could not check it (the site's log says why)",
                                 "site-1 refused the job: its guard could not check it (the site's log says why)"),
    "caias-misconfigured-guard": (f"NVFLARE_ERROR: {MISCONFIGURED}", f"site-1 refused the job: {MISCONFIGURED}"),
    "nvflare-exception-naming-the-sites-workspace": (
        "exception_occurred: exception [Errno 36] File name too long: '/srv/hospital-a/secure-enclave/nvflare/site-1/"
        "0a1b2c3d/app_site-1/custom/dddd/x.py' when deploying app app_site-1", UNDEPLOYED),
    "nvflare-error-that-is-not-caias": ("NVFLARE_ERROR: privacy scope 'x' is not allowed", UNDEPLOYED),
    "caias-wording-for-another-site": (f"NVFLARE_ERROR: site-2 refused bundle {BUNDLE}: no reviewer of this site approved this bundle id (its reviewers approve it with `caia approve`)",
                                       UNDEPLOYED),
    "caias-wording-without-nvflares-prefix": (f"site-1 refused bundle {BUNDLE}: no reviewer approved it", UNDEPLOYED),
    "caias-wording-holding-an-absolute-path": (f"NVFLARE_ERROR: site-1 refused bundle {BUNDLE}: cannot read '/data/site-1/patients.csv'",
                                               UNDEPLOYED),
    "caias-wording-holding-a-home-path": ("NVFLARE_ERROR: site-1 refused the job: see ~/caia/site-1/site.json", UNDEPLOYED),
    "caias-wording-holding-a-windows-path": ("NVFLARE_ERROR: site-1 refused the job: see D:\\caia\\site.json", UNDEPLOYED),
    "caias-wording-with-a-short-bundle-id": ("NVFLARE_ERROR: site-1 refused bundle sha256:abc: no reviewer", UNDEPLOYED),
    "caias-wording-too-long": (f"NVFLARE_ERROR: site-1 refused the job: {'x' * 3000}", UNDEPLOYED),
    "caias-wording-with-a-control-character": ("NVFLARE_ERROR: site-1 refused the job: a\x1b[8m hidden", UNDEPLOYED),
}


@pytest.mark.parametrize("name", sorted(DEPLOY_DETAILS))
def test_only_caias_own_refusal_for_that_site_reaches_the_researcher(name):
    detail, shown = DEPLOY_DETAILS[name]
    found = remote.admissions({"job_deploy_detail": ["server: OK", f"site-1: {detail}"]}, ["site-1"])
    assert found == {"site-1": {"state": "refused", "reason": shown}}


def test_an_nvflare_deploy_error_naming_the_sites_workspace_is_not_passed_on(tmp_path):
    """NVFLARE's AppDeployer fails on an app path that fits the site's staging folder but not its
    workspace, and its admin reply names the workspace (NVFLARE_SECURE_LOGGING unset, its default)."""
    import io
    import tempfile
    import zipfile

    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.utils.app_deployer import AppDeployer
    from nvflare.security.logging import secure_format_exception

    workspace = tmp_path / "hospital-a" / "secure-enclave" / "nvflare" / "site-1"
    for folder in ("startup", "local"):
        (workspace / folder).mkdir(parents=True)
    job_id = "0a1b2c3d-0000-4000-8000-000000000000"
    app_dir = Workspace(str(workspace), "site-1").get_app_dir(job_id)
    parts, left = [], 4100 - len(app_dir) - len("custom/") - len("/x.py")
    while left > 0:
        parts.append("d" * min(200, max(left - 1, 1)))
        left -= len(parts[-1]) + 1
    assert len(tempfile.gettempdir()) + 16 + len("custom/" + "/".join(parts) + "/x.py") < 4000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("config/config_fed_client.json", "{}")
        z.writestr("custom/" + "/".join(parts) + "/x.py", "x = 1\n")
    with pytest.raises(Exception) as failed:
        AppDeployer().deploy(Workspace(str(workspace), "site-1"), job_id, {"name": "j"}, "app_site-1", buffer.getvalue(), None)
    detail = f"site-1: exception_occurred: {secure_format_exception(failed.value)}"  # nvflare/private/fed/client/admin.py
    assert str(workspace) in detail

    reason = remote.admissions({"job_deploy_detail": ["server: OK", detail]}, ["site-1"])["site-1"]["reason"]
    assert reason == UNDEPLOYED


def test_a_site_that_deployed_is_approved_and_other_sites_lines_are_ignored():
    detail = ["server: OK", "site-1: OK", f"site-9: NVFLARE_ERROR: site-9 refused bundle {BUNDLE}: x", "not a site line"]
    assert remote.admissions({"job_deploy_detail": detail}, ["site-1", "site-2"]) == {"site-1": {"state": "approved"}}
