"""The store: strict YAML reading, canonical dumping, atomic writing."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tokenkb import outputs
from tokenkb.model import FIELD_NAMES, Paper
from tokenkb.problems import RecordError
from tokenkb.store import (
    SCHEMA_COMMENT,
    dump_record,
    load_record,
    parse_record,
    parse_yaml,
    record_paths,
    write_record,
)
from tokenkb.taxonomy import Family, ImplLevel, Kind, Modality

from .conftest import PAPERS, valid_record

# --- strategies -------------------------------------------------------------------------------

# Words of any printable unicode (no whitespace, no control characters); text is words joined by
# single spaces, which is exactly what the Text type admits.
_word = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp"),
        blacklist_characters="\u115f\u1160\u2800\u3164\uffa0",  # blank-looking letters
    ),
    min_size=1,
    max_size=12,
)


def _has_letter_or_digit(value: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in value)


# Text fields need a letter or digit somewhere (a title of only symbols names nothing).
text = st.lists(_word, min_size=1, max_size=8).map(" ".join).filter(_has_letter_or_digit)
short_text = st.lists(_word, min_size=1, max_size=3).map(" ".join).filter(_has_letter_or_digit)
slug_part = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)


@st.composite
def papers(draw: st.DrawFn) -> Paper:
    year = draw(st.integers(2015, 2026))
    kind = draw(st.sampled_from(list(Kind)))
    venue = draw(
        st.sampled_from(
            [
                "arXiv",
                f"ICLR {year}",
                f"CVPR {year} Workshop",
                f"EMNLP {year} Findings",
                f"ACM MM {year}",
            ]
        )
    )
    # An arXiv id exists from its month on (so none from the years still running) and numbers
    # start at 00001.
    arxiv = draw(
        st.none()
        | st.from_regex(rf"{year % 100:02d}(0[1-9]|1[0-2])\.[0-9]{{4}}[1-9]", fullmatch=True)
        if year <= 2024
        else st.none()
    )
    impl = draw(st.none() | st.just("reference_impls.vision.tome"))
    data: dict[str, Any] = {
        "id": f"{draw(slug_part)}-{year}",
        "title": draw(text),
        "aliases": draw(st.lists(short_text, max_size=3, unique_by=str.casefold)),
        "authors": draw(st.lists(short_text, max_size=4, unique_by=str.casefold)),
        "year": year,
        "venue": venue,
        "kind": kind,
        "modality": draw(
            st.lists(st.sampled_from(list(Modality)), min_size=1, max_size=3, unique=True)
        ),
        "family": draw(
            st.lists(
                st.sampled_from(list(Family)),
                min_size=1 if kind is Kind.METHOD else 0,
                max_size=2,
                unique=True,
            )
        ),
        "training_free": draw(st.booleans()) if kind is Kind.METHOD else None,
        "arxiv": arxiv,
        "doi": draw(
            st.none() | st.from_regex(r"10\.[0-9]{4,6}/[A-Za-z0-9.()_-]{1,20}", fullmatch=True)
        ),
        "code": draw(
            st.none()
            | st.from_regex(
                r"https://github\.com/[a-z][a-z0-9-]{0,8}[a-z0-9]/[A-Za-z0-9._-]{1,10}",
                fullmatch=True,
            ).filter(lambda u: not u.endswith(".git"))
        ),
        "summary": draw(st.none() | text),
        "results": draw(st.lists(text, max_size=2, unique_by=str.casefold)),
        "impl": impl,
        "impl_level": draw(st.sampled_from(list(ImplLevel))) if impl else None,
        "sources": draw(
            st.lists(
                st.builds(
                    dict,
                    source=st.from_regex(r"[a-z0-9][a-z0-9_]{0,12}", fullmatch=True),
                    line=st.integers(1, 10_000),
                    fields=st.lists(st.sampled_from(FIELD_NAMES), max_size=3, unique=True),
                ),
                max_size=3,
                unique_by=lambda s: (s["source"], s["line"]),
            )
        ),
    }
    if arxiv:
        data["paper"] = f"https://arxiv.org/abs/{arxiv}"
    title = data["title"].casefold()
    data["aliases"] = [a for a in data["aliases"] if a.casefold() != title]
    return Paper.model_validate(data)


# --- round trip -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(papers())
def test_dump_load_dump_is_identical(paper: Paper) -> None:
    """Any valid record dumps to text that loads back equal and dumps to the same bytes."""
    text = dump_record(paper)
    again, _ = parse_record(text, "roundtrip.yaml", stem=paper.id)
    assert again == paper
    assert dump_record(again) == text


@settings(max_examples=200, deadline=None)
@given(text)
def test_any_text_survives_yaml(value: str) -> None:
    """Titles with YAML syntax in them (': ', '#', quotes, '---', unicode) come back unchanged."""
    paper = Paper.model_validate(
        {
            "id": "t-2023",
            "title": value,
            "year": 2023,
            "venue": "arXiv",
            "kind": "survey",
            "modality": ["vision"],
        }
    )
    loaded, _ = parse_record(dump_record(paper), "t.yaml")
    assert loaded.title == value


def test_strict_parse_agrees_with_pyyaml_on_valid_records() -> None:
    """Our event-based reader builds exactly what PyYAML's safe loader builds."""
    for path in record_paths(PAPERS):
        text = path.read_text(encoding="utf-8")
        assert parse_yaml(text, str(path)).data == yaml.safe_load(text)


def test_every_record_in_papers_is_canonical() -> None:
    paths = record_paths(PAPERS)
    assert len(paths) >= 12
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert dump_record(load_record(path)) == text, f"{path} is not canonical: run kb fmt"


def test_canonical_form_shape() -> None:
    paper = load_record(PAPERS / "tome-2023.yaml")
    text = dump_record(paper)
    assert text.startswith(SCHEMA_COMMENT)
    keys = [line.split(":")[0] for line in text.splitlines()[1:] if line and line[0].isalpha()]
    assert keys == [name for name in FIELD_NAMES if name in keys]  # model order, no sorting
    assert "training_free: true" in text


def test_unicode_is_kept_not_escaped() -> None:
    paper = Paper.model_validate(
        {
            "id": "u-2023",
            "title": "Ré Müller: 高效 Token",
            "year": 2023,
            "venue": "arXiv",
            "kind": "survey",
            "modality": ["vision"],
        }
    )
    assert "Ré Müller: 高效 Token" in dump_record(paper)


def test_line_map_points_at_fields() -> None:
    parsed = parse_yaml(
        "id: a-2023\nmodality:\n- vision\n- vlm\nsources:\n- source: x\n  line: 3\n", "x"
    )
    assert parsed.line(("modality", 1)) == 4
    assert parsed.line(("sources", 0, "line")) == 7
    assert parsed.line(("sources", 0, "fields")) == 6  # missing field: its mapping's line
    assert parsed.line(("nothing",)) == 1


# --- writing ----------------------------------------------------------------------------------


def test_write_record_round_trips(papers_dir: Path) -> None:
    paper = load_record(PAPERS / "h2o-2023.yaml")
    path = write_record(paper, papers_dir)
    assert path == papers_dir / "h2o-2023.yaml"
    assert path.read_bytes() == (PAPERS / "h2o-2023.yaml").read_bytes()


def test_failed_write_leaves_the_old_file_and_no_debris(
    papers_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails halfway (here: at the rename) loses nothing and leaves no temp file."""
    target = papers_dir / "valid-2023.yaml"
    target.write_text(valid_record(), encoding="utf-8")
    before = target.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", broken_replace)
    paper, _ = parse_record(valid_record(), "x", stem="valid-2023")
    with pytest.raises(OSError):
        write_record(paper, papers_dir)
    assert target.read_bytes() == before
    assert sorted(p.name for p in papers_dir.iterdir()) == ["valid-2023.yaml"]


def test_write_keeps_file_mode(papers_dir: Path) -> None:
    target = papers_dir / "valid-2023.yaml"
    target.write_text(valid_record(), encoding="utf-8")
    os.chmod(target, 0o640)
    outputs.write_text_atomic(target, "changed\n")
    assert target.stat().st_mode & 0o777 == 0o640
    assert target.read_text() == "changed\n"


def test_record_error_lists_all_problems() -> None:
    with pytest.raises(RecordError) as info:
        parse_record(
            "id: x-2023\ntitle: T\nyear: 2023\nvenue: Neurips 2023\nkind: method\nmodality: [vllm]\n",
            "f.yaml",
        )
    messages = [str(p) for p in info.value.problems]
    assert messages == [
        "f.yaml:4: venue: 'Neurips 2023' is not a normalised venue; did you mean 'NeurIPS 2023'?",
        "f.yaml:6: modality 'vllm' is not one of vision, video, language, vlm, audio, diffusion, ssm, multimodal; did you mean 'vlm'?",
    ]


# --- robustness: bad input is a RecordError, never a traceback ----------------------------------

_YAMLISH = st.sampled_from(
    [":", " ", "\n", "- ", "[", "]", "{", "}", "&a ", "*a", "!!str ", "'", '"', "#", "---\n", "\t",
     "? ", "|\n", ">\n", "%YAML 1.1\n", "\x00", "\ufeff", "é", "2023", "true", "null", "~"]
)  # fmt: skip


@st.composite
def mutated_records(draw: st.DrawFn) -> str:
    text = valid_record()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 6))
        text = text[:at] + draw(_YAMLISH) + text[at + cut :]
    return text


def assert_well_formed(exc: RecordError, name: str) -> None:
    """Problems name the file, a line >= 1, and say what is wrong in one line."""
    assert exc.problems
    for problem in exc.problems:
        assert problem.path == name and problem.line >= 1 and problem.message
        assert len(problem.message.splitlines()) == 1, problem.message


@settings(max_examples=300, deadline=None)
@given(st.one_of(mutated_records(), st.text(max_size=200)))
@example("a: \ud800\n")  # UnicodeEncodeError in libyaml's reader
def test_any_text_gives_a_record_or_record_error(text: str) -> None:
    try:
        parse_record(text, "fuzz.yaml", stem="valid-2023")
    except RecordError as exc:
        assert_well_formed(exc, "fuzz.yaml")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
# One example per crash class found (by the fuzzers, or reported in issue 12): each raised
# something other than RecordError, or gave a message of several lines.
@example(b"title: =\n")  # KeyError 'tag:yaml.org,2002:value'
@example(b"- =\n")
@example(b"title: <<\n")  # KeyError 'tag:yaml.org,2002:merge'
@example(b"<<: {id: a-2023}\n")
@example(b"year: " + b"9" * 5000 + b"\n")  # ValueError: int max str digits
@example(b"year: 0x_\n")  # ValueError: int('', 16)
@example(b"title: 2023-13-45\n")  # ValueError: month must be in 1..12
@example(b"title: 2001-12-14 21:59:43.10 -25:00\n")  # ValueError: UTC offset
@example(b"id: a-2023\ntitle: a\x01b\n")  # ReaderError at line 1, in two lines
@example(b"authors: >\n  a\n  b\n")  # a message of two lines
def test_any_bytes_give_a_record_or_record_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "valid-2023.yaml"
    path.write_bytes(data)
    try:
        load_record(path)
    except RecordError as exc:
        assert_well_formed(exc, str(path))
