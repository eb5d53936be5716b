"""The contributor files agree with the code: issue form, workflows, pre-commit, CONTRIBUTING.md.

Each file is read with yaml.safe_load and its structure checked against what it must say: the
issue form's dropdowns are the taxonomy's values, the workflows and hooks run the checks CI
relies on, and every `kb ...` command CONTRIBUTING.md shows is one the real parser accepts.
Offline and fast: nothing is installed, fetched or run but the argument parser.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenkb.cli import build_parser
from tokenkb.taxonomy import Family, Modality

from .conftest import ROOT

GITHUB = ROOT / ".github"
ISSUE_FORM = GITHUB / "ISSUE_TEMPLATE" / "add-paper.yml"
ISSUE_CONFIG = GITHUB / "ISSUE_TEMPLATE" / "config.yml"
CI = GITHUB / "workflows" / "ci.yml"
SITE = GITHUB / "workflows" / "site.yml"
PRE_COMMIT = ROOT / ".pre-commit-config.yaml"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
PR_TEMPLATE = GITHUB / "PULL_REQUEST_TEMPLATE.md"
YAML_FILES = [ISSUE_FORM, ISSUE_CONFIG, CI, SITE, PRE_COMMIT]

SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "<", "&", "(", ")"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def kb_commands(text: str) -> list[list[str]]:
    """Every `kb ...` command in shell text, as argv after `kb`, split at shell operators.

    Placeholders such as `<id>` stand for one word."""
    commands = []
    for line in text.splitlines():
        line = re.sub(r"<[^<>\s]+>", "PLACEHOLDER", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token in SHELL_OPERATORS:
                if segment[:1] == ["kb"] and len(segment) > 1:  # a bare `kb` names the tool
                    commands.append(segment[1:])
                segment = []
            else:
                segment.append(token)
    return commands


def markdown_code(text: str) -> str:
    """The contents of fenced blocks, then each inline code span on a line of its own (a span
    may wrap across lines in the source)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return "\n".join([*blocks, *spans])


def assert_parses(argv: list[str], where: str) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of rejecting a command line
        assert exc.code == 0, f"{where}: `kb {' '.join(argv)}` is not a valid kb command line"


def workflow_runs(workflow: dict[str, Any]) -> str:
    return "\n".join(
        str(step.get("run", ""))
        for job in workflow["jobs"].values()
        for step in job.get("steps", [])
    )


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """The `on:` mapping; YAML 1.1 (PyYAML) reads the bare key `on` as True."""
    value = workflow.get("on", workflow.get(True))
    assert isinstance(value, dict), "triggers must be a mapping"
    return value


# --- every file parses -----------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_yaml_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(load(path), dict)


# --- the issue form --------------------------------------------------------------------------


def form_fields() -> dict[str, dict[str, Any]]:
    body = load(ISSUE_FORM)["body"]
    fields = {item["id"]: item for item in body if "id" in item}
    assert len(fields) == sum("id" in item for item in body), "field ids must be unique"
    return fields


def test_issue_form_is_well_formed() -> None:
    form = load(ISSUE_FORM)
    assert form["name"] == "Add a paper" and form["description"]
    kinds = {"markdown", "input", "textarea", "dropdown", "checkboxes"}
    for item in form["body"]:
        assert item["type"] in kinds, item
        assert item["attributes"].get("label") or item["type"] == "markdown", item
        assert set(item) <= {"type", "id", "attributes", "validations"}, item
    assert load(ISSUE_CONFIG) == {"blank_issues_enabled": True}


def test_issue_form_requires_an_arxiv_id_or_doi() -> None:
    """GitHub forms cannot require one of two fields, so one required field takes either."""
    identifier = form_fields()["identifier"]
    label = identifier["attributes"]["label"]
    assert identifier["type"] == "input"
    assert "arxiv" in label.lower() and "doi" in label.lower()
    assert identifier["validations"]["required"] is True


def test_issue_form_asks_for_the_facts_and_their_source() -> None:
    fields = form_fields()
    assert {"title", "venue", "code", "modality", "family", "training_free", "sources"} <= set(
        fields
    )
    assert fields["sources"]["type"] == "textarea"
    assert fields["sources"]["validations"]["required"] is True


def test_issue_form_dropdowns_are_the_vocabulary() -> None:
    fields = form_fields()
    modality, family, training_free = (
        fields[name] for name in ("modality", "family", "training_free")
    )
    assert modality["type"] == family["type"] == training_free["type"] == "dropdown"
    assert modality["attributes"]["options"] == [m.value for m in Modality]
    assert family["attributes"]["options"] == [f.value for f in Family]
    assert family["attributes"]["multiple"] is True
    # Quoted in the file: bare yes/no would be read as booleans by YAML 1.1 readers.
    assert training_free["attributes"]["options"] == ["yes", "no", "unsure"]


# --- the workflows ---------------------------------------------------------------------------


def test_ci_runs_every_check_on_pull_requests_and_main() -> None:
    ci = load(CI)
    on = triggers(ci)
    assert "pull_request" in on
    assert on["push"]["branches"] == ["main"]
    runs = workflow_runs(ci)
    for check in ("kb validate", "kb fmt --check", "kb render --check", "ruff check", "mypy"):
        assert re.search(rf"^{re.escape(check)}\b", runs, flags=re.M), f"CI does not run {check}"
    assert re.search(r"^python -m pytest -q$", runs, flags=re.M)
    assert re.search(r"apt-get install .*\bchromium\b", runs), "browser tests need chromium"
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    (job,) = ci["jobs"].values()
    assert "3.11" in str(job.get("container", "")) + str(job.get("steps"))
    uploads = [s["with"]["path"] for s in job["steps"] if "upload-artifact" in s.get("uses", "")]
    assert uploads == ["build/test-artifacts/"], (
        "the browser tests' screenshots (tests/test_site.py)"
    )


def test_ci_installs_as_the_readme_says() -> None:
    """README's test command, torch aside (its CPU build comes from PyTorch's index there)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (command,) = [line for line in readme.splitlines() if line.startswith("pip install torch")]
    runs = workflow_runs(load(CI))
    for part in command.replace("torch==2.13.0 ", "").split(" && "):
        assert part.strip() in runs, f"CI does not run README's `{part.strip()}`"


def test_site_is_built_and_deployed_from_main() -> None:
    site = load(SITE)
    assert triggers(site)["push"]["branches"] == ["main"]
    runs = workflow_runs(site)
    assert re.search(r"^pip install -e \.$", runs, flags=re.M)
    assert re.search(r"^kb build$", runs, flags=re.M)
    steps = [step for job in site["jobs"].values() for step in job["steps"]]
    upload = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert [s["with"]["path"].rstrip("/") for s in upload] == ["site"]
    deploy_jobs = [
        job
        for job in site["jobs"].values()
        if any(s.get("uses", "").startswith("actions/deploy-pages@") for s in job["steps"])
    ]
    (deploy,) = deploy_jobs
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"


@pytest.mark.parametrize("path", [CI, SITE], ids=lambda p: p.name)
def test_actions_are_pinned_to_a_major_version(path: Path) -> None:
    uses = [
        step["uses"]
        for job in load(path)["jobs"].values()
        for step in job.get("steps", [])
        if "uses" in step
    ]
    assert uses
    for action in uses:
        assert re.fullmatch(r"actions/[a-z-]+@v\d+", action), action


# --- pre-commit ------------------------------------------------------------------------------


def hooks() -> dict[str, dict[str, Any]]:
    repos = load(PRE_COMMIT)["repos"]
    return {hook["id"]: {**hook, "repo": repo} for repo in repos for hook in repo["hooks"]}


@pytest.mark.parametrize("entry", ["kb validate", "kb fmt --check"])
def test_pre_commit_runs_kb_on_records(entry: str) -> None:
    (hook,) = [h for h in hooks().values() if h.get("entry") == entry]
    assert hook["repo"]["repo"] == "local" and hook["language"] == "system"
    pattern = re.compile(hook["files"])
    assert pattern.search("papers/tome-2023.yaml")
    for other in ("schema/template.yaml", "tests/data/invalid/x.yaml", "papers/notes.md"):
        assert not pattern.search(other), other


def test_pre_commit_ruff_is_pinned() -> None:
    ruff = [h for h in hooks().values() if h["repo"]["repo"].endswith("astral-sh/ruff-pre-commit")]
    assert {h["id"] for h in ruff} >= {"ruff-check", "ruff-format"}
    assert re.fullmatch(r"v\d+\.\d+\.\d+", ruff[0]["repo"]["rev"])


# --- kb commands named anywhere are real -----------------------------------------------------


def test_contributing_names_only_real_commands() -> None:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    named = set(re.findall(r"`kb ([a-z-]+)", text))
    assert named, "CONTRIBUTING.md shows no kb command"
    assert named <= set(subcommands()), f"not kb subcommands: {named - set(subcommands())}"
    assert {"new", "fmt", "validate", "import", "vocab", "render"} <= named


def test_contributing_command_lines_parse() -> None:
    """Full command lines parse; a bare `kb import` in prose only names the command."""
    commands = kb_commands(markdown_code(CONTRIBUTING.read_text(encoding="utf-8")))
    assert len(commands) >= 10
    for argv in commands:
        if len(argv) == 1:
            assert argv[0] in subcommands(), argv
        else:
            assert_parses(argv, "CONTRIBUTING.md")


def test_workflow_and_hook_commands_parse() -> None:
    shell = [workflow_runs(load(CI)), workflow_runs(load(SITE))]
    shell += [str(h["entry"]) for h in hooks().values() if h["repo"]["repo"] == "local"]
    commands = kb_commands("\n".join(shell))
    assert len(commands) >= 6
    for argv in commands:
        assert_parses(argv, "workflow or hook")


def test_kb_commands_reader_splits_shell_lines() -> None:
    """The reader the two tests above rely on: operators end a command, placeholders are words."""
    line = "pip install -e . && kb build; kb fmt papers/<id>.yaml > out.txt | kb vocab; kb"
    assert kb_commands(line) == [["build"], ["fmt", "papers/PLACEHOLDER.yaml"], ["vocab"]]
    with pytest.raises(AssertionError, match="not a valid kb command line"):
        assert_parses(["import", "--dry-run", "--format", "csv", "x.md"], "here")


def test_contributing_links_resolve() -> None:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    assert links
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), f"CONTRIBUTING.md links to missing {link}"


def test_contributing_has_five_steps() -> None:
    text = CONTRIBUTING.read_text(encoding="utf-8")
    section = text.split("## Add a paper in five steps", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^(\d)\. ", section, flags=re.M) == ["1", "2", "3", "4", "5"]


def test_pull_request_template_is_a_checklist() -> None:
    text = PR_TEMPLATE.read_text(encoding="utf-8")
    assert len(re.findall(r"^- \[ \] ", text, flags=re.M)) >= 4
    for needed in ("kb validate", "kb fmt", "own words", "sources", "One work per file"):
        assert needed in text, needed
