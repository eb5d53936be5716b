"""One broken fixture per validation rule, with the exact messages `kb validate` must print.

Each file in tests/data/invalid/ breaks one rule (the file name says which); the expected list
is every (line, message) the validator reports for it, nothing more. A fixture that starts to
produce a different message, a different line, or an extra problem fails here.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml

from tokenkb import model, store
from tokenkb.validate import validate

from .conftest import DATA, PAPERS

INVALID = DATA / "invalid"

EXPECTED: dict[str, list[tuple[int, str]]] = {
    "Bad_Slug-2023": [
        (
            1,
            "id: 'Bad_Slug-2023' is not an id of the form <shortname>-<year> in lowercase letters, digits and hyphens (e.g. 'tome-2023'); did you mean 'bad-slug-2023'?",
        ),
    ],
    "acl-url-2023": [
        (
            14,
            "acl: 'https://aclanthology.org/2023.emnlp-main.825.pdf' is not an ACL Anthology id such as '2023.emnlp-main.825' or 'P19-1580'; did you mean '2023.emnlp-main.825'?",
        ),
    ],
    "alias-is-title-2023": [
        (4, "alias 'a valid title' repeats the title; remove it"),
    ],
    "anchor-alias-2023": [
        (8, "anchor '&m' is not allowed; remove it"),
        (10, "alias '*m' is not allowed; write the value out"),
    ],
    "arxiv-digits-2023": [
        (
            13,
            "arxiv: '2301.0001' is not an arXiv id: ids from 2015 on have 5 digits after the dot, earlier ones 4",
        ),
    ],
    "arxiv-impossible-2023": [
        (
            13,
            "arxiv: '9912.12345' is not an arXiv id yet: it would be from December 2099, after this month (June 2026); a paper from 1999 has an id such as 'hep-th/9912001' (archive/YYMMNNN)",
        ),
    ],
    "arxiv-unquoted-2023": [
        (13, "arxiv: expected text, got a number 2301.00010; quote it: '2301.00010'"),
    ],
    "arxiv-url-2023": [
        (
            13,
            "arxiv: 'https://arxiv.org/pdf/2301.00001.pdf' is not a bare arXiv id such as '2210.09461' (no URL, 'arXiv:' prefix, version or '.pdf'); did you mean '2301.00001'?",
        ),
    ],
    "arxiv-version-2023": [
        (
            13,
            "arxiv: '2301.00001v2' is not a bare arXiv id such as '2210.09461' (no URL, 'arXiv:' prefix, version or '.pdf'); did you mean '2301.00001'?",
        ),
    ],
    "bad-family-2023": [
        (
            11,
            "family 'mergin' is not one of pruning, merging, prune-merge, clustering, learned-compression, kv-eviction, kv-quantization, kv-merging, prompt-compression, token-skipping, hardware, other; did you mean 'merging'?",
        ),
    ],
    "bad-kind-2023": [
        (
            7,
            "kind 'methods' is not one of method, survey, benchmark, analysis, system, thesis, blog; did you mean 'method'?",
        ),
    ],
    "bad-modality-2023": [
        (
            9,
            "modality 'vllm' is not one of vision, video, language, vlm, audio, diffusion, ssm, multimodal; did you mean 'vlm'?",
        ),
    ],
    "bom-2023": [
        (1, "file starts with a byte-order mark; save it as UTF-8 without BOM"),
    ],
    "code-github-git-2023": [
        (
            14,
            "code: 'https://github.com/facebookresearch/ToMe.git' is not a GitHub repository URL of the form 'https://github.com/<owner>/<repo>' (no query, fragment, '.git' or trailing slash); did you mean 'https://github.com/facebookresearch/ToMe'?",
        ),
    ],
    "code-github-query-2023": [
        (
            14,
            "code: 'https://github.com/youweiliang/evit?tab=readme-ov-file' is not a GitHub repository URL of the form 'https://github.com/<owner>/<repo>' (no query, fragment, '.git' or trailing slash); did you mean 'https://github.com/youweiliang/evit'?",
        ),
    ],
    "code-quote-2023": [
        (
            14,
            "code: \"https://github.com/owner/repo/tree/main/x'onmouseover=alert(1)\" contains \"'\", which a link cannot hold as it is; percent-encode it as %27 (write 'https://github.com/owner/repo/tree/main/x%27onmouseover=alert(1)')",
        ),
    ],
    "complex-key-2023": [
        (14, "a list or mapping cannot be a key; keys are field names"),
    ],
    "control-char-2023": [
        (7, "control character U+0001 at column 11 is not allowed in a record; delete it"),
    ],
    "date-invalid-2023": [
        (
            6,
            "'2023-13-45' is read as a date but is not a valid date; quote it if it is text",
        ),
    ],
    "deep-nesting-2023": [
        (14, "nested more than 8 levels deep"),
    ],
    "doi-angle-2023": [
        (
            14,
            "doi: '10.1002/(SICI)1097-4571(199806)49:8<693::AID-ASI4>3.0.CO;2-0' contains '<', which a link cannot hold as it is; percent-encode it as %3C (write '10.1002/(SICI)1097-4571(199806)49:8%3C693::AID-ASI4%3E3.0.CO;2-0')",
        ),
    ],
    "doi-url-2023": [
        (
            14,
            "doi: 'https://doi.org/10.1109/CVPR52729.2023.00123' is not a bare DOI such as '10.1109/CVPR52729.2023.00123'; did you mean '10.1109/CVPR52729.2023.00123'?",
        ),
    ],
    "duplicate-item-2023": [
        (8, "modality: lists 'vision' twice; keep one"),
    ],
    "duplicate-key-2023": [
        (
            6,
            "duplicate key 'title' (first at line 2); YAML readers keep only one of them, so merge them into one",
        ),
    ],
    "empty-2023": [
        (1, "file is empty; a record is a mapping of fields (see schema/template.yaml)"),
    ],
    "explicit-tag-2023": [
        (2, "tag '!!python/name:os.system' is not allowed; remove it"),
    ],
    "hex-empty-2023": [
        (5, "'0x_' is read as a number but is not a valid number; quote it if it is text"),
    ],
    "id-year-2021": [
        (1, "id year 2021 matches neither year (2023) nor the venue year; use 'id-year-2023'"),
    ],
    "ieee-url-2023": [
        (
            14,
            "ieee: 'https://ieeexplore.ieee.org/document/10183862' is not an IEEE Xplore document number such as '10183862'; did you mean '10183862'?",
        ),
    ],
    "impl-alone-2023": [
        (
            14,
            "impl needs impl_level: 'paper' (this work's own algorithm) or 'family' (the canonical algorithm of its family)",
        ),
    ],
    "impl-bad-module-2023": [
        (
            14,
            "impl: 'tome.py' is not a reference implementation module such as 'reference_impls.vision.tome'",
        ),
    ],
    "impl-missing-2023": [
        (
            14,
            "impl: module 'reference_impls.vision.tomme' does not exist; did you mean 'reference_impls.vision.tome'?",
        ),
    ],
    "impl-level-alone-2023": [
        (
            14,
            "impl_level is set but impl is not; name the reference_impls module in impl or remove impl_level",
        ),
    ],
    "line-separator-2023": [
        (
            4,
            "character U+2028 (line separator) at column 6 is read as a line break by YAML; delete it, or use an ordinary line break",
        ),
    ],
    "merge-key-2023": [
        (9, "merge key '<<' is not allowed; write the fields out in this mapping"),
    ],
    "missing-title-2023": [
        (1, "missing required field 'title'"),
    ],
    "modality-empty-2023": [
        (8, "modality: give at least one value"),
    ],
    "modality-scalar-2023": [
        (
            8,
            "modality: expected a list, got text 'vision'; write each item on its own line as '- vision'",
        ),
    ],
    "multi-document-2023": [
        (
            14,
            "a record file holds one YAML document; remove this '---' and what follows, or move it to a file of its own",
        ),
    ],
    "not-mapping-2023": [
        (1, "a record is a mapping of 'field: value' lines, not a list"),
    ],
    "not-utf8-2023": [
        (2, "byte 0xe9 at column 11 is not valid UTF-8; save the file as UTF-8"),
    ],
    "openreview-url-2023": [
        (
            14,
            "openreview: 'https://openreview.net/forum?id=BjyvwnXXVn_' is not an OpenReview forum id such as 'BjyvwnXXVn_' (the id= part of the forum URL); did you mean 'BjyvwnXXVn_'?",
        ),
    ],
    "paper-arxiv-mismatch-2023": [
        (14, "paper links arXiv 2301.00002 but arxiv is 2301.00001; one of them is wrong"),
    ],
    "paper-arxiv-missing-2023": [
        (13, "paper links arXiv 2301.00002; also set arxiv: '2301.00002'"),
    ],
    "paper-http-2023": [
        (
            14,
            "paper: 'http://example.org/paper.pdf' uses http; write 'https://example.org/paper.pdf'",
        ),
    ],
    "sources-bad-2023": [
        (16, "sources[0].line: must be 1 or more, got 0"),
        (18, "sources[1]: missing required field 'source'"),
        (19, "sources[1]: unknown field 'lines'; did you mean 'line'?"),
    ],
    "stem-mismatch-2023": [
        (
            1,
            "id 'another-name-2023' does not match the file name 'stem-mismatch-2023.yaml'; rename the file to 'another-name-2023.yaml' or set id: stem-mismatch-2023",
        ),
    ],
    "summary-too-long-2023": [
        (14, "summary: is 754 characters; keep it to 700 or fewer (one to three sentences)"),
    ],
    "survey-training-free-2023": [
        (12, "training_free applies to methods only and this record has kind: survey; remove it"),
    ],
    "syntax-error-2023": [
        (13, "invalid YAML: while parsing a block mapping, did not find expected key"),
    ],
    "tab-indent-2023": [
        (9, "tab used for indentation; indent with spaces"),
    ],
    "tag-bang-2023": [
        (2, "tag '!' is not allowed; remove it"),
    ],
    "title-bidi-2023": [
        (
            2,
            "title: contains U+202E (RIGHT-TO-LEFT OVERRIDE), a bidirectional control that makes text display differently from what it is; remove it",
        ),
    ],
    "title-empty-2023": [
        (2, "title: expected text, got an empty value"),
    ],
    "title-invisible-2023": [
        (
            2,
            "title: has no letter or digit, only invisible characters such as U+200B (ZERO WIDTH SPACE); write the text itself",
        ),
    ],
    "title-spaces-2023": [
        (2, "title: has leading or trailing spaces; write 'A  Valid Title'"),
    ],
    "title-too-long-2023": [
        (2, "title: is 508 characters; keep it to 500 or fewer"),
    ],
    "training-free-text-2023": [
        (12, "training_free: expected true or false, got text 'yes'"),
    ],
    "unknown-field-2023": [
        (12, "unknown field 'traning_free'; did you mean 'training_free'?"),
    ],
    "url-char-2023": [
        (
            14,
            "paper: 'https://example.com/x)<svg/onload=alert(1)>' contains '<', which a link cannot hold as it is; percent-encode it as %3C (write 'https://example.com/x)%3Csvg/onload=alert(1)%3E')",
        ),
    ],
    "venue-before-year-2023": [
        (
            6,
            "venue year 2022 is before year 2023; year is the first public version, so it is 2022 or earlier",
        ),
    ],
    "venue-future-2099": [
        (6, "venue: 'ICLR 2099' is after next year; a venue year is 2027 or earlier"),
    ],
    "venue-spelling-2023": [
        (6, "venue: 'Neurips 2023' is not a normalised venue; did you mean 'NeurIPS 2023'?"),
    ],
    "venue-unknown-2023": [
        (
            6,
            "venue: 'Journal of Things' is not a known venue name (AAAI, ACL, ACM MM, ASPLOS, BMVC, COLING, COLM, CVPR, DAC, EACL, ECCV, EMNLP, HPCA, ICASSP, ICCV, ICDAR, ICLR, ICML, IJCAI, ISCA, ISCAS, KDD, MICRO, MLSys, NAACL, NeurIPS, SIGIR, TACL, TIP, TMLR, TPAMI, TNNLS, WACV, WWW); if it is a real venue, add it to VENUES in src/tokenkb/taxonomy.py",
        ),
    ],
    "venue-workshop-2023": [
        (6, "venue: 'CVPRW 2023' is not a normalised venue; did you mean 'CVPR 2023 Workshop'?"),
    ],
    "year-after-arxiv-2024": [
        (
            5,
            "year 2024 is after the arXiv id's year 2023 (2301.00001); year is the first public version, so it is 2023 or earlier",
        ),
    ],
    "year-huge-2023": [
        (
            5,
            "number 999999999999... is 5000 characters long; no field takes a number over 100 characters (quote it if it is text)",
        ),
    ],
    "year-future-2099": [
        (5, "year: 2099 is not a plausible year (1950 to 2026)"),
    ],
    "year-range-2023": [
        (5, "year: 1066 is not a plausible year (1950 to 2026)"),
    ],
    "year-text-2023": [
        (5, "year: expected a whole number such as 2023, got text '2023'"),
    ],
}


def test_every_fixture_has_expectations() -> None:
    """A new fixture without expected messages (or the reverse) is a mistake."""
    names = {path.stem for path in INVALID.glob("*.yaml")}
    assert names == set(EXPECTED)


# libyaml and PyYAML's own parser word syntax errors differently (same line, same cause).
PURE_PYTHON_WORDING = {
    "syntax-error-2023": [
        (
            13,
            "invalid YAML: while parsing a block mapping, expected <block end>, but found '<scalar>'",
        )
    ],
}

LOADERS = (
    ["libyaml", "pure-python"] if getattr(yaml, "__with_libyaml__", False) else ["pure-python"]
)


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml's C parser and again with PyYAML's pure-Python one."""
    if request.param == "pure-python":
        monkeypatch.setattr(store, "_Loader", yaml.SafeLoader)
    return str(request.param)


# The date rules (year, venue year, arXiv id) read today through `model.today`: pinned here, so
# the expected messages hold whatever the date.
FIXTURE_TODAY = datetime.date(2026, 6, 15)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_messages(name: str, loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "today", lambda: FIXTURE_TODAY)
    path = INVALID / f"{name}.yaml"
    report = validate([path])
    got = [(p.line, p.message) for p in report.problems]
    expected = EXPECTED[name]
    if loader == "pure-python":
        expected = PURE_PYTHON_WORDING.get(name, expected)
    assert got == expected
    assert all(p.path == str(path) for p in report.problems)


def test_valid_records_with_either_parser(loader: str) -> None:
    report = validate([PAPERS])
    assert report.ok and report.files >= 12


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "huge-2023.yaml"
    path.write_text("id: huge-2023\nsummary: " + "x" * 70_000 + "\n", encoding="utf-8")
    report = validate([path])
    assert [(p.line, p.message) for p in report.problems] == [
        (1, "file is 70024 bytes; a record must be under 65536 bytes")
    ]


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    """Nested aliases are refused at the first anchor, before anything is expanded."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "laughs-2023.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = validate([path])
    assert report.problems[0].message == "anchor '&a0' is not allowed; remove it"
    assert len(report.problems) == 19  # every anchor and every alias line, each named
