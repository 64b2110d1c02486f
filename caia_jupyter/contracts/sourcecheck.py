"""Refuse source that Python would read differently from what a person sees.

A bundle's Python and text files must be UTF-8 text that reads the same to Python, to an
editor, to a terminal and in the review: `source_problems(name, data)` lists what breaks that,
one line per problem, naming the file, the line (1-based, as an editor counts it) and the fix.

Refused, and why:
- bytes that are not UTF-8 (Python refuses or misreads them; nothing can show them);
- a UTF-8 byte order mark: Python skips it but other readers keep it (json refuses it), and
  caia never writes one, so "UTF-8 without BOM" leaves one way to read the bytes;
- a PEP 263 coding declaration on line 1 or 2 (Python's own pattern) naming anything but
  UTF-8, even where Python would ignore it: `# coding: utf-7` makes Python decode as code
  what every viewer shows as a comment;
- control characters (Unicode category Cc) other than tab and line feed: a null byte, a form
  feed (Python resets indentation at it), escape sequences, and a carriage return unless it
  ends a line as part of "\\r\\n" (a lone one ends a line for Python while a terminal goes back
  and overwrites it);
- bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C), which
  reorder how a line is displayed;
- every other format character (category Cf: zero-width spaces and joiners, U+2060, U+FEFF
  inside the text, U+00AD SOFT HYPHEN, which shows only where a line wraps, tag characters);
- U+2028 and U+2029, where some viewers break the line and Python does not;
- private-use and unassigned code points, whose look nobody can know;
- Unicode's other default-ignorable code points, drawn as nothing: Hangul fillers (which
  Python accepts as names, so `ㅤ = os.system` reads as nothing), variation selectors and the
  combining grapheme joiner (which make two names that look the same differ); only an emoji
  presentation selector (U+FE0E/U+FE0F) right after a symbol, as in "❤️", is allowed;
- right-to-left letters and digits (Unicode bidirectional class R, AL or AN: Hebrew, Arabic,
  Syriac...), even with no control character: the bidirectional algorithm then draws the
  neighbouring code right to left too, so `['\\u05d0', 0.001, 1000.0, '\\u05d1'][1]` shows 1000.0
  where Python reads 0.001; in Python source they are written as \\u escapes in strings.
In Python source (`python=True`), also:
- a name (identifier) that is not ASCII, found with Python's tokenizer, f-string expressions
  included: Python folds names with NFKC, so `ｔｒａｉｎ` is `train`, while a Cyrillic `а` makes
  `trаin` a name other than the `train` it looks like.
Non-ASCII letters, accents and emoji in strings and comments ("tumeur", "Größe", "🎉") pass.
"""

from __future__ import annotations

import ast
import bisect
import codecs
import io
import re
import tokenize
import unicodedata

BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt) outside categories Cf and Cn,
# which are refused as a whole.
_IGNORABLE = frozenset(
    [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x3164, 0xFFA0]
    + list(range(0xFE00, 0xFE10))
    + list(range(0xE0100, 0xE01F0))
)
_EMOJI_SELECTORS = "\ufe0e\ufe0f"
_CONTROL_NAMES = {
    0x00: "NULL", 0x08: "BACKSPACE", 0x0B: "LINE TABULATION", 0x0C: "FORM FEED", 0x0D: "CARRIAGE RETURN",
    0x1B: "ESCAPE", 0x7F: "DELETE", 0x85: "NEXT LINE",
}
_SUSPECT = re.compile(r"[^\t\n\x20-\x7e]")  # printable ASCII, tab and line feed are always fine
_LINE_END = re.compile(r"\r\n|\r|\n")  # where Python and editors end a line
RIGHT_TO_LEFT = frozenset({"R", "AL", "AN"})  # unicodedata.bidirectional classes drawn right to left
_NOT_CODE = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
_MASK = "\u2603"  # a character Python accepts in strings and comments only
MAX_PROBLEMS = 50


def source_problems(name: str, data: bytes, python: bool = True) -> list[str]:
    """Problems that make `data` (the bytes of file `name`) read differently by Python and people.

    `python`: `data` is Python source, whose names must be ASCII too (False for other text, such
    as requirements.txt). Returns one-line messages "<name> line <n>: <what>; <fix>" in line order
    (at most MAX_PROBLEMS, then one line saying there are more), or [] when the file is clean.
    Pure and stdlib-only; linear in the size of `data`.
    """
    found: list[tuple[int, str]] = []
    if data.startswith(codecs.BOM_UTF8):
        found.append((1, "starts with a UTF-8 byte order mark; save the file as UTF-8 without a BOM"))
        data = data[len(codecs.BOM_UTF8):]
    text, undecodable = _decode(data)
    line_of = _line_counter(text)

    for number, line in _first_two_lines(text):
        match = tokenize.cookie_re.match(line)
        if match and not _is_utf8(match.group(1)):
            found.append((number, f"coding declaration {match.group(1)!r}: Python would not read this file as the "
                                  "UTF-8 shown here; remove the declaration (files are UTF-8)"))
    for offset in undecodable:
        found.append((line_of(offset), "bytes that are not UTF-8; save the file as UTF-8"))
    right_to_left_lines = set()
    for match in _SUSPECT.finditer(text):
        why = _why_hidden(text, match.start())
        if why is None and unicodedata.bidirectional(match.group()) in RIGHT_TO_LEFT:
            number = line_of(match.start())
            why = None if number in right_to_left_lines else _right_to_left(match.group(), python)
            right_to_left_lines.add(number)
        if why:
            found.append((line_of(match.start()), why))
            if len(found) > 20 * MAX_PROBLEMS:  # enough to show; a binary file would take long
                break
    if python and not undecodable:
        found += _name_problems(text)

    problems = list(dict.fromkeys(f"{name} line {number}: {what}" for number, what in sorted(found, key=lambda f: f[0])))
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [f"{name}: more problems not listed; fix these first"]
    return problems


def reveal(text: str) -> str:
    """`text` with every character `source_problems` refuses shown as "[U+XXXX]" (for untrusted records)."""
    return _SUSPECT.sub(lambda m: f"[U+{ord(m.group()):04X}]" if _why_hidden(text, m.start()) else m.group(), text)


def _why_hidden(text: str, offset: int) -> str | None:
    """Why the character at `offset` must not be in source, or None if it may."""
    char = text[offset]
    code, category = ord(char), unicodedata.category(char)
    if char == "\r":
        if text.startswith("\n", offset + 1):
            return None
        return "carriage return not followed by a line feed (Python ends the line there, a terminal overwrites it); end lines with \\n"
    if char in BIDI_CONTROLS:
        return f"bidirectional control character {_label(char)} changes the order in which the line is shown; remove it"
    if category == "Cc":
        why = {0x00: " (Python refuses null bytes)", 0x0C: " (Python resets the indentation count at it)"}.get(code, "")
        return f"control character {_label(char)}{why}; remove it"
    if char in _EMOJI_SELECTORS and offset and unicodedata.category(text[offset - 1]) == "So":
        return None
    if category == "Cf" or code in _IGNORABLE:
        return f"invisible character {_label(char)}; remove it"
    if category in ("Zl", "Zp"):
        return f"{_label(char)}: some viewers start a new line there, Python does not; remove it"
    if category in ("Co", "Cn"):
        kind = "private-use" if category == "Co" else "unassigned"
        return f"{kind} code point U+{code:04X}: nobody can see what it is; remove it"
    return None


def _right_to_left(char: str, python: bool) -> str:
    escape = f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"
    fix = f"write it as {escape} in a string" if python else "remove it"
    return f"right-to-left character {_label(char)}: the line around it may be drawn in another order than it is read; {fix}"


def _name_problems(text: str) -> list[tuple[int, str]]:
    """(line, problem) for each name in Python source `text` that is not ASCII.

    Names are found with Python's tokenizer; in Python 3.11 an f-string is one token, so names in
    its expressions are found by `_fstring_names`. Source the tokenizer cannot read stops the
    search there: Python cannot compile it either.
    """
    if text.isascii():
        return []
    found = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.string.isascii() or token.type == tokenize.COMMENT:
                continue
            line = token.start[0]
            if token.type == tokenize.STRING:
                found += [(line + lines, _name_problem(name)) for lines, name in _fstring_names(token.string)]
            elif token.type not in _NOT_CODE and ("a" + token.string).isidentifier():
                found.append((line, _name_problem(token.string)))  # a NAME, or a name character 3.11's tokenizer misses
            if len(found) > 20 * MAX_PROBLEMS:
                break
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def _fstring_names(token: str) -> list[tuple[int, str]]:
    """(lines into the token, name) for each name that is not ASCII in the expressions of an
    f-string token: a non-ASCII run whose masking makes the token unparsable is code, not text."""
    prefix = token[:next((i for i, c in enumerate(token) if c in "'\""), 0)]
    if "f" not in prefix.lower() or not _parses(token):
        return []
    runs = _name_runs(token)
    if _parses(_masked(token, runs)):
        return []
    names = [(token.count("\n", 0, start), token[start:end]) for start, end in runs[:MAX_PROBLEMS]
             if not _parses(_masked(token, [(start, end)]))]
    return names or [(0, token[runs[0][0]:runs[0][1]])]


def _parses(expression: str) -> bool:
    try:
        ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with every non-ASCII character in `spans` replaced by _MASK (same length)."""
    pieces, last = [], 0
    for start, end in spans:
        pieces += [text[last:start], "".join(c if c.isascii() else _MASK for c in text[start:end])]
        last = end
    return "".join(pieces) + text[last:]


def _name_runs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of identifier characters in `text` that is not all ASCII."""
    runs, start = [], None
    for index, char in enumerate(text + " "):
        if ("a" + char).isidentifier():
            start = index if start is None else start
        elif start is not None:
            if not text[start:index].isascii():
                runs.append((start, index))
            start = None
    return runs


def _name_problem(name: str) -> str:
    first = next(c for c in name if not c.isascii())
    folded = unicodedata.normalize("NFKC", name)
    reads = f", which Python reads as {reveal(folded)!r}" if folded != name else ""
    return (f"name {reveal(name)!r} is not ASCII ({_label(first)}{reads}): such a name can look like another name, or "
            "be another name than it looks (Python folds names with NFKC); use ASCII letters, digits and _ in names")


def _label(char: str) -> str:
    """"U+202E (RIGHT-TO-LEFT OVERRIDE)"; control characters have no Unicode name, some have a usual one."""
    name = unicodedata.name(char, None) or _CONTROL_NAMES.get(ord(char))
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def _decode(data: bytes) -> tuple[str, list[int]]:
    """UTF-8 text of `data` with U+FFFD for bytes that are not UTF-8, and the offsets of those."""
    pieces, undecodable, length, position, view = [], [], 0, 0, memoryview(data)
    while True:
        try:
            pieces.append(str(view[position:], "utf-8"))
            break
        except UnicodeDecodeError as e:
            good = str(view[position:position + e.start], "utf-8")
            pieces += [good, "\ufffd"]
            length += len(good)
            undecodable.append(length)
            length += 1
            position += e.end
            if len(undecodable) > MAX_PROBLEMS:
                pieces.append(str(view[position:], "utf-8", "replace"))
                break
    return "".join(pieces), undecodable


def _line_counter(text: str):
    starts: list[int] = []

    def line_of(offset: int) -> int:
        if not starts:
            starts.extend([0] + [m.end() for m in _LINE_END.finditer(text)])
        return bisect.bisect_right(starts, offset)

    return line_of


def _first_two_lines(text: str) -> list[tuple[int, str]]:
    """Lines 1 and 2 as Python's tokenizer splits them and as tokenize.detect_encoding does."""
    return list(enumerate(text.split("\n", 2)[:2], 1)) + list(enumerate(_LINE_END.split(text, 2)[:2], 1))


def _is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False
