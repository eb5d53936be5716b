"""The one way to compare titles and names: Unicode-aware folding and the matching key.

Every place that asks "is this the same title?" (deduplication, the import's matching and its
exclusion list, `kb validate`'s "one name, one work" check, `kb enrich`'s title comparison, the
search of `kb query`) uses these functions, so they cannot disagree. Before there was one of them
there were four, and the one that kept only `[a-z0-9]` called `Pruning with alpha-Tokens` and
`Pruning with beta-Tokens` (Greek letters) the same title, and every CJK title the empty string.

- `fold(text)`: NFKC (so NFC and NFD spellings, full-width forms and ligatures agree), case
  folded, accents dropped from Latin, Greek and Cyrillic letters (lists often drop them: `Muller`
  for `Müller`), invisible format characters (zero-width spaces, bidi controls, soft hyphens)
  removed. Letters of every script are kept: Devanagari vowel signs and CJK ideographs are
  letters, not decoration.
- `title_key(title)`: `fold`, then TeX markup (`H$_2$O`), parentheticals (`(ToMe)`) and
  punctuation folded away, `&` read as `and`; words separated by single spaces.
- `matchable(key)`: whether a key says enough to match on. An empty key never matches anything
  (it would make every title of another script "equal"), nor does one short word.

Nothing here reads files or knows about records.
"""

from __future__ import annotations

import re
import unicodedata

# Combining marks are dropped after these base letters only: in other scripts (Devanagari,
# Thai, ...) marks are parts of letters, and dropping them would make different words equal.
_ACCENTED_SCRIPTS_END = 0x0530  # Latin, IPA, Greek, Cyrillic (and their supplements below it)
_LATIN_EXTENDED = (0x1E00, 0x1FFF)  # Latin Extended Additional, Greek Extended
_TEX_COMMAND = re.compile(r"\\[A-Za-z]+\s*")
_PARENTHETICAL = re.compile(r"\([^()]*\)")
_MIN_MATCH_CHARS = 4  # a one-word key shorter than this ("PPT") never matches on its own


def _drops_marks(base: str) -> bool:
    code = ord(base)
    return code < _ACCENTED_SCRIPTS_END or _LATIN_EXTENDED[0] <= code <= _LATIN_EXTENDED[1]


def fold(text: str) -> str:
    """Text folded for comparison: see the module docstring. Punctuation is kept."""
    if text.isascii():  # the common case, and NFKC, marks and format characters cannot occur
        return text.casefold()
    text = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    base = ""
    for char in unicodedata.normalize("NFD", text):
        category = unicodedata.category(char)
        if category == "Cf":  # zero-width, bidi controls, soft hyphen: invisible
            continue
        if category == "Mn":
            if base and _drops_marks(base):
                continue
        else:
            base = char
        out.append(char)
    return unicodedata.normalize("NFC", "".join(out))


def title_key(title: str) -> str:
    """The key two titles of one work share: see the module docstring."""
    text = title.replace("$", "")
    text = _TEX_COMMAND.sub("", text)
    text = re.sub(r"[_^{}]", "", text)
    stripped = _PARENTHETICAL.sub(" ", text)
    if _words(fold(stripped)):  # "(ToMe)" alone keeps its contents
        text = stripped
    return " ".join(_words(fold(text.replace("&", " and "))))


_ASCII_WORD = re.compile(r"[0-9a-z]+")


def _words(folded: str) -> list[str]:
    """Runs of letters and digits of any script (marks stay with their letters)."""
    if folded.isascii():
        return _ASCII_WORD.findall(folded)
    words: list[str] = []
    current: list[str] = []
    for char in folded:
        if char.isalnum() or unicodedata.category(char).startswith("M"):
            current.append(char)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


def matchable(key: str) -> bool:
    """Whether a title key says enough to match two works on: two words, or one long word
    (a CJK title is one run of ideographs)."""
    if not key:
        return False
    return " " in key or (len(key) >= _MIN_MATCH_CHARS and not key.isascii())


def same_title(a: str, b: str) -> bool:
    """Equal keys, and enough of them to mean something."""
    key = title_key(a)
    return matchable(key) and key == title_key(b)
