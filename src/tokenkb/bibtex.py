"""BibTeX entries for records: pure functions from record dicts to text.

The citation key is the record id (stable: it is the file name, and ids never change meaning).
Values are brace-delimited with LaTeX specials escaped and braces balanced, so any title,
including hostile ones, yields an entry BibTeX and bibtexparser both read back unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from .taxonomy import ARXIV_VENUE

JOURNALS = frozenset({"TPAMI", "TMLR", "TIP", "TNNLS", "TACL"})
_SPECIALS = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_SPECIAL_RE = re.compile("|".join(re.escape(ch) for ch in _SPECIALS))
_VENUE_RE = re.compile(r"^(?P<name>.+?) (?P<year>[0-9]{4})(?: (?P<suffix>Workshop|Findings))?$")


def escape(text: str) -> str:
    """Text safe inside a brace-delimited BibTeX value."""
    return _SPECIAL_RE.sub(lambda m: _SPECIALS[m.group()], text)


def _verbatim(text: str) -> str:
    # Identifiers and URLs are read verbatim by the url/doi packages; only braces would break
    # the entry, and validated identifiers and URLs never contain them.
    return text.replace("{", "%7B").replace("}", "%7D")


def entry(record: dict[str, Any]) -> str:
    """One BibTeX entry for a record."""
    venue = record.get("venue")
    match = _VENUE_RE.match(venue) if venue else None
    fields: list[tuple[str, str]] = [
        # Double braces keep the title's capitalisation (ViT, LLM) in every bibliography style.
        ("title", "{" + escape(record["title"]) + "}"),
    ]
    if record.get("authors"):
        fields.append(("author", " and ".join(escape(a) for a in record["authors"])))
    if venue in (ARXIV_VENUE, None) or match is None:
        kind = "article" if record.get("arxiv") else "misc"
        year = record["year"]
        if record.get("arxiv"):
            fields.append(("journal", f"arXiv preprint arXiv:{escape(record['arxiv'])}"))
    else:
        name, year, suffix = match.group("name"), int(match.group("year")), match.group("suffix")
        if name in JOURNALS:
            kind = "article"
            fields.append(("journal", escape(name)))
        else:
            kind = "inproceedings"
            label = {"Workshop": f"{name} Workshops", "Findings": f"Findings of {name}"}.get(
                suffix or "", name
            )
            fields.append(("booktitle", escape(label)))
    fields.append(("year", str(year)))
    if record.get("arxiv"):
        fields += [("eprint", _verbatim(record["arxiv"])), ("archiveprefix", "arXiv")]
    if record.get("doi"):
        fields.append(("doi", _verbatim(record["doi"])))
    url = record.get("paper") or (
        f"https://arxiv.org/abs/{record['arxiv']}" if record.get("arxiv") else None
    )
    if url:
        fields.append(("url", _verbatim(url)))
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields)
    return f"@{kind}{{{record['id']},\n{body}\n}}\n"


def bibliography(records: list[dict[str, Any]]) -> str:
    return "\n".join(entry(record) for record in records)
