"""Dataset standards: declared in the notebook, hashed in the bundle, checked on the sample, shown in
the review, and checked by the sites (`caia site check`, the guard at admission) as counts per rule."""

import json

import pytest

import corpus
from caia_jupyter.contracts.errors import CaiaError, ContractError, NotebookError
from caia_jupyter.contracts.standard import read_standard
from caia_jupyter.researcher import compose, validation
from caia_jupyter.reviewer import review, signing
from caia_jupyter.site import audit, sites
from caia_jupyter.site.guard import Refusal, admit
from caia_jupyter.targets.job import build_job
from conftest import approve, make_site

STANDARD = {
    "fields": [
        {"name": "x1", "type": "number", "constraints": {"required": True}},
        {"name": "x2", "type": "number"},
        {"name": "label", "type": "integer", "constraints": {"required": True, "enum": [0, 1]}},
        {"name": "age", "type": "integer", "unit": "years", "description": "age at diagnosis",
         "constraints": {"required": True, "minimum": 0, "maximum": 120}},
        {"name": "stage", "type": "string", "constraints": {"enum": ["I", "II", "III", "IV"]}},
    ],
    "missingValues": [""],
}
STAGES = ["I", "II", "III", "IV"]
OUT_OF_RANGE = [187, 203, 311, 999, 451, -17, -42]  # 5 above the maximum, 2 below the minimum
UNKNOWN_STAGES = ["Z9", "Q7"]


def table(ages, stages) -> str:
    rows = [f"{i * 0.1:.1f},{(i % 7) * 0.3:.1f},{i % 2},{age},{stage}" for i, (age, stage) in enumerate(zip(ages, stages))]
    return "x1,x2,label,age,stage\n" + "\n".join(rows) + "\n"


SAMPLE = table([40 + i for i in range(24)], [STAGES[i % 4] for i in range(24)])
BROKEN = table([40 + i for i in range(23)] + OUT_OF_RANGE, [STAGES[i % 4] for i in range(28)] + UNKNOWN_STAGES)


def notebook(folder, standard=STANDARD, sample=SAMPLE):
    path = corpus.write("good", folder)
    (folder / "samples" / "tiny.csv").write_text(sample)
    (folder / "tiny.schema.json").write_text(json.dumps(standard, indent=2))
    text = path.read_text().replace("param.lr=0.1", "param.lr=0.1 standard.tiny=tiny.schema.json")
    path.write_text(text)
    return path


def assert_no_value(text: str):
    for value in [*OUT_OF_RANGE, *UNKNOWN_STAGES]:
        assert str(value) not in text


def test_the_standard_is_a_hashed_bundle_file_named_by_its_dataset(tmp_path):
    built = compose.build(notebook(tmp_path / "nb"))
    assert built.manifest["datasets"]["tiny"]["standard"] == "standards/tiny.schema.json"
    assert built.manifest["files"]["standards/tiny.schema.json"]["role"] == "standard"
    assert (built.path / "standards" / "tiny.schema.json").read_bytes() == (tmp_path / "nb" / "tiny.schema.json").read_bytes()
    edited = json.loads((tmp_path / "nb" / "tiny.schema.json").read_text())
    edited["fields"][3]["constraints"]["maximum"] = 110
    (tmp_path / "nb" / "tiny.schema.json").write_text(json.dumps(edited))
    assert compose.build(tmp_path / "nb" / "good.ipynb").id != built.id


@pytest.mark.parametrize("data, problem", [
    (b"{", "is not JSON"),
    (b'{"fields": []}', "is not a Table Schema"),
    (b'{"fields": [{"name": "age", "type": "integr"}]}', 'field type "integr" is not supported'),
    (b'{"fields": [{"name": "age", "type": "year"}]}', "which caia does not check"),
    (b'{"fields": [{"name": "age", "type": "integer", "constraints": {"unique": true}}]}', "constraint 'unique'"),
    (b'{"fields": [{"name": "age", "type": "integer", "constraints": {"maximum": "old"}}]}', "no bound for type integer"),
    (b'{"fields": [{"name": "s", "type": "string", "constraints": {"pattern": "("}}]}', "pattern RE2 cannot compile"),
    (b'{"fields": [{"name": "pid", "type": "string", "constraints": {"pattern": "(?!ZZ99-7777$).*"}}]}',
     "field 'pid' has a pattern RE2 cannot compile (invalid perl operator: (?!); caia checks patterns in RE2 syntax"),
    (b'{"fields": [{"name": "a", "type": "string", "a": 1, "a": 2}]}', "duplicate key"),
])
def test_a_malformed_standard_is_refused_in_one_line_naming_the_file(data, problem):
    with pytest.raises(ContractError) as caught:
        read_standard(data, "tiny.schema.json")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("standard tiny.schema.json: ") and problem in message
    assert message.endswith("`caia standard infer SAMPLE.csv -o FILE`)")


def test_a_standard_whose_fields_are_not_the_samples_columns_is_refused(tmp_path):
    fields = {**STANDARD, "fields": STANDARD["fields"][:4]}
    with pytest.raises(NotebookError, match="^standard tiny.schema.json of dataset 'tiny' lacks the sample's column 'stage'"):
        compose.build(notebook(tmp_path / "nb", fields))


def test_a_standard_of_no_requested_dataset_is_refused(tmp_path):
    path = notebook(tmp_path / "nb")
    path.write_text(path.read_text().replace("standard.tiny=", "standard.tinny="))
    with pytest.raises(NotebookError, match="standard.tinny= names no requested dataset"):
        compose.build(path)


def test_a_sample_breaking_its_standard_fails_validation_naming_the_rules(tmp_path):
    built = compose.build(notebook(tmp_path / "nb", sample=BROKEN))
    result = validation.validate(built)
    assert not result.passed
    assert result.error == ("stage standard: ContractError: the sample of dataset 'tiny' breaks its standard: "
                            "age minimum (2 rows), age maximum (5 rows), stage enum (2 rows); fix the data or the standard")


def test_the_review_shows_the_standard_as_a_table(tmp_path):
    built = compose.build(notebook(tmp_path / "nb"))
    nb = review.review_notebook(built)
    text = next(c.source for c in nb.cells if "| allowed values |" in c.source)
    assert '"maximum": 120' in text  # the file in full, below its table
    assert "| field | type | required | range | allowed values | unit | description |" in text
    row = next(line for line in text.splitlines() if line.startswith("| age "))
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "age", "integer", "yes", "&#8805; 0 and &#8804; 120".replace("&#8805;", "≥").replace("&#8804;", "≤"),
        "", "years", "age at diagnosis"]


def test_infer_writes_a_starting_standard_and_refuses_to_overwrite(tmp_path, caia):
    (tmp_path / "s.csv").write_text(SAMPLE.replace(",40,I", ",,I"))
    code, out, err = caia("standard", "infer", tmp_path / "s.csv", "-o", tmp_path / "s.schema.json")
    assert code == 0, err
    inferred = json.loads((tmp_path / "s.schema.json").read_text())
    assert inferred["fields"] == [
        {"name": "x1", "type": "number", "constraints": {"required": True}},
        {"name": "x2", "type": "number", "constraints": {"required": True}},
        {"name": "label", "type": "integer", "constraints": {"required": True}},
        {"name": "age", "type": "integer"},
        {"name": "stage", "type": "string", "constraints": {"required": True}},
    ]
    read_standard((tmp_path / "s.schema.json").read_bytes(), "s.schema.json")
    assert caia("standard", "infer", tmp_path / "s.csv", "-o", tmp_path / "s.schema.json")[0] == 2


def broken_site(root, name="site-1"):
    return make_site(root, name, BROKEN)


def test_site_check_reports_counts_per_rule_and_no_value(tmp_path, caia):
    site = broken_site(tmp_path / "sites")
    (tmp_path / "std.json").write_text(json.dumps(STANDARD))
    code, out, err = caia("site", "check", site.path, "--standard", tmp_path / "std.json", "--json")
    assert code == 1, err
    assert json.loads(out) == {"site": "site-1", "conforms": False, "datasets": {"tiny": {"conforms": False, "violations": [
        {"field": "age", "rule": "minimum", "rows": 2}, {"field": "age", "rule": "maximum", "rows": 5},
        {"field": "stage", "rule": "enum", "rows": 2}]}}}
    assert_no_value(out + err)
    code, out, err = caia("site", "check", site.path, "--standard", tmp_path / "std.json", "--dataset", "tiny")
    assert code == 1 and out.strip() == ("site site-1 dataset tiny: breaks the standard: age minimum (2 rows), "
                                         "age maximum (5 rows), stage enum (2 rows)")
    good = make_site(tmp_path / "sites", "site-2", SAMPLE)
    assert caia("site", "check", good.path, "--standard", tmp_path / "std.json")[0] == 0


@pytest.fixture
def deployed_broken(tmp_path):
    built = compose.build(notebook(tmp_path / "nb"))
    job = build_job(built, ["site-1"], tmp_path / "job", name="caia-standard")
    site = broken_site(tmp_path / "sites")
    return built, job / "app_site-1", site


def test_the_guard_refuses_data_breaking_the_standard_when_the_policy_says_refuse(deployed_broken, caia):
    built, app, site = deployed_broken
    assert caia("site", "policy", site.path, "--standard-violations", "refuse")[0] == 0
    with pytest.raises(CaiaError, match="^site site-1 would refuse this release: dataset tiny breaks its standard: "
                       r"age minimum, age maximum, stage enum; .*the researcher the standard\) \(exact counts at the site: age minimum \(2 rows\), "
                       r"age maximum \(5 rows\), stage enum \(2 rows\)\); nothing was signed$"):
        # a reviewer cannot sign what the guard would refuse, and, working at the site, sees its exact counts
        signing.check_admissible(sites.open_site(site.path), built, {"tiny": "tiny"})
    sites.set_policy(site.path, standard_violations="report")
    approve(site, built.id, {"tiny": "tiny"})
    site = sites.set_policy(site.path, standard_violations="refuse")
    with pytest.raises(Refusal) as caught:
        admit(app, site.path, sandbox="off")
    assert str(caught.value) == (  # a standard is a counting query: the researcher sees no count
        f"site-1 refused bundle {built.id}: dataset tiny breaks its standard: age minimum, age maximum, "
        "stage enum; the site's policy refuses data that breaks the bundle's "
        "standard (the site fixes its data, or the researcher the standard)")
    assert_no_value(str(caught.value))
    last = audit.verify(site)[0][-1]  # the site's own audit log keeps the exact counts
    assert (last["event"], last["outcome"]) == ("refusal", "refused")
    assert last["reason"].endswith("(exact counts at the site: age minimum (2 rows), age maximum (5 rows), stage enum (2 rows))")


def test_the_review_for_a_site_says_whether_its_dataset_meets_the_standard_and_what_its_policy_does(deployed_broken, caia):
    built, _, site = deployed_broken
    sites.set_policy(site.path, standard_violations="refuse")
    code, out, err = caia("review", built.path, "--site", site.path, "-o", built.path.parent / "r.html")
    assert code == 0, err
    assert ("standard of tiny: site-1's dataset tiny breaks it: age minimum (2 rows), age maximum (5 rows), "
            "stage enum (2 rows); its policy refuses the bundle\nvalidation:") in out
    good = make_site(built.path.parent / "sites", "site-2", SAMPLE)
    code, out, _ = caia("review", built.path, "--site", good.path, "-o", built.path.parent / "r.html", "--json")
    assert json.loads(out)["site"]["standards"] == ["standard of tiny: site-2's dataset tiny meets it"]
    renamed = sites.init(built.path.parent / "sites" / "site-3", "site-3")
    (renamed.path / "data.csv").write_text(SAMPLE)
    sites.add_dataset(renamed, "other", renamed.path / "data.csv")  # released under another name: no guess
    code, out, _ = caia("review", built.path, "--site", renamed.path, "-o", built.path.parent / "r.html")
    assert (f"standard of tiny: check the dataset you release with `caia site check {renamed.path} --standard "
            f"{built.path / 'standards' / 'tiny.schema.json'} --dataset ID`; breaking it, site-3's policy admits it") in out


def test_a_refusal_names_the_broken_rules_and_gives_no_count(tmp_path):
    """A standard is a counting query: two exact counts, each above the site's min_count, subtract from
    the number of rows (a statistics request's count) to a small one: here 12 ages below a minimum of
    50 and 15 above a maximum of 50, of 30 rows, would give the 3 patients aged exactly 50."""
    fields = [f if f["name"] != "age" else {**f, "constraints": {"required": True, "minimum": 50, "maximum": 50}}
              for f in STANDARD["fields"]]
    stages = [STAGES[i % 4] for i in range(30)]
    built = compose.build(notebook(tmp_path / "nb", {**STANDARD, "fields": fields}, table([50] * 24, stages)))
    app = build_job(built, ["site-1"], tmp_path / "job", name="caia-standard") / "app_site-1"
    site = make_site(tmp_path / "sites", "site-1", table([*range(30, 42), *range(60, 75), 50, 50, 50], stages))
    approve(site, built.id, {"tiny": "tiny"})
    sites.set_policy(site.path, standard_violations="refuse")
    with pytest.raises(Refusal) as caught:
        admit(app, site.path, sandbox="off")
    assert str(caught.value) == (
        f"site-1 refused bundle {built.id}: dataset tiny breaks its standard: age minimum, age maximum; the site's policy "
        "refuses data that breaks the bundle's standard (the site fixes its data, or the researcher the standard)")
    assert audit.verify(site)[0][-1]["reason"].endswith("(exact counts at the site: age minimum (12 rows), age maximum (15 rows))")


def test_with_the_policy_report_the_guard_admits_and_records_the_counts(deployed_broken):
    from caia_jupyter.contracts import standard
    from caia_jupyter.site.release import Release

    built, app, site = deployed_broken
    approve(site, built.id, {"tiny": "tiny"})
    release = admit(app, site.path, sandbox="off")
    assert release.datasets["tiny"]["violations"] == [["age", "minimum", 2], ["age", "maximum", 5], ["stage", "enum", 2]]
    last = audit.verify(site)[0][-1]
    assert (last["event"], last["outcome"]) == ("admission", "admitted")
    assert last["reason"] == "dataset tiny breaks its standard: age minimum (2 rows), age maximum (5 rows), stage enum (2 rows)"
    # what the runtime sends the researcher: the rules, as a refusal names them, and no count
    assert Release.read(app).standard_reports == [{"dataset": "tiny", "breaks": [
        {"field": "age", "rule": "minimum"}, {"field": "age", "rule": "maximum"}, {"field": "stage", "rule": "enum"}]}]
    line = standard.parse(json.dumps(release.standard_reports[0])).text("site-1")
    assert line == "site-1 admitted the bundle with dataset tiny breaking its standard: age minimum, age maximum, stage enum"


def test_a_site_with_data_meeting_its_standard_sends_no_report(tmp_path):
    built = compose.build(notebook(tmp_path / "nb"))
    app = build_job(built, ["site-1"], tmp_path / "job", name="caia-standard") / "app_site-1"
    site = make_site(tmp_path / "sites", "site-1", SAMPLE)
    approve(site, built.id, {"tiny": "tiny"})
    assert admit(app, site.path, sandbox="off").standard_reports == []


# -- what the researcher reads of a report: untrusted, checked against the run's own sites and standards --

MARKER = "PATIENT-4711-MARKER"
GOOD = {"dataset": "tiny", "breaks": [{"field": "age", "rule": "maximum"}, {"field": "stage", "rule": "enum"}]}
GOOD_LINE = "site-2 admitted the bundle with dataset tiny breaking its standard: age maximum, stage enum"


def forged(**change) -> dict:
    """GOOD with its second break changed."""
    return {**GOOD, "breaks": [GOOD["breaks"][0], {**GOOD["breaks"][1], **change}]}


FORGED = {
    "a field not in the standard": forged(field=MARKER),
    "a rule the field does not have": forged(field="x2", rule="enum"),
    "a rule outside the vocabulary": forged(rule=MARKER),
    "a type rule of a text field": forged(rule="type"),
    "a dataset the bundle does not request": {**GOOD, "dataset": MARKER},
    "a count beside the rule": forged(rows=3),
    "a value beside the rule": forged(value=MARKER),
    "a field given as a number": forged(field=4711),
    "a value beside the breaks": {**GOOD, "values": [MARKER]},
    "a rule broken twice": {**GOOD, "breaks": [GOOD["breaks"][0], GOOD["breaks"][0]]},
    "no breaks": {**GOOD, "breaks": []},
    "malformed JSON": json.dumps(GOOD)[:-1] + MARKER,
    "JSON text of a forged report": json.dumps(forged(field=MARKER)),
    "free text": f"ValueError: {MARKER}",
    "a list": [MARKER],
    "nothing": None,
}


def run_with(tmp_path, received):
    from caia_jupyter.contracts.standard import rules_of
    from caia_jupyter.researcher.runs import SITE_STANDARDS, Run

    (tmp_path / "run.json").write_text(json.dumps({"sites": {"site-1": "", "site-2": ""}, "rounds": 1, "min_clients": 1,
                                                   "target": "poc", "standards": {"tiny": rules_of(read_standard(
                                                       json.dumps(STANDARD).encode(), "tiny.schema.json"))}}))
    (tmp_path / SITE_STANDARDS).write_text(json.dumps(received))
    return Run(tmp_path)


def test_a_runs_notes_render_a_sites_report_in_the_refusals_words(tmp_path):
    run = run_with(tmp_path, {"site-2": [GOOD, json.dumps({**GOOD, "breaks": GOOD["breaks"][:1]})]})
    assert run.notes == [GOOD_LINE]  # one report per dataset: the first


@pytest.mark.parametrize("case", list(FORGED), ids=list(FORGED))
def test_a_forged_report_is_dropped_unread(tmp_path, case):
    run = run_with(tmp_path, {"site-1": [FORGED[case]], "site-2": [GOOD]})
    assert run.notes == [GOOD_LINE]
    assert MARKER not in json.dumps(run.notes)


def test_a_report_of_another_site_or_in_another_shape_is_dropped(tmp_path):
    assert run_with(tmp_path, {MARKER: [GOOD], "site-3": [GOOD], "site-1": GOOD, "site-2": [GOOD]}).notes == [GOOD_LINE]
    assert run_with(tmp_path, [GOOD]).notes == []
    run = run_with(tmp_path, {})
    (tmp_path / "site_standards.json").write_text("{" + MARKER)
    assert run.notes == []


def test_a_run_without_the_bundles_standards_shows_no_report(tmp_path):
    from caia_jupyter.researcher.runs import Run

    run_with(tmp_path, {"site-2": [GOOD]})
    spec = json.loads((tmp_path / "run.json").read_text())
    for standards in (None, {"tiny": "age"}, {"tiny": {"age": "maximum"}}, [1]):
        (tmp_path / "run.json").write_text(json.dumps({**spec, "standards": standards}))
        assert Run(tmp_path).notes == []


def test_the_server_keeps_only_reports_and_the_first_per_dataset(tmp_path):
    from nvflare.apis.analytix import AnalyticsData, AnalyticsDataType

    from caia_jupyter.aggregator.components import STANDARDS, MetricsReceiver
    from caia_jupyter.contracts.standard import STANDARD_TAG

    receiver = MetricsReceiver(output_dir=str(tmp_path))
    receiver._run_dir = tmp_path

    def send(site, value):
        shareable = AnalyticsData(key=STANDARD_TAG, value=value, data_type=AnalyticsDataType.TEXT).to_dxo().to_shareable()
        receiver.save(None, shareable, site)

    send("site-2", json.dumps(GOOD))
    send("site-2", json.dumps({**GOOD, "breaks": GOOD["breaks"][:1]}))
    for case in ("a count beside the rule", "a value beside the rule", "malformed JSON", "free text"):
        send("site-1", FORGED[case] if isinstance(FORGED[case], str) else json.dumps(FORGED[case]))
    send("site-1", MARKER * 100_000)
    written = (tmp_path / STANDARDS).read_text()
    assert json.loads(written) == {"site-2": [GOOD]} and MARKER not in written
    assert receiver._answer(None, {"since": 0}, None)["standards"] == {"site-2": [GOOD]}


def test_the_poc_follower_keeps_only_reports_of_the_runs_sites_and_standards(tmp_path):
    from caia_jupyter.aggregator.components import STANDARDS
    from caia_jupyter.targets import remote

    run_with(tmp_path, {})
    received = {"site-1": [FORGED["a field not in the standard"]], "site-2": [GOOD], MARKER: [GOOD]}
    assert {s: [r.model_dump() for r in found] for s, found in remote.write_standards(received, tmp_path, ["site-1", "site-2"]).items()} \
        == {"site-2": [GOOD]}
    assert MARKER not in (tmp_path / STANDARDS).read_text()
    result = tmp_path / "result" / "workspace"
    result.mkdir(parents=True)
    (result / STANDARDS).write_text(json.dumps({"site-1": [GOOD], "site-2": [forged(rows=1)]}))
    remote.collect(tmp_path / "result", tmp_path, ["site-1", "site-2"])
    assert json.loads((tmp_path / STANDARDS).read_text()) == {"site-1": [GOOD]}


def test_a_tampered_standard_is_refused_by_the_guard(deployed_broken):
    built, app, site = deployed_broken
    approve(site, built.id, {"tiny": "tiny"})
    file = next(app.rglob("tiny.schema.json"))
    file.write_text(file.read_text().replace("120", "1200"))
    with pytest.raises(Refusal, match="standards/tiny.schema.json differs from the bundle's manifest"):
        admit(app, site.path, sandbox="off")


@pytest.mark.slow
def test_a_refused_standard_in_a_real_simulator_run_names_the_rules(tmp_path):
    from caia_jupyter.targets.submit import submit

    built = compose.build(notebook(tmp_path / "nb"))
    assert validation.validate(built).passed
    made = [make_site(tmp_path / "sites", name, SAMPLE) for name in ("site-1", "site-2")] + [broken_site(tmp_path / "sites", "site-3")]
    for site in made:
        approve(site, built.id, {"tiny": "tiny"})
    sites.set_policy(made[2].path, standard_violations="refuse")
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished"
    assert run.refusals["site-3"] == (
        f"site-3 refused bundle {built.id}: dataset tiny breaks its standard: age minimum, age maximum, "
        "stage enum; the site's policy refuses data that breaks the bundle's "
        "standard (the site fixes its data, or the researcher the standard)")
    assert "site-3" not in set(run.metrics()["site"])


@pytest.mark.slow
def test_a_reported_standard_in_a_real_simulator_run_reaches_the_notes_naming_the_rules(tmp_path, caia):
    from caia_jupyter.targets.submit import submit

    built = compose.build(notebook(tmp_path / "nb"))
    assert validation.validate(built).passed
    made = [make_site(tmp_path / "sites", "site-1", SAMPLE)] + [broken_site(tmp_path / "sites", n) for n in ("site-2", "site-3")]
    for site in made:
        approve(site, built.id, {"tiny": "tiny"})
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished"
    assert set(run.sites.values()) == {"done"}  # policy "report" (the default): every site admits and trains
    assert [note for note in run.notes if "standard" in note] == [
        f"{site} admitted the bundle with dataset tiny breaking its standard: age minimum, age maximum, stage enum"
        for site in ("site-2", "site-3")]
    code, out, err = caia("status", run.path)
    assert code == 0 and "note: site-2 admitted the bundle with dataset tiny breaking its standard" in out
    assert_no_value(json.dumps(run.notes) + out)


def test_a_changed_standard_is_named_among_the_changes_a_reviewer_sees(tmp_path):
    from caia_jupyter.reviewer.changes import other_changes

    path = notebook(tmp_path / "nb")
    old = compose.build(path, tmp_path / "old")
    edited = json.loads((tmp_path / "nb" / "tiny.schema.json").read_text())
    edited["fields"][4]["constraints"]["enum"].append("V")
    (tmp_path / "nb" / "tiny.schema.json").write_text(json.dumps(edited))
    new = compose.build(path, tmp_path / "new")
    old_sha, new_sha = (b.manifest["files"]["standards/tiny.schema.json"]["sha256"][:12] for b in (old, new))
    assert other_changes(old, new) == [f"dataset tiny standard changed (sha256 {old_sha} -> {new_sha})"]


def test_the_magic_infers_a_standard_like_the_cli(shell, tmp_path):
    (tmp_path / "s.csv").write_text(SAMPLE)
    shell.run_line_magic("federated", "standard infer s.csv -o s.schema.json")
    fields = json.loads((tmp_path / "s.schema.json").read_text())["fields"]
    assert [(f["name"], f["type"]) for f in fields] == [("x1", "number"), ("x2", "number"), ("label", "integer"),
                                                        ("age", "integer"), ("stage", "string")]


def test_verify_refuses_a_tampered_standard(tmp_path, caia):
    built = compose.build(notebook(tmp_path / "nb"))
    file = built.path / "standards" / "tiny.schema.json"
    file.write_text(file.read_text().replace("120", "1200"))
    code, out, err = caia("verify", built.path)
    assert code == 1 and "standards/tiny.schema.json" in out + err


def test_a_manifest_standard_must_be_its_datasets_listed_file(tmp_path):
    from pydantic import ValidationError

    from caia_jupyter.contracts.manifest import Manifest

    manifest = compose.build(notebook(tmp_path / "nb")).manifest
    manifest["datasets"]["tiny"]["standard"] = "standards/other.schema.json"
    with pytest.raises(ValidationError, match="must name its standard as the listed file standards/tiny.schema.json"):
        Manifest.model_validate(manifest)
    del manifest["datasets"]["tiny"]["standard"]
    with pytest.raises(ValidationError, match="standards/tiny.schema.json is the standard of no requested dataset"):
        Manifest.model_validate(manifest)


def test_the_policy_is_shown_set_and_refused_when_unknown(tmp_path, caia):
    site = make_site(tmp_path / "sites", "site-1")
    code, out, _ = caia("site", "policy", site.path)
    assert code == 0 and "data breaking a bundle's dataset standard: admitted, the counts recorded in the audit log" in out
    code, out, _ = caia("site", "policy", site.path, "--standard-violations", "refuse", "--json")
    assert code == 0 and json.loads(out)["policy"]["standard_violations"] == "refuse"
    assert "data breaking a bundle's dataset standard: the bundle is refused" in caia("site", "show", site.path)[1]
    meta = json.loads((site.path / "site.json").read_text())
    meta["policy"]["standard_violations"] = "ignore"
    (site.path / "site.json").write_text(json.dumps(meta))
    code, _, err = caia("site", "show", site.path)
    assert code == 2 and "site.json's policy.standard_violations 'ignore' must be one of report, refuse" in err


def standard_of(*fields) -> dict:
    return read_standard(json.dumps({"fields": list(fields)}).encode(), "s.schema.json")


def test_a_pattern_is_matched_in_linear_time():
    import time

    import pandas as pd
    from caia_jupyter.contracts.standard import Violation, violations

    nested = standard_of({"name": "pid", "type": "string", "constraints": {"pattern": "([A-Z0-9]+)+"}})
    frame = pd.DataFrame({"pid": ["A" * 40 + "-", "AB12"]})  # catastrophic backtracking for a backtracking engine
    started = time.monotonic()
    assert violations(frame, nested) == [Violation("pid", "pattern", 1)]
    assert time.monotonic() - started < 5


def test_a_pattern_with_inline_flags_matches_the_whole_value(tmp_path, caia):
    from caia_jupyter.contracts.standard import Violation, violations

    import pandas as pd

    frame = pd.DataFrame({"stage": ["I", "x", "ii", "IIx"], "radius": ["1.5", "2", "a1", "3.0"]})
    found = violations(frame, standard_of({"name": "stage", "type": "string", "constraints": {"pattern": "(?i)i|ii|iii|iv"}},
                                          {"name": "radius", "type": "string", "constraints": {"pattern": "(?s)[0-9.]+"}}))
    assert found == [Violation("stage", "pattern", 2), Violation("radius", "pattern", 1)]
    site = make_site(tmp_path / "sites", "site-1")
    (tmp_path / "flag.json").write_text(json.dumps({"fields": [{"name": "x1", "type": "string", "constraints": {"pattern": "(?s)[0-9.]+"}}]}))
    code, out, err = caia("site", "check", site.path, "--standard", tmp_path / "flag.json")
    assert code == 0 and "Traceback" not in out + err and out.strip() == "site site-1 dataset tiny: meets the standard"


@pytest.mark.parametrize("kind, bound, values", [
    ("date", "2100-01-01T00:00:00+00:00", ["2020-01-05", "2021-03-01", "2019-07-07"]),
    ("date", "2100-01-01", ["2020-01-05", "2021-03-01", "2019-07-07"]),
    ("datetime", "2100-01-01T00:00:00Z", ["2020-01-05T10:00:00+02:00", "2021-03-01T00:00:00", "2019-07-07T23:00:00-05:00"]),
])
def test_a_date_bound_with_or_without_a_zone_counts_every_earlier_date(kind, bound, values):
    import pandas as pd
    from caia_jupyter.contracts.standard import Violation, violations

    found = violations(pd.DataFrame({"diagnosed": values}),
                       standard_of({"name": "diagnosed", "type": kind, "constraints": {"minimum": bound}}))
    assert found == [Violation("diagnosed", "minimum", 3)]


def test_dates_are_compared_in_utc():
    import pandas as pd
    from caia_jupyter.contracts.standard import Violation, violations

    # 2020-01-01T01:00+02:00 is 2019-12-31T23:00Z: before the minimum
    found = violations(pd.DataFrame({"at": ["2020-01-01T01:00:00+02:00", "2020-01-01T03:00:00+02:00"]}),
                       standard_of({"name": "at", "type": "datetime", "constraints": {"minimum": "2020-01-01T00:00:00Z"}}))
    assert found == [Violation("at", "minimum", 1)]


def test_a_check_failing_as_a_whole_counts_every_row_it_checks(monkeypatch):
    import pandas as pd
    import pandera.pandas as pa
    from caia_jupyter.contracts import standard
    from caia_jupyter.contracts.standard import Violation, violations

    # a fake check that raises, as pandera reports a check that cannot compare the column at all
    monkeypatch.setattr(standard, "_check", lambda rule, value, kind: pa.Check(lambda values: 1 / 0))
    found = violations(pd.DataFrame({"age": ["1", "2", "", "x"]}),
                       standard_of({"name": "age", "type": "number", "constraints": {"maximum": 5}}))
    assert found == [Violation("age", "type", 1), Violation("age", "maximum", 2)]
