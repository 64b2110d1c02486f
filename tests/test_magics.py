"""The magics in an in-process IPython shell (no kernel, no Jupyter)."""

import pytest

import corpus
from caia_jupyter.researcher import compose
from caia_jupyter.researcher.bundle import Bundle
from caia_jupyter.site.context import Context


def run(shell, source):
    result = shell.run_cell(source)
    return result.error_in_exec or result.error_before_exec


def test_a_federated_cell_runs_in_the_kernel_and_is_recorded(shell):
    assert run(shell, "%%federated rounds=3\nANSWER = 6 * 7\n") is None
    assert shell.user_ns["ANSWER"] == 42
    assert shell.run_line_magic("federated", "cells") == ["ANSWER = 6 * 7\n"]


def test_ipython_syntax_in_a_federated_cell_is_refused_before_running(shell, capsys):
    error = run(shell, "%%federated\nRAN = True\n!ls\n")
    assert type(error).__name__ == "UsageError"
    assert "line 3 uses IPython syntax ('!ls'), which cannot run at a site" in str(error)  # as JupyterLab numbers it
    assert "RAN" not in shell.user_ns


def test_bad_options_are_usage_errors(shell):
    error = run(shell, "%%federated rounds=zero\nx = 1\n")
    assert type(error).__name__ == "UsageError" and "whole number" in str(error)


def test_an_exception_in_a_federated_cell_fails_the_cell(shell):
    error = run(shell, "%%federated\n1 / 0\n")
    assert type(error).__name__ == "UsageError"
    assert "raised ZeroDivisionError" in str(error)


def test_line_magic_mirrors_the_cli_and_returns_results(shell, write_notebook, caia):
    path = write_notebook("good")
    built = shell.run_line_magic("federated", f"bundle {path}")
    assert isinstance(built, Bundle)
    code, out, _ = caia("bundle", path)
    assert out.strip().splitlines()[-1] == built.id
    verified = shell.run_line_magic("federated", f"verify {built.path}")
    assert verified["intact"] is True


def test_free_names_resolve_from_the_kernel(shell, write_notebook):
    path = write_notebook("free_name")
    shell.user_ns["LEARNING_RATE"] = 0.5
    built = shell.run_line_magic("federated", f"bundle {path}")
    assert "LEARNING_RATE = 0.5" in built.source("federated.py")


def test_line_magic_errors_are_one_line_usage_errors(shell, tmp_path):
    error = run(shell, f"%federated bundle {tmp_path / 'missing.ipynb'}")
    assert type(error).__name__ == "UsageError" and "does not exist" in str(error)
    error = run(shell, "%federated bundle")
    assert type(error).__name__ == "UsageError" and "does not know its notebook" in str(error)
    error = run(shell, "%federated explore dataset=a:s.csv columns=x")
    assert str(error) == ("this kernel does not know its notebook; name it first, e.g. %federated explore my.ipynb "
                          "dataset=..., or run papermill with --inject-input-path")


def test_bundle_defaults_to_the_kernels_notebook(shell, write_notebook, monkeypatch):
    path = write_notebook("good")
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    assert shell.run_line_magic("federated", "bundle").id == compose.build(path, path.parent / "again").id


def test_context_gives_a_site_like_ctx_on_the_samples(shell, write_notebook):
    path = write_notebook("good")
    shell.run_line_magic("cd", str(path.parent))
    for _, source in corpus.CORPUS["good"]:
        if source.startswith("%%federated"):
            assert run(shell, source) is None
    ctx = shell.run_line_magic("federated", "context")
    assert isinstance(ctx, Context) and ctx.params["lr"] == 0.1 and ctx.datasets == ("tiny",)
    assert list(ctx.dataset("tiny").columns) == ["x1", "x2", "label"]
    shell.user_ns["ctx"] = ctx
    assert run(shell, "data = load_data(ctx); m = build_model(); r = train(m, data, ctx)") is None
    assert shell.user_ns["r"]["num_samples"] == 24
    with pytest.raises(Exception, match="did not release dataset 'genomes'"):
        ctx.dataset("genomes")


def test_context_of_a_dp_notebook_hands_out_make_private(shell, write_notebook):
    path = write_notebook("dp")
    shell.run_line_magic("cd", str(path.parent))
    for _, source in corpus.CORPUS["dp"]:
        assert run(shell, source) is None
    ctx = shell.run_line_magic("federated", "context")
    assert ctx.privacy["epsilon"] == 3.0 and ctx.rounds == 3
    shell.user_ns["ctx"] = ctx
    assert run(shell, "data = load_data(ctx); m = build_model(); r = train(m, data, ctx)") is None
    epsilon, steps = ctx.privacy_spent()
    assert steps > 0 and 0 < epsilon <= 3.0


def test_a_comment_after_a_line_magic_is_no_argument(shell, write_notebook, monkeypatch):
    path = write_notebook("good")
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    assert run(shell, "b = %federated bundle            # or: caia bundle my.ipynb") is None
    assert shell.user_ns["b"].path == path.parent / "bundles" / "good"


def test_under_papermill_the_injected_input_path_names_the_notebook(shell, write_notebook):
    path = write_notebook("good")
    shell.user_ns["PAPERMILL_INPUT_PATH"] = str(path)  # papermill --inject-input-path
    assert shell.run_line_magic("federated", "bundle").path == path.parent / "bundles" / "good"


def test_submit_without_a_path_builds_the_saved_notebook_and_refuses_an_unvalidated_id(shell, write_notebook, tmp_path,
                                                                                        monkeypatch):
    path = write_notebook("good")
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    shell.run_line_magic("federated", f"bundle {path} -o {tmp_path / 'elsewhere'}")  # another folder: not what runs
    error = run(shell, f"%federated submit --sites {tmp_path / 'site-1'}")
    short = compose.compose(path).id[7:19]
    assert type(error).__name__ == "UsageError"
    assert str(error) == f"bundle {short} is not validated: run Validate (caia validate work/good.ipynb)"  # the shell works in tmp_path


def test_help_lists_the_federated_cell_options_from_the_grammar(shell, capsys):
    from caia_jupyter.researcher import annotations

    shell.run_line_magic("federated", "help")
    out = capsys.readouterr().out
    assert annotations.usage() in out
    for option in ("privacy=dp", "epsilon=E", "delta=D", "max_grad_norm=C", "local_epochs=K", "encryption=he",
                   "updates=weight_diff"):
        assert f"\n  {option} " in out, option


def test_a_dp_number_out_of_range_fails_the_cell_at_once(shell):
    error = run(shell, "%%federated privacy=dp epsilon=-1 delta=1e-5\nRAN = True\n")
    assert type(error).__name__ == "UsageError"
    assert str(error) == "%%federated epsilon='-1' must be a number above 0 and at most 100"
    assert "RAN" not in shell.user_ns


def test_a_cell_whose_options_bundling_would_refuse_is_noted_naming_it(shell, capsys):
    assert run(shell, "%%federated rounds=2\nA = 1\n") is None
    assert capsys.readouterr().err == ""
    assert run(shell, "%%federated privacy=dp epsilon=3\nB = 2\n") is None  # the budget may still come in a later cell
    assert capsys.readouterr().err == ("note: cell 2: %%federated privacy=dp needs a budget: epsilon= and delta= "
                                       "(missing delta=; e.g. epsilon=3 delta=1e-5); `%federated bundle` refuses the "
                                       "notebook until this is fixed\n")
    assert run(shell, "%%federated delta=1e-5\nC = 3\n") is None
    assert capsys.readouterr().err == ""
