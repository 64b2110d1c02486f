"""Site data as hospitals export it: one reader of dataset tables for add-dataset, approve, admission,
`ctx.dataset` and the researcher's samples (separators, decimal marks, encodings, Parquet), with
column kinds read from the whole file, the same way everywhere."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from caia_jupyter.contracts import schema
from caia_jupyter.contracts.errors import SiteError
from caia_jupyter.researcher import compose, validation
from caia_jupyter.site import sites
from caia_jupyter.site.context import Context
from caia_jupyter.site.guard import Refusal, admit
from caia_jupyter.targets.job import build_job
from caia_jupyter.targets.submit import submit
from conftest import add_reviewer, approve, reviewer_key

CASES = Path(__file__).resolve().parent / "cases"
CASE_04 = CASES / "04-site-with-no-usable-rows"
CASE_11 = CASES / "11-semicolon-decimal-comma-site-csv"
CASE_13 = CASES / "13-missing-values-after-inference-window"
TUMOURS = [{"name": "size", "kind": "float"}, {"name": "density", "kind": "float"}, {"name": "malignant", "kind": "int"}]
AGE_NOTE = {"age": schema.INT_WITH_MISSING}


def new_site(root: Path, name: str = "site-1") -> sites.Site:
    """A site at root/sites/name trusting its reviewer, whose key lies at root/reviewers/name.key."""
    site = sites.init(root / "sites" / name, name)
    add_reviewer(site, reviewer_key(site))
    return site


def catalog_file(site) -> dict:
    return json.loads((site.path / "catalog.json").read_text())


def context(site, dataset_id, columns, name="tumours") -> Context:
    """A ctx as the runtime makes it from a release, reading the catalog entry as the guard does."""
    _, source = sites.read_dataset(site, dataset_id)
    return Context(site.name, {}, {name: {**source, "columns": columns}})


def built_case(case: Path, folder: Path):
    """The case's notebook, bundled (in a copy: a build writes beside the notebook)."""
    shutil.copytree(case, folder)
    return compose.build(next(folder.glob("*.ipynb")))


def admission(built, site, tmp_path):
    """Admit the deployed app of `built` at `site`, as NVFLARE's app validator does."""
    job = build_job(built, [site.name], tmp_path / f"job-{site.name}", name="caia-site-data")
    return admit(job / f"app_{site.name}", site.path)


# case 11: a `;`-separated export with decimal commas

def test_semicolon_decimal_comma_export_reads_as_three_numeric_columns(tmp_path, caia):
    site = new_site(tmp_path)
    export = CASE_11 / "site_data" / "tumours_site.csv"
    code, out, err = caia("site", "add-dataset", site.path, "tumours", export)
    assert code == 0, err
    assert "';'-separated, decimal ','" in out and "size (float), density (float), malignant (int)" in out
    entry = catalog_file(site)["datasets"]["tumours"]
    assert entry["columns"] == TUMOURS and "size;density;malignant" not in json.dumps(entry)
    assert entry["read"] == {"format": "csv", "separator": ";", "decimal": ",", "encoding": "utf-8", "compression": None}
    frame = context(site, "tumours", TUMOURS).dataset("tumours")
    assert list(frame.columns) == ["size", "density", "malignant"]
    assert frame["size"].iloc[:3].tolist() == [1.0, 1.35, 1.7] and frame["density"].iloc[1] == 0.35
    assert schema.columns_of(CASE_11 / "samples" / "tumours.csv") == TUMOURS  # what the bundle requests


def test_case_11_bundle_is_admitted_at_a_site_with_the_semicolon_export(tmp_path):
    built = built_case(CASE_11, tmp_path / "case")
    site = new_site(tmp_path)
    sites.add_dataset(site, "tumours", CASE_11 / "site_data" / "tumours_site.csv")
    approve(site, built.id, {"tumours": "tumours"})
    release = admission(built, site, tmp_path)
    assert release.datasets["tumours"]["read"]["separator"] == ";"
    frame = Context(site.name, {}, release.datasets).dataset("tumours")
    assert schema.schema_of(frame) == TUMOURS and len(frame) == 12


def test_a_header_that_does_not_split_like_its_rows_is_refused_naming_the_separators(tmp_path):
    site = new_site(tmp_path)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("size;density;malignant\n1,00,0,20,0\n1,35,0,35,1\n")
    with pytest.raises(SiteError) as refused:
        sites.add_dataset(site, "t", mixed)
    assert "cannot tell its column separator" in str(refused.value) and "';'" in str(refused.value)
    assert catalog_file(site)["datasets"] == {}


def test_decimal_marks_written_both_ways_are_refused(tmp_path):
    both = tmp_path / "both.csv"
    both.write_text("a;b\n1,5;2.5\n")
    with pytest.raises(SiteError, match=r"both as 1,5 and as 1\.5; export it with one decimal mark"):
        schema.detect(both)


@pytest.mark.parametrize("separator", ["\t", "|", ";", ","])
def test_every_separator_reads_the_same_table(tmp_path, separator):
    table = tmp_path / "t.csv"
    table.write_text(separator.join(["size", "label", "note"]) + "\n"
                     + "".join(separator.join([f"{i}.5", str(i % 2), f"n{i}"]) + "\n" for i in range(5)))
    read = schema.detect(table)
    assert read["separator"] == separator and read["decimal"] == "."
    frame = schema.read_table(table, read)
    assert schema.schema_of(frame) == [{"name": "size", "kind": "float"}, {"name": "label", "kind": "int"},
                                       {"name": "note", "kind": "str"}]
    assert frame["size"].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_tab_export_with_decimal_commas(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text("size\tlabel\n1,5\t0\n2,25\t1\n")
    assert schema.read_table(table)["size"].tolist() == [1.5, 2.25]


def test_gzipped_semicolon_export(tmp_path):
    table = tmp_path / "t.csv.gz"
    with gzip.open(table, "wt", encoding="utf-8") as file:
        file.write("size;label\n1,5;0\n2,25;1\n")
    read = schema.detect(table)
    assert read["compression"] == "gzip" and read["separator"] == ";" and read["decimal"] == ","
    assert schema.read_table(table, read)["size"].tolist() == [1.5, 2.25]


def test_a_ragged_row_is_refused_in_one_line_naming_the_way_it_was_read(tmp_path):
    table = tmp_path / "ragged.csv"
    table.write_text("a;b\n" + "1;2\n" * 20_000 + "5;6;7\n")  # past the head that decides the separator
    with pytest.raises(SiteError, match=r"is not readable CSV \(';'-separated, decimal '\.', UTF-8\): .*line 20002") as refused:
        schema.read_table(table)
    assert "\n" not in str(refused.value)


def test_one_column_table_reads_as_one_column(tmp_path):
    table = tmp_path / "age.csv"
    table.write_text("age\n40\n47\n")
    assert schema.columns_of(table) == [{"name": "age", "kind": "int"}]



@pytest.mark.parametrize("text", ["age,size\n61,2.5,\n70,3.1,\n", "age;size\n61;2,5;\n70;3,1;\n",
                                  "age|size\n61|2.5|\n70|3.1|\n"])
def test_rows_ending_in_a_separator_keep_their_columns(tmp_path, text):
    """Some exports end every row with a separator: the values stay under their names."""
    site = new_site(tmp_path)
    table = tmp_path / "trailing.csv"
    table.write_text(text)
    entry = sites.add_dataset(site, "t", table)
    assert entry["columns"] == [{"name": "age", "kind": "int"}, {"name": "size", "kind": "float"}]
    frame, _ = sites.read_dataset(site, "t")
    assert frame["age"].tolist() == [61, 70] and frame["size"].tolist() == [2.5, 3.1]


def test_a_one_column_file_of_decimal_commas_is_refused_as_ambiguous(tmp_path, caia):
    site = new_site(tmp_path)
    table = tmp_path / "weight.csv"
    table.write_text("weight\n1,5\n2,5\n")
    code, out, err = caia("site", "add-dataset", site.path, "w", table)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"dataset file {table} has one column, but its rows hold ','" in err
    assert "decimal comma or two values; write decimals as 1.5" in err
    assert catalog_file(site)["datasets"] == {}


def test_a_value_beyond_the_header_is_refused_not_dropped(tmp_path):
    table = tmp_path / "extra.csv"
    table.write_text("a,b\n1,2,\n3,4,5\n")  # the first row's empty extra value is a trailing separator; 5 is not
    with pytest.raises(SiteError, match="has rows with more values than its header names; name every column"):
        schema.read_table(table)


def test_decimal_commas_only_past_the_head_make_a_float_column(tmp_path):
    table = tmp_path / "late_comma.csv"
    table.write_text("size;label\n" + "1;2\n" * 20_000 + "1,5;2\n")  # the head shows only whole numbers
    read = schema.detect(table)
    assert read["decimal"] == ","
    frame = schema.read_table(table, read)
    assert schema.schema_of(frame) == [{"name": "size", "kind": "float"}, {"name": "label", "kind": "int"}]
    assert frame["size"].iloc[-1] == 1.5


@pytest.mark.parametrize("first, later", [("1,5", "1.5"), ("1.5", "1,5")])
def test_both_decimal_marks_are_refused_wherever_the_second_one_is(tmp_path, first, later):
    table = tmp_path / "both_late.csv"
    table.write_text("size;label\n" + f"{first};2\n" * 20_000 + f"{later};2\n")
    with pytest.raises(SiteError, match=r"both as 1,5 and as 1\.5; export it with one decimal mark"):
        schema.read_table(table)


def test_a_file_that_gained_decimal_commas_since_it_was_registered_is_refused(tmp_path):
    site = new_site(tmp_path)
    table = tmp_path / "t.csv"
    table.write_text("code;label\nA7;1\n")
    sites.add_dataset(site, "t", table)
    ctx = context(site, "t", [{"name": "code", "kind": "str"}], name="t")
    table.write_text("code;label\nA7;1\n1,5;2\n")
    with pytest.raises(SiteError, match=r"writes decimal numbers as 1,5 but is recorded to be read with decimal '\.'; "
                                        r"register it again with `caia site add-dataset --replace`") as changed:
        ctx.dataset("t")
    assert changed.value.failure == "dataset_unreadable"


def test_a_table_wider_than_the_sniffed_head_registers(tmp_path):
    site = new_site(tmp_path)
    table = tmp_path / "genes.csv"
    names = [f"gene_{i:05d}" for i in range(12_000)]  # a header line of 132 KB
    table.write_text(";".join(names) + "\n" + ";".join("1,5" for _ in names) + "\n")
    entry = sites.add_dataset(site, "genes", table)
    assert entry["read"]["separator"] == ";" and entry["read"]["decimal"] == ","
    assert entry["columns"] == [{"name": name, "kind": "float"} for name in names]


def test_a_truncated_gzip_export_is_refused_in_one_line_everywhere(tmp_path, caia):
    rows = "".join(f"{i * 0.37 % 1:.6f},{i * 7919 % 10007}\n" for i in range(60_000))
    whole = gzip.compress(("size,label\n" + rows).encode())
    table = tmp_path / "t.csv.gz"
    table.write_bytes(whole[:len(whole) // 2])  # the head decompresses; the end of the stream is missing
    site = new_site(tmp_path)
    code, out, err = caia("site", "add-dataset", site.path, "t", table)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"dataset file {table} is not readable CSV (','-separated" in err
    assert "Compressed file ended before the end-of-stream marker" in err
    assert catalog_file(site)["datasets"] == {}
    table.write_bytes(whole)
    sites.add_dataset(site, "t", table)
    ctx = context(site, "t", [{"name": "size", "kind": "float"}], name="t")
    table.write_bytes(whole[:len(whole) // 2])  # cut short after admission
    with pytest.raises(SiteError, match="is not readable CSV") as cut:
        ctx.dataset("t")
    assert cut.value.failure == "dataset_unreadable"


def test_a_csv_whose_first_column_is_named_par1_is_a_csv(tmp_path):
    table = tmp_path / "genes.csv"
    table.write_text("PAR1,age\n1,2\n3,4\n")
    assert schema.detect(table)["format"] == "csv"
    assert schema.columns_of(table) == [{"name": "PAR1", "kind": "int"}, {"name": "age", "kind": "int"}]


def test_parquet_is_known_by_its_magic_at_both_ends_or_by_its_name(tmp_path):
    data = tmp_path / "export.bin"
    pd.DataFrame({"a": range(100)}).to_parquet(data)
    assert schema.detect(data) == {"format": "parquet"}
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data.read_bytes()[:200])  # a copy cut short: still Parquet, refused as such
    with pytest.raises(SiteError, match="is not readable Parquet"):
        schema.read_table(cut)


# encodings

def test_utf8_with_byte_order_mark_reads_clean_column_names(tmp_path):
    site = new_site(tmp_path)
    table = tmp_path / "bom.csv"
    table.write_bytes("\ufeffsize,density,malignant\n1.5,0.2,1\n2.5,0.3,0\n".encode())
    entry = sites.add_dataset(site, "tumours", table)
    assert entry["read"]["encoding"] == "utf-8-sig" and entry["columns"] == TUMOURS
    assert list(context(site, "tumours", TUMOURS).dataset("tumours").columns) == ["size", "density", "malignant"]


def test_latin1_export_is_refused_naming_the_fix(tmp_path, caia):
    site = new_site(tmp_path)
    table = tmp_path / "latin.csv"
    table.write_bytes("ville;taille\nSaint-Étienne;1,5\n".encode("latin-1"))
    code, out, err = caia("site", "add-dataset", site.path, "t", table)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "is not UTF-8 text" in err and f"iconv -f latin1 -t utf-8 {table} >" in err
    assert catalog_file(site)["datasets"] == {}


def test_latin1_byte_past_the_sniffed_head_is_refused_the_same_way(tmp_path):
    table = tmp_path / "late.csv"
    table.write_bytes(b"a,b\n" + b"1,x\n" * 30_000 + "2,\u00e9\n".encode("latin-1"))
    with pytest.raises(SiteError, match="is not UTF-8 text.*iconv -f latin1 -t utf-8"):
        schema.read_table(table)


def test_utf16_export_is_refused_naming_the_fix(tmp_path):
    table = tmp_path / "u16.csv"
    table.write_bytes("a,b\n1,2\n".encode("utf-16"))
    with pytest.raises(SiteError, match="is UTF-16 text; re-save it as UTF-8, e.g. `iconv -f utf-16 -t utf-8"):
        schema.detect(table)


# case 04, site-2: empty exports

def test_header_only_csv_is_refused_at_add_dataset(tmp_path, caia):
    site = new_site(tmp_path)
    code, out, err = caia("site", "add-dataset", site.path, "tumours", CASE_04 / "site_data" / "site-2.csv")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "the CSV has a header but no rows" in err
    assert catalog_file(site)["datasets"] == {}


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xef\xbb\xbf"])
def test_empty_file_is_refused_at_add_dataset(tmp_path, content):
    site = new_site(tmp_path)
    table = tmp_path / "empty.csv"
    table.write_bytes(content)
    with pytest.raises(SiteError, match="is empty; export the table with a header row and its rows"):
        sites.add_dataset(site, "t", table)


def test_a_spreadsheet_is_refused_naming_what_it_is(tmp_path):
    book = tmp_path / "book.xlsx"
    book.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(SiteError, match=r"is a ZIP archive \(an Excel workbook\?\); save the sheet as CSV"):
        schema.detect(book)


# case 13: blanks after any inference window

@pytest.mark.parametrize("export", ["early_gap.csv", "late_gap.csv"])
def test_kinds_agree_at_add_dataset_approve_admission_and_ctx(tmp_path, caia, export):
    built = built_case(CASE_13, tmp_path / "case")
    assert {c["name"]: c["kind"] for c in built.manifest["datasets"]["tumours"]["columns"]}["age"] == "int"
    site = new_site(tmp_path)
    entry = sites.add_dataset(site, "tumours", CASE_13 / "site_data" / export)
    kinds = entry["columns"]
    assert {c["name"]: c["kind"] for c in kinds}["age"] == "float" and entry["notes"] == AGE_NOTE

    # approve: the reviewer is told before signing, and nothing is signed
    code, out, err = caia("approve", built.path, "--site", site.path, "--key", reviewer_key(site),
                          "--dataset", "tumours")
    assert code == 2 and err.count("\n") == 1 and "nothing was signed" in err
    assert "column 'age' is float, requested int: it holds integers with missing values" in err
    assert list(site.approvals_dir.iterdir()) == []

    # admission: refused, with the same reason, even when an approval was signed past the CLI
    approve(site, built.id, {"tumours": "tumours"})
    with pytest.raises(Refusal) as refused:
        admission(built, site, tmp_path)
    assert "column 'age' is float, requested int: it holds integers with missing values" in str(refused.value)

    # ctx.dataset reads the same kinds, and names the same reason
    frame, _ = sites.read_dataset(site, "tumours")
    assert schema.schema_of(frame) == kinds
    assert schema.schema_of(context(site, "tumours", kinds).dataset("tumours")) == kinds
    with pytest.raises(SiteError, match="integers with missing values") as failed:
        context(site, "tumours", built.manifest["datasets"]["tumours"]["columns"]).dataset("tumours")
    assert failed.value.failure == "schema_changed"


def test_a_float_column_with_decimals_is_not_called_integers_with_missing_values():
    frame = pd.DataFrame({"age": [40.5, None, 41.0], "n": [1.0, 2.0, 3.0]})
    assert schema.mismatches([{"name": "age", "kind": "int"}, {"name": "n", "kind": "int"}], frame) == [
        "column 'age' is float, requested int", "column 'n' is float, requested int"]
    assert schema.notes_of(frame) == {}


def test_a_text_value_after_many_rows_makes_the_column_text_everywhere(tmp_path):
    table = tmp_path / "late_text.csv"
    table.write_text("code\n" + "1\n" * 150_000 + "A7\n")
    assert schema.columns_of(table) == [{"name": "code", "kind": "str"}]


# Parquet

def test_parquet_round_trip_with_kinds(tmp_path, caia):
    site = new_site(tmp_path)
    source = pd.DataFrame({
        "age": pd.array([40, 47, 54], dtype="int64"),
        "size": [1.0, 1.35, 1.7],
        "smoker": [True, False, True],
        "centre": ["a", "b", "c"],
        "seen": pd.to_datetime(["2024-01-02", "2024-03-04", "2024-05-06"]),
        "stage": pd.array([1, None, 3], dtype="Int64"),
    })
    table = tmp_path / "tumours.parquet"
    source.to_parquet(table)
    code, out, err = caia("site", "add-dataset", site.path, "t", table, "--json")
    assert code == 0, err
    entry = json.loads(out)
    assert entry["read"] == {"format": "parquet"} and entry["notes"] == {"stage": schema.INT_WITH_MISSING}
    kinds = [{"name": "age", "kind": "int"}, {"name": "size", "kind": "float"}, {"name": "smoker", "kind": "bool"},
             {"name": "centre", "kind": "str"}, {"name": "seen", "kind": "datetime"}, {"name": "stage", "kind": "float"}]
    assert entry["columns"] == kinds
    frame = context(site, "t", kinds, name="t").dataset("t")
    assert schema.schema_of(frame) == kinds
    assert frame["age"].tolist() == [40, 47, 54] and frame["smoker"].tolist() == [True, False, True]
    assert frame["centre"].tolist() == ["a", "b", "c"] and frame["seen"].iloc[1] == pd.Timestamp("2024-03-04")
    assert frame["stage"].iloc[0] == 1.0 and pd.isna(frame["stage"].iloc[1])


def test_empty_parquet_is_refused(tmp_path):
    table = tmp_path / "none.parquet"
    pd.DataFrame({"a": pd.array([], dtype="int64")}).to_parquet(table)
    with pytest.raises(SiteError, match="the Parquet file has columns but no rows"):
        schema.read_table(table)


# the catalog: no silent re-pointing, and later reads are the recorded read

def test_add_dataset_refuses_to_repoint_an_id_unless_told(tmp_path, caia):
    site = new_site(tmp_path)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("a,b\n1,2\n")
    second.write_text("a;b\n1,5;2\n")
    assert caia("site", "add-dataset", site.path, "d", first)[0] == 0
    code, out, err = caia("site", "add-dataset", site.path, "d", second)
    assert code == 2 and err.count("\n") == 1
    assert f"already has dataset d at {first}" in err and "--replace" in err
    assert catalog_file(site)["datasets"]["d"]["path"] == "../../first.csv"
    assert caia("site", "add-dataset", site.path, "d", first)[0] == 0  # the same file again: its columns now
    assert caia("site", "add-dataset", site.path, "d", second, "--replace")[0] == 0
    assert catalog_file(site)["datasets"]["d"]["path"] == "../../second.csv"


def test_a_wrong_path_names_the_path_and_the_fix(tmp_path, caia):
    site = new_site(tmp_path)
    code, _, err = caia("site", "add-dataset", site.path, "d", tmp_path / "typo.csv")
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'typo.csv'} does not exist" in err and "catalog" not in err
    assert catalog_file(site)["datasets"] == {}


def test_ctx_reads_the_recorded_way_and_names_the_failure_category(tmp_path):
    site = new_site(tmp_path)
    table = tmp_path / "t.csv"
    table.write_text("size;density;malignant\n1,5;0,2;1\n")
    sites.add_dataset(site, "tumours", table)
    ctx = context(site, "tumours", TUMOURS)
    assert ctx.dataset("tumours")["size"].tolist() == [1.5]
    table.write_text("size,density,malignant\n1.5,0.2,1\n")  # re-exported another way since admission
    with pytest.raises(SiteError, match="no longer matches the approved schema") as changed:
        ctx.dataset("tumours")
    assert changed.value.failure == "schema_changed"
    table.write_bytes("size;density;malignant\n1,5;0,2;\xe9\n".encode("latin-1"))
    with pytest.raises(SiteError, match="is not UTF-8 text") as unreadable:
        ctx.dataset("tumours")
    assert unreadable.value.failure == "dataset_unreadable"
    table.unlink()
    with pytest.raises(SiteError, match="does not exist") as missing:
        ctx.dataset("tumours")
    assert missing.value.failure == "dataset_unreadable"


def test_a_catalog_entry_from_before_the_read_was_recorded_is_detected_alike(tmp_path):
    site = new_site(tmp_path)
    sites.add_dataset(site, "tumours", CASE_11 / "site_data" / "tumours_site.csv")
    raw = catalog_file(site)
    del raw["datasets"]["tumours"]["read"]
    (site.path / "catalog.json").write_text(json.dumps(raw))
    frame, source = sites.read_dataset(site, "tumours")
    assert source["read"]["separator"] == ";" and schema.schema_of(frame) == TUMOURS


def test_a_malformed_recorded_read_is_refused(tmp_path):
    with pytest.raises(SiteError, match="is recorded wrongly"):
        schema.read_table(CASE_11 / "site_data" / "tumours_site.csv", {"format": "csv", "separator": "x"})


# end to end on NVFLARE's simulator

@pytest.mark.slow
def test_parquet_and_semicolon_sites_train_and_the_late_gap_site_is_refused(tmp_path):
    """Case 13's notebook at three sites: site-1 holds its data as Parquet, site-2 as a `;`,
    decimal-comma export, site-3 the late-gap CSV, which is refused before any code runs there."""
    built = built_case(CASE_13, tmp_path / "case")
    assert validation.validate(built).passed
    sample = pd.read_csv(CASE_13 / "samples" / "tumours.csv")
    made = [new_site(tmp_path, name) for name in ("site-1", "site-2", "site-3")]
    sample.to_parquet(tmp_path / "site-1.parquet")
    sample.to_csv(tmp_path / "site-2.csv", sep=";", decimal=",", index=False)
    exports = [tmp_path / "site-1.parquet", tmp_path / "site-2.csv", CASE_13 / "site_data" / "late_gap.csv"]
    for site, export in zip(made, exports):
        sites.add_dataset(site, "tumours", export)
        approve(site, built.id, {"tumours": "tumours"})
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    assert run.sites == {"site-1": "done", "site-2": "done", "site-3": "refused"}
    assert "column 'age' is float, requested int: it holds integers with missing values" in run.refusals["site-3"]
    assert set(run.metrics()["site"]) == {"site-1", "site-2"}
