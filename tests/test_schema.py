"""The schema as contributors and editors meet it: field types, the JSON Schema, the template."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from tokenkb.model import (
    FIELD_NAMES,
    Paper,
    Source,
    normalize_arxiv,
    normalize_github,
    suggest_slug,
    suggest_venue,
)
from tokenkb.render import schema_text
from tokenkb.store import parse_record, record_paths

from .conftest import DATA, PAPERS, ROOT

SCHEMA = json.loads((ROOT / "schema" / "paper.schema.json").read_text(encoding="utf-8"))
TEMPLATE = ROOT / "schema" / "template.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2210.09461", "2210.09461"),
        ("2210.09461v3", "2210.09461"),
        ("https://arxiv.org/abs/2210.09461", "2210.09461"),
        ("https://arxiv.org/pdf/2403.15388.pdf", "2403.15388"),
        ("https://arxiv.org/abs/2403.15388.pdf", "2403.15388"),
        ("arXiv:2106.02034", "2106.02034"),
        ("arXiv preprint arXiv:2202.07800, 2022", "2202.07800"),
        ("https://arxiv.org/abs/cs/0112017", "cs/0112017"),
        ("https://example.org/2210", None),
    ],
)
def test_normalize_arxiv(text: str, expected: str | None) -> None:
    assert normalize_arxiv(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://github.com/youweiliang/evit?tab=readme-ov-file",
            "https://github.com/youweiliang/evit",
        ),
        ("http://www.github.com/owner/repo.git", "https://github.com/owner/repo"),
        ("https://github.com/owner/repo/", "https://github.com/owner/repo"),
        (
            "https://github.com/owner/repo/tree/main/sub/",
            "https://github.com/owner/repo/tree/main/sub",
        ),
        ("https://gitlab.com/owner/repo", None),
    ],
)
def test_normalize_github(text: str, expected: str | None) -> None:
    assert normalize_github(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Neurips 2023", "NeurIPS 2023"),
        ("NeurIPS'23", "NeurIPS 2023"),
        ("CVPRW 2024", "CVPR 2024 Workshop"),
        ("CVPR 2023 workshop", "CVPR 2023 Workshop"),
        ("Findings of EMNLP 2023", "EMNLP 2023 Findings"),
        ("EMNLP Findings 2023", "EMNLP 2023 Findings"),
        ("T-PAMI 2023", "TPAMI 2023"),
        ("arxiv", "arXiv"),
        ("ICLR", None),
        ("Journal of Things 2023", None),
    ],
)
def test_suggest_venue(text: str, expected: str | None) -> None:
    assert suggest_venue(text) == expected


def test_suggest_slug() -> None:
    assert suggest_slug("ToMe 2023") == "tome-2023"
    assert suggest_slug("  LLaVA-PruMerge__2024 ") == "llava-prumerge-2024"


def test_old_style_arxiv_ids_are_valid() -> None:
    Paper.model_validate(
        {"id": "old-2001", "title": "Old", "year": 2001, "venue": "arXiv", "kind": "survey",
         "modality": ["language"], "arxiv": "cs/0112017"}
    )  # fmt: skip


# --- JSON Schema ------------------------------------------------------------------------------


def test_schema_file_is_generated_from_the_model() -> None:
    assert (ROOT / "schema" / "paper.schema.json").read_text(encoding="utf-8") == schema_text()


def test_schema_lists_every_field_with_vocabularies() -> None:
    assert list(SCHEMA["properties"]) == list(FIELD_NAMES)
    assert set(SCHEMA["required"]) == {"id", "title", "year", "kind"}
    assert SCHEMA["additionalProperties"] is False
    modality = SCHEMA["properties"]["modality"]["items"]
    assert "vlm" in modality["enum"] and len(modality["enumDescriptions"]) == len(modality["enum"])


def test_every_record_satisfies_the_json_schema() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for path in record_paths(PAPERS):
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8"))))
        assert not errors, (path, errors[0].message)


@pytest.mark.parametrize(
    "name",
    [
        "unknown-field-2023",
        "bad-modality-2023",
        "arxiv-version-2023",
        "code-github-query-2023",
        "impl-alone-2023",
        "survey-training-free-2023",
        "missing-title-2023",
        "venue-workshop-2023",
        "url-char-2023",
        "code-quote-2023",
        "doi-angle-2023",
        "title-bidi-2023",
        "title-too-long-2023",
    ],
)
def test_json_schema_rejects_what_an_editor_should_flag(name: str) -> None:
    """Editors see the same mistakes as `kb validate` for the rules a JSON Schema can express."""
    data = yaml.safe_load((DATA / "invalid" / f"{name}.yaml").read_text(encoding="utf-8"))
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data))


# --- template ---------------------------------------------------------------------------------


def test_template_shows_every_field_and_is_valid() -> None:
    text = TEMPLATE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert list(data) == list(FIELD_NAMES)
    assert set(data["sources"][0]) == set(Source.model_fields)
    paper, _ = parse_record(text, str(TEMPLATE))
    assert paper.id == "shortname-2023"


def test_template_comments_explain_each_field() -> None:
    lines = TEMPLATE.read_text(encoding="utf-8").splitlines()
    for name in FIELD_NAMES:
        line = next(line for line in lines if line.startswith(f"{name}:"))
        assert "#" in line or name in ("summary",), f"template line for {name} has no comment"


def test_records_in_papers_are_named_by_id() -> None:
    for path in record_paths(PAPERS):
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["id"] == path.stem


def test_a_method_may_leave_unverified_curated_fields_out() -> None:
    """An imported method whose family and training-freeness nobody has verified is valid,
    in Python and in the editor schema alike (a wrong fact is worse than a missing one)."""
    text = "\n".join(
        [
            "id: unverified-2023",
            "title: A Method Nobody Has Read Yet",
            "year: 2023",
            "venue: arXiv",
            "kind: method",
            "modality: [vision]",
        ]
    )
    paper, _ = parse_record(text.replace("modality: [vision]", ""), "unverified-2023.yaml")
    assert paper.training_free is None and paper.family == [] and paper.modality == []
    text = text.replace("venue: arXiv\n", "")
    paper, _ = parse_record(text, "unverified-2023.yaml")
    assert paper.venue is None
    assert not list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(yaml.safe_load(text)))
