import codecs
import io
import time
import tokenize

import nbformat
import pytest

import corpus
from caia_jupyter.contracts import fileset, sourcecheck
from caia_jupyter.contracts.client_app import client_config
from caia_jupyter.contracts.errors import NotebookError
from caia_jupyter.contracts.sourcecheck import source_problems
from caia_jupyter.researcher import compose
from conftest import set_source

# name -> (bytes of the file, the line the problem is on, a fragment of the problem)
REFUSED = {
    "not-utf8-byte-in-a-string": (b'x = "\xff"\n', 1, "bytes that are not UTF-8"),
    "latin-1-byte-on-line-3": (b"a = 1\nb = 2\nc = '\xe9t\xe9'\n", 3, "bytes that are not UTF-8"),
    "utf8-byte-order-mark": (codecs.BOM_UTF8 + b"x = 1\n", 1, "starts with a UTF-8 byte order mark"),
    "coding-utf-7-hides-code-in-a-comment": (
        b"# coding: utf-7\ndef f():\n    return 1  # +AAoAIAAgACAAIAByAGUAdAB1AHIAbgAgADI-\n", 1, "coding declaration 'utf-7'"),
    "coding-latin-1-emacs-style-on-line-2": (b"#!/usr/bin/env python\n# -*- coding: latin-1 -*-\nx = 1\n", 2,
                                             "coding declaration 'latin-1'"),
    "coding-vim-style-cp1252": (b"# vim: set fileencoding=cp1252 :\n", 1, "coding declaration 'cp1252'"),
    "coding-unknown-encoding": (b"# coding: klingon\n", 1, "coding declaration 'klingon'"),
    "coding-on-line-2-after-code": (b"x = 1\n# coding: latin-1\n", 2, "coding declaration"),
    "right-to-left-override-in-a-comment": ("x = 1\n# \u202e )(metsys.so\n".encode(), 2,
                                            "bidirectional control character U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    "trojan-source-early-return": (
        'level = "user"\nif level != "none\u202e\u2066":  # Check if admin\u2069\u2066" and level != "user\n    pass\n'.encode(),
        2, "bidirectional control character U+202E"),
    "right-to-left-isolate-in-a-string": ("s = '\u2067abc\u2069'\n".encode(), 1, "U+2067 (RIGHT-TO-LEFT ISOLATE)"),
    "left-to-right-mark-in-code": ("x =\u200e 1\n".encode(), 1, "U+200E (LEFT-TO-RIGHT MARK)"),
    "arabic-letter-mark": ("# note\u061c\n".encode(), 1, "U+061C (ARABIC LETTER MARK)"),
    "zero-width-space-in-a-string": ('if user == "admin\u200b":\n    pass\n'.encode(), 1, "invisible character U+200B (ZERO WIDTH SPACE)"),
    "zero-width-joiner": ("a = 'x\u200dy'\n".encode(), 1, "invisible character U+200D (ZERO WIDTH JOINER)"),
    "word-joiner": ("a = 1\u2060\n".encode(), 1, "invisible character U+2060 (WORD JOINER)"),
    "byte-order-mark-inside-the-text": ("x = 1\n\ufeffy = 2\n".encode(), 2, "invisible character U+FEFF"),
    "soft-hyphen": ('word = "pass\u00adword"\n'.encode(), 1, "invisible character U+00AD (SOFT HYPHEN)"),
    "hangul-filler-as-a-name": ("import os\n\u3164 = os.system\n\u3164('id')\n".encode(), 2, "invisible character U+3164 (HANGUL FILLER)"),
    "variation-selector-makes-a-second-name": ("x = 1\nx\ufe00 = 2\n".encode(), 2, "U+FE00 (VARIATION SELECTOR-1)"),
    "tag-characters-in-a-comment": ("# hi\U000e0069\n".encode(), 1, "invisible character U+E0069"),
    "null-byte": (b"x = 1\x00\n", 1, "control character U+0000 (NULL) (Python refuses null bytes)"),
    "form-feed": (b"x = 1\n\x0cy = 2\n", 2, "U+000C (FORM FEED) (Python resets the indentation count at it)"),
    "lone-carriage-return-overwrites-in-a-terminal": (b'os.system("id")\r# nothing to see here\n', 1,
                                                      "carriage return not followed by a line feed"),
    "escape-sequence-conceals-text": (b"x = 1  # \x1b[8mhidden\x1b[0m\n", 1, "control character U+001B (ESCAPE)"),
    "next-line-control": ("x = 1\x85y = 2\n".encode(), 1, "control character U+0085 (NEXT LINE)"),
    "line-separator": ("# comment\u2028x = 1\n".encode(), 1, "U+2028 (LINE SEPARATOR): some viewers start a new line"),
    "paragraph-separator": ("x = 1\n# a\u2029b\n".encode(), 2, "U+2029 (PARAGRAPH SEPARATOR)"),
    "private-use-character": ("# \ue000\n".encode(), 1, "private-use code point U+E000"),
    "noncharacter": ("s = '\uffff'\n".encode(), 1, "unassigned code point U+FFFF"),
    # Names: Python folds them with NFKC, so a name that is not ASCII may not be the name it looks like.
    "cyrillic-a-makes-a-decoy-train": ("def train(m, d, c):\n    pass\n\n\ndef tr\u0430in(m, d, c):\n    pass\n".encode(), 5,
                                       "name 'tr\u0430in' is not ASCII (U+0430 (CYRILLIC SMALL LETTER A))"),
    "fullwidth-letters-rebind-train": ("_log_round = print\n\uff54\uff52\uff41\uff49\uff4e = _log_round\n".encode(), 2,
                                       "U+FF54 (FULLWIDTH LATIN SMALL LETTER T), which Python reads as 'train'"),
    "german-name": ('größe = "Größe"  # Größe in mm\n'.encode(), 1, "name 'größe' is not ASCII"),
    "name-in-an-f-string-expression": ('f"{(\uff54\uff52\uff41\uff49\uff4e := print)} Größe"\n'.encode(), 1,
                                       "which Python reads as 'train'"),
    "name-in-a-multi-line-f-string": ("x = f'''Größe\n{\nt\u0430il}'''\n".encode(), 3, "name 't\u0430il' is not ASCII"),
    "name-character-the-3-11-tokenizer-splits-off": ("x\u2118 = 1\n".encode(), 1, "U+2118 (SCRIPT CAPITAL P)"),
    "attribute-name": ("import os\nos.\uff53ystem('id')\n".encode(), 2, "which Python reads as 'system'"),
    # Right-to-left letters reorder how the line around them is drawn, with no control character.
    "hebrew-letters-reorder-a-list": ("noise = ['\u05d0', 0.001, 1000.0, '\u05d1'][1]\n".encode(), 1,
                                      "right-to-left character U+05D0 (HEBREW LETTER ALEF): the line around it may be drawn "
                                      "in another order than it is read; write it as \\u05d0 in a string"),
    "arabic-word-in-a-comment": ("x = 1\n# \u0645\u0631\u062d\u0628\u0627 1, 2\n".encode(), 2, "U+0645 (ARABIC LETTER MEEM)"),
    "arabic-indic-digits": ("# \u0661\u0662\n".encode(), 1, "right-to-left character U+0661 (ARABIC-INDIC DIGIT ONE)"),
}

CLEAN = {
    "empty-file": b"",
    "plain-ascii-module": b'"""Doc."""\nimport os\n\n\ndef f(x):\n\treturn x + 1\n',
    "french-words-in-strings-and-comments": "# taille de la tumeur\nlabel = 'tumeur bénigne'\n".encode(),
    "german-string-and-comment": 'size = "Größe"  # Größe in mm\n'.encode(),
    "accents-in-an-f-string-and-its-nested-string": 'label = f"Größe {sizes[\'bénigne\']:>{width}} é"\n'.encode(),
    "cyrillic-and-greek-text-in-strings": "words = ['\u0430\u0431\u0432', '\u03b1\u03b2\u03b3']  # \u0430\n".encode(),
    "hebrew-as-escapes-in-a-string": b"label = '\\u05d0\\u05d1'\n",
    "emoji-in-a-comment": "# 🎉 done\n".encode(),
    "emoji-with-presentation-selector": "# ⚠️ careful, ❤️ it\n".encode(),
    "japanese-comment": "# 腫瘍のサイズ\nsize = 1\n".encode(),
    "no-break-space-in-french-comment": "# taille\u00a0: 3 cm\n".encode(),
    "crlf-line-ends": b"x = 1\r\ny = 2\r\n",
    "coding-utf-8-declaration": b"# -*- coding: utf-8 -*-\nx = 1\n",
    "coding-utf8-spelling": b"# coding=utf8\nx = 1\n",
    "coding-declaration-on-line-3-is-not-one": b"x = 1\ny = 2\n# coding: latin-1\n",
    "caia-module-head": compose.MODULE_HEAD.encode(),
    "caia-runner": fileset.RUNNER.encode(),
    "caia-client-config": client_config(),
    "requirements": b"numpy==2.1.0\ntorch==2.13.0\n",
}


@pytest.mark.parametrize("data, line, fragment", REFUSED.values(), ids=REFUSED.keys())
def test_source_python_reads_differently_is_refused_naming_the_line(data, line, fragment):
    problems = source_problems("federated.py", data)
    assert any(p.startswith(f"federated.py line {line}: ") and fragment in p for p in problems), problems
    assert all(p.startswith("federated.py line ") for p in problems)


@pytest.mark.parametrize("data", CLEAN.values(), ids=CLEAN.keys())
def test_clean_source_passes(data):
    assert source_problems("federated.py", data) == []


EVERY_CASE = {**{name: data for name, (data, _, _) in REFUSED.items()}, **CLEAN}


@pytest.mark.parametrize("data", EVERY_CASE.values(), ids=EVERY_CASE.keys())
def test_whatever_python_would_not_decode_as_utf8_is_refused(data):
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        python_reads_utf8 = codecs.lookup(encoding).name == "utf-8"
        data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError):
        python_reads_utf8 = False
    if not python_reads_utf8:
        assert source_problems("federated.py", data)


def test_a_problem_names_file_line_code_point_and_fix():
    problems = source_problems("federated.py", "x = 1\n\n# \u202e done\n".encode())
    assert problems == [
        "federated.py line 3: bidirectional control character U+202E (RIGHT-TO-LEFT OVERRIDE) "
        "changes the order in which the line is shown; remove it"
    ]


def test_lines_are_counted_as_an_editor_counts_them():
    data = b"a = 1\r\nb = 2\n\nc = '\x00'\n"
    assert source_problems("x.py", data) == ["x.py line 4: control character U+0000 (NULL) (Python refuses null bytes); remove it"]


def test_each_kind_of_problem_is_reported_once_per_line_and_the_list_is_bounded():
    assert len(source_problems("x.py", "a = '\u200b\u200b\u200b'\n".encode())) == 1
    problems = source_problems("x.py", b"\x00\n" * 200)
    assert len(problems) == sourcecheck.MAX_PROBLEMS + 1
    assert problems[-1] == "x.py: more problems not listed; fix these first"
    assert len(source_problems("blob.py", bytes(range(256)) * 4000)) == sourcecheck.MAX_PROBLEMS + 1


def test_a_large_source_is_checked_quickly():
    data = ("# taille de la tumeur, Größe 🎉\nx = 'tumeur'\n" * 40_000).encode()  # about 2 MB
    start = time.perf_counter()
    assert source_problems("federated.py", data) == []
    assert time.perf_counter() - start < 2


def test_reveal_shows_hidden_characters_and_keeps_line_ends():
    assert sourcecheck.reveal("a\u202eb\r\nc\td\u200b") == "a[U+202E]b\r\nc\td[U+200B]"
    assert sourcecheck.reveal("tumeur 🎉 ❤️") == "tumeur 🎉 ❤️"


def notebook_with(tmp_path, old: str, new: str):
    """The good corpus notebook with `old` replaced by `new` in its federated cells."""
    path = corpus.write("good", tmp_path / "nb")
    nb = nbformat.read(path, as_version=4)
    set_source(nb, old, new)
    nbformat.write(nb, path)
    return path


def test_a_decoy_train_spelled_with_a_cyrillic_letter_is_not_bundled(tmp_path):
    decoy = "\n\ndef tr\u0430in(model, data, ctx):  # final version, replaces the draft above\n    return {}\n"
    path = notebook_with(tmp_path, "def evaluate(", decoy.lstrip("\n") + "\n\ndef evaluate(")
    with pytest.raises(NotebookError, match=r"^federated cell \d+ \(notebook cell \d+\) line 2: name 'tr\u0430in' is not ASCII "
                                            r"\(U\+0430 \(CYRILLIC SMALL LETTER A\)\).*use ASCII letters, digits and _ in names$"):
        compose.build(path)


def test_fullwidth_letters_that_rebind_train_are_not_bundled(tmp_path):
    path = notebook_with(tmp_path, "def evaluate(", "\uff54\uff52\uff41\uff49\uff4e = print\n\n\ndef evaluate(")
    with pytest.raises(NotebookError, match="which Python reads as 'train'"):
        compose.build(path)


def test_right_to_left_letters_that_reorder_a_line_are_not_bundled(tmp_path):
    line = "    noise_multiplier = ['\u05d0', 0.001, 1000.0, '\u05d1'][1]  # DP noise\n"
    path = notebook_with(tmp_path, "    x, y = data\n    optimizer", "    x, y = data\n" + line + "    optimizer")
    with pytest.raises(NotebookError, match=r"line 4: right-to-left character U\+05D0 \(HEBREW LETTER ALEF\).*write it as \\u05d0"):
        compose.build(path)


def test_requirements_are_checked_for_right_to_left_letters_but_hold_no_names():
    assert source_problems("requirements.txt", "torch==2.13.0  # \u05d0\n".encode(), python=False) == [
        "requirements.txt line 1: right-to-left character U+05D0 (HEBREW LETTER ALEF): the line around it may be drawn "
        "in another order than it is read; remove it"]
    assert source_problems("requirements.txt", "größe==1.0\n".encode(), python=False) == []


def test_a_right_to_left_line_is_reported_once():
    assert len(source_problems("x.py", "# \u05d0\u05d1\u05d2 \u0627\u0628\n".encode())) == 1
