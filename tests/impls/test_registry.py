"""The registry, the family protocols, the modules, their tests and the paper records agree (the
matrix over every method is tests/impls/test_conformance.py)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import pytest

from reference_impls import registry
from reference_impls.families import FAMILIES, SHARED_PACKAGES, family_of, missing
from reference_impls.registry import ImplInfo, discover
from tokenkb.store import load_record
from tokenkb.taxonomy import Family

from ..conftest import PAPERS, ROOT

IMPLS = discover()


@pytest.mark.parametrize("package", sorted(FAMILIES))
def test_every_algorithm_module_is_registered(package: str) -> None:
    """Each module of a family package is infrastructure (as its protocol declares) or defines
    IMPL; the registry finds every family package."""
    folder = ROOT / "reference_impls" / package
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    registered = {
        impl.module.rsplit(".", 1)[1]
        for impl in IMPLS
        if impl.module.startswith(f"reference_impls.{package}.")
    }
    assert modules - FAMILIES[package].infrastructure == registered
    assert f"reference_impls.{package}" in registry.FAMILY_PACKAGES


def test_family_packages_are_the_folders() -> None:
    """Every folder of reference_impls with algorithm modules has a protocol, and back."""
    folders = {p.parent.name for p in (ROOT / "reference_impls").glob("*/__init__.py")}
    assert folders - SHARED_PACKAGES == set(FAMILIES)


def test_conformance_problems_name_the_file_and_what_is_missing(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A module lacking a protocol name is reported as `path: lacks NAME; ...`."""
    from reference_impls.vision import tome

    monkeypatch.delattr(tome, "config_for")
    assert registry.conformance_problems() == [
        "reference_impls/vision/tome.py: lacks config_for; every vision method exposes Config, "
        "config_for, patch"
    ]


def test_conformance_problems_hold_config_for_to_one_signature(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from reference_impls.kv import h2o

    monkeypatch.setattr(h2o, "config_for", lambda keep, depth=4: h2o.Config())
    assert registry.conformance_problems() == [
        "reference_impls/kv/h2o.py: config_for(keep, depth=4) should take (keep, model_config, "
        "...): the one signature of every method"
    ]


def test_names_unique_and_match_modules() -> None:
    names = [impl.name for impl in IMPLS]
    assert len(names) == len(set(names))
    for impl in IMPLS:
        assert impl.module.endswith("." + impl.name)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_entry_is_consistent(impl: ImplInfo) -> None:
    assert impl.family in {f.value for f in Family}
    assert (ROOT / impl.test_file).exists(), f"{impl.name} has no {impl.test_file}"
    module = importlib.import_module(impl.module)
    doc = inspect.getdoc(module) or ""
    assert len(doc.splitlines()) >= 3, (
        "the module docstring states the paper and what is simplified"
    )
    assert missing(module, family_of(impl.module)) == []
    if impl.arxiv is not None:
        assert impl.arxiv in doc, f"docstring of {impl.module} does not cite arXiv {impl.arxiv}"
    for paper in impl.papers:
        assert paper in doc, f"docstring of {impl.module} does not name the record {paper}"
        record = load_record(PAPERS / f"{paper}.yaml")
        assert record.arxiv == impl.arxiv, (
            f"{paper} has arXiv {record.arxiv}, IMPL says {impl.arxiv}"
        )
    cited = set(re.findall(r"\b\d{4}\.\d{4,5}\b", doc))
    assert cited <= ({impl.arxiv} if impl.arxiv else set()) | _extra_citations(module), (
        f"{impl.module} cites arXiv ids {cited} other than its own"
    )


def _extra_citations(module: object) -> set[str]:
    """Ids a module may cite besides its own (`ALSO_CITES = (...)`, e.g. the method it builds on)."""
    return set(getattr(module, "ALSO_CITES", ()))


def test_no_module_prints() -> None:
    """Library code logs; it never prints (STYLE.md 11)."""
    for path in (ROOT / "reference_impls").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"
        ]
        assert not calls, f"{path} calls print"


def test_kb_impls_lists_the_registry(kb) -> None:
    import json

    result = kb("impls", "--format", "json")
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    assert [entry["name"] for entry in listed] == [impl.name for impl in IMPLS]
    for entry in listed:
        assert set(entry) >= {
            "name",
            "module",
            "papers",
            "family",
            "training_free",
            "test_file",
            "simplified",
        }
    table = kb("impls").out
    assert all(impl.name in table for impl in IMPLS)


def test_records_and_registry_link_both_ways() -> None:
    """A record's impl is a registered module naming that record; a module's records point back."""
    by_module = {impl.module: impl for impl in IMPLS}
    for path in sorted(PAPERS.glob("*.yaml")):
        record = load_record(path)
        if record.impl is None:
            continue
        assert record.impl in by_module, f"{path}: impl {record.impl} is not a registered module"
        if record.impl_level == "paper":
            assert record.id in by_module[record.impl].papers, (
                f"{path}: paper-level impl {record.impl} does not list {record.id} in IMPL.papers"
            )
    for impl in IMPLS:
        for paper in impl.papers:
            record = load_record(PAPERS / f"{paper}.yaml")
            assert record.impl == impl.module and record.impl_level == "paper", (
                f"{paper}.yaml should have impl: {impl.module} and impl_level: paper"
            )


def test_canonical_family_modules_exist_and_match_their_family() -> None:
    modules = {impl.module: impl for impl in IMPLS}
    for family, table in registry.CANONICAL.items():
        assert family in {f.value for f in Family}
        for module in table.values():
            assert module in modules, f"CANONICAL[{family!r}] names {module}, not registered"
            assert modules[module].family == family, (module, modules[module].family, family)


def test_every_method_links_an_implementation() -> None:
    """A method links its own algorithm (paper) or its family's canonical one (family); only
    methods whose families have no token-level algorithm of their own may link none."""
    modules = {impl.module: impl for impl in IMPLS}
    for path in sorted(PAPERS.glob("*.yaml")):
        record = load_record(path)
        if record.kind.value != "method":
            continue
        families = [f.value for f in record.family]
        modalities = [m.value for m in record.modality]
        canonical = registry.canonical_impl(families, modalities, record.training_free)
        if record.impl is None:
            assert canonical is None, (
                f"{path}: no implementation; link the family's canonical one: "
                f"impl: {canonical} and impl_level: family"
            )
        elif record.impl_level is not None and record.impl_level.value == "family":
            assert modules[record.impl].family in families, (
                f"{path}: family-level impl {record.impl} is not of the record's families"
            )
