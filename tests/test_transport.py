"""Packing a bundle for transport and unpacking one from another machine (untrusted input)."""

import io
import stat
import struct
import time
import tracemalloc
import warnings
import zipfile

import pytest

from caia_jupyter.researcher import bundle, compose, transport, validation

MiB = 1 << 20


@pytest.fixture
def built(write_notebook, tmp_path):
    return compose.build(write_notebook("good"), tmp_path / "bundle")


@pytest.fixture
def packed(built, tmp_path):
    """The bytes of a good pack and its entries, to copy into forged archives."""
    path = transport.pack(built.path, tmp_path / "good.zip")
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    return path.read_bytes(), entries


def write_zip(path, entries, extra=()):
    """A zip holding (name or ZipInfo, bytes) pairs, duplicates allowed, as a forger would write it."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        for name, data in [*entries, *extra]:
            archive.writestr(name, data)
    return path


def rewrite_last_entry(data: bytes, file_size=None, name=None) -> bytes:
    """Rewrite the last entry's local header and directory record in place, as a forger would."""
    data = bytearray(data)
    local = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[-1].header_offset
    central = data.rfind(b"PK\x01\x02")
    if file_size is not None:
        struct.pack_into("<I", data, local + 22, file_size)
        struct.pack_into("<I", data, central + 24, file_size)
    if name is not None:  # as long as the old name
        data[local + 30:local + 30 + len(name)] = name
        data[central + 46:central + 46 + len(name)] = name
    return bytes(data)


def bomb(path, expanded=300 * MiB, name="bundle/federated.py"):
    """A zip of about 300 KiB whose one entry expands to `expanded` bytes of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(name, "w") as entry:
        for _ in range(expanded // MiB):
            entry.write(bytes(MiB))
    return path


def refused_in_one_line(caia, archive, target):
    """Unpack `archive` to `target` with the CLI; return its error line after checking nothing was written."""
    before = set(target.parent.iterdir())
    code, out, err = caia("unpack", archive, "-o", target)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert set(target.parent.iterdir()) == before  # no target, no partial folder
    return err


def test_pack_carries_the_bundle_and_only_the_records_that_may_travel(built, tmp_path):
    (built.records / "validation.json").write_text('{"bundle_id": "x"}')
    (built.records / "review.html").write_text("<script>alert(1)</script>")
    with zipfile.ZipFile(transport.pack(built.path, tmp_path / "a.zip")) as archive:
        names = set(archive.namelist())
    assert names == {f"bundle/{name}" for name in [
        "manifest.json", *built.manifest["files"], "records/build.json", "records/validation.json"]}


@pytest.mark.parametrize("link", ["records/validation.json", "records/review.html", "records/old", "notes.txt", "manifest.json"])
def test_pack_refuses_a_symlink_anywhere_in_the_bundle_and_writes_no_zip(built, tmp_path, caia, link):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_bytes(b"SECRET-BYTES-42")
    if link == "manifest.json":  # a link to an exact copy: the bundle would still verify
        (built.path / link).rename(secret / "key")
    (built.path / link).symlink_to(secret if link == "records/old" else secret / "key")
    code, out, err = caia("pack", built.path, "-o", tmp_path / "out.zip")
    assert code == 2 and len(err.strip().splitlines()) == 1 and link in err
    if link != "notes.txt":  # a file in the bundle's own part is first refused as not in the manifest
        assert f"{link} in bundle {built.path} is a symbolic link" in err
    assert not list(tmp_path.rglob("*.zip")) and not list(tmp_path.rglob("*.partial"))


def test_unpack_refuses_a_zip_bomb_in_bounded_memory(tmp_path, caia):
    archive = bomb(tmp_path / "bomb.zip")
    assert archive.stat().st_size < 400 * 1024
    tracemalloc.start()
    try:
        err = refused_in_one_line(caia, archive, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "expands more than 100 times" in err
    assert peak < 8 * MiB  # the expanded entry is 300 MiB


@pytest.mark.parametrize("claimed, reason", [
    (1024, "Bad CRC-32"),  # zipfile stops at the claimed size and the checksum differs
    (0xFFFF0000, "expands more than 100 times"),  # counted as it expands
])
def test_unpack_refuses_a_bomb_whose_headers_lie_about_its_size(tmp_path, caia, claimed, reason):
    forged = tmp_path / "forged.zip"
    forged.write_bytes(rewrite_last_entry(bomb(tmp_path / "bomb.zip").read_bytes(), file_size=claimed))
    tracemalloc.start()
    try:
        err = refused_in_one_line(caia, forged, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason in err and peak < 8 * MiB


def test_unpack_limits_the_total_size_and_the_number_of_entries(packed, tmp_path, caia, monkeypatch):
    _, entries = packed
    many = write_zip(tmp_path / "many.zip", entries, [(f"bundle/captured/v{n}.pkl", b"x") for n in range(300)])
    assert "entries, more than 256" in refused_in_one_line(caia, many, tmp_path / "out")
    monkeypatch.setattr(transport, "MAX_UNPACKED_BYTES", 4096)
    assert "expands to more than" in refused_in_one_line(caia, tmp_path / "good.zip", tmp_path / "out")


@pytest.mark.parametrize("case, extra, expected", [
    ("duplicate name", [("bundle/federated.py", b"import os\n")], "'bundle/federated.py' appears twice"),
    ("duplicate up to case", [("bundle/Federated.py", b"import os\n")], "'bundle/Federated.py' appears twice"),
    ("file and folder", [("bundle/federated.py/x", b"")], "'bundle/federated.py' is both a file and a folder"),
    ("absolute path", [("/bundle/x.py", b"")], "absolute path in entry '/bundle/x.py'"),
    ("parent folder", [("bundle/../x.py", b"")], "path leaving the folder in entry 'bundle/../x.py'"),
    ("backslash", [("bundle/..\\..\\x.py", b"")], "backslash in entry"),
    ("drive letter", [("bundle/C:x.py", b"")], "drive letter in entry 'bundle/C:x.py'"),
    ("empty part", [("bundle//x.py", b"")], "empty or '.' part in entry 'bundle//x.py'"),
    ("control character", [("bundle/x\ny.py", b"")], "control character in entry 'bundle/x\\ny.py'"),
    ("two top folders", [("other/x.py", b"")], "more than one top folder ('bundle', 'other')"),
    ("file at the top", [("x.py", b"")], "file outside the top folder in entry 'x.py'"),
    ("review with a script", [("bundle/records/review.html", b"<script>steal()</script>")],
     "entry 'bundle/records/review.html' is not a record that may travel"),
    ("record in a sub-folder", [("bundle/records/old/build.json", b"{}")], "'bundle/records/old/build.json' is not a record"),
    ("records in capitals", [("bundle/RECORDS/review.html", b"<script>")], "'bundle/RECORDS/review.html' is not a record"),
    ("symbolic link", [(zipfile.ZipInfo("bundle/records/validation.ipynb"), b"/etc/passwd")], "symbolic link in entry"),
    ("lzma", [(zipfile.ZipInfo("bundle/x.py"), b"")], "compression other than deflate"),
    ("long name", [("bundle/" + "/".join(["d" * 250] * 5) + "/x.py", b"")], "a name of 1266 characters (at most 1024)"),
    ("long part", [("bundle/" + "x" * 256, b"")], "a file or folder name longer than 255 characters"),
    ("deep path", [("bundle/" + "a/" * 8 + "x.py", b"")], "a path 10 levels deep (at most 8)"),
])
def test_unpack_refuses_unsafe_archives_in_one_line_writing_nothing(packed, tmp_path, caia, case, extra, expected):
    _, entries = packed
    if case == "symbolic link":
        extra[0][0].external_attr = (stat.S_IFLNK | 0o777) << 16
    if case == "lzma":
        extra[0][0].compress_type = zipfile.ZIP_LZMA
    err = refused_in_one_line(caia, write_zip(tmp_path / "forged.zip", entries, extra), tmp_path / "out")
    assert expected in err


def test_unpack_refuses_one_long_deep_entry_name_quickly_in_bounded_memory(tmp_path, caia):
    archive = tmp_path / "deep.zip"
    with zipfile.ZipFile(archive, "w") as z:  # ~32,000 levels: every parent folder of it would take ~1 GB
        z.writestr("top/" + "a/" * 32_000 + "f", b"")
    assert archive.stat().st_size < 200_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        err = refused_in_one_line(caia, archive, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "a name of 64005 characters (at most 1024) in entry 'top/a/a/" in err and len(err) < 400
    assert peak < 8 * MiB and time.perf_counter() - start < 5
    assert not (tmp_path / "out").exists()


def test_unpack_refuses_an_empty_entry_name(packed, tmp_path, caia):
    _, entries = packed
    archive = write_zip(tmp_path / "forged.zip", entries, [("Z", b"")])
    archive.write_bytes(rewrite_last_entry(archive.read_bytes(), name=b"\x00"))  # zipfile reads it as ""
    assert "empty name" in refused_in_one_line(caia, archive, tmp_path / "out")


def test_unpack_accepts_folder_entries_as_zip_tools_write_them(packed, tmp_path):
    _, entries = packed
    archive = write_zip(tmp_path / "tool.zip", [("bundle/", b""), ("bundle/records/", b""), *entries])
    assert transport.unpack(archive, tmp_path / "out").id == bundle.load(tmp_path / "bundle").id


def test_pack_refuses_a_bundle_unpack_would_refuse(built, tmp_path, caia, monkeypatch):
    monkeypatch.setattr(transport, "MAX_UNPACKED_BYTES", 4096)
    code, _, err = caia("pack", built.path, "-o", tmp_path / "big.zip")
    assert code == 2 and "`caia unpack` would refuse it" in err and not (tmp_path / "big.zip").exists()


@pytest.mark.slow
def test_no_local_path_travels_in_a_validated_pack(write_notebook, tmp_path):
    built = compose.build(write_notebook("good"))
    assert validation.validate(built).passed
    archive = transport.pack(built.path, tmp_path / "sent.zip")
    with zipfile.ZipFile(archive) as opened:
        assert {name.split("/", 1)[1] for name in opened.namelist()} >= {
            "records/build.json", "records/validation.json", "records/validation.ipynb"}
        for name in opened.namelist():
            text = opened.read(name).decode("utf-8", "replace")
            assert str(tmp_path) not in text and "/tmp/" not in text, name
    received = transport.unpack(archive, tmp_path / "elsewhere" / "b")
    assert validation.require_passed(received)["bundle_id"] == built.id
