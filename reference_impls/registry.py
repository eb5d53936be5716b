"""The registry of reference implementations: found by walking the package, never kept by hand.

Every algorithm module defines `IMPL = ImplInfo(...)`. `discover()` imports the modules of each
family package (the packages and their protocols are `reference_impls.families.FAMILIES`) and
collects those entries; `conformance_problems()` checks every module against its family's
protocol; tests check that the registry, the modules, their tests and the paper records agree, so
a list can never drift from the code.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from .families import FAMILIES, missing

FAMILY_PACKAGES = tuple(f"reference_impls.{package}" for package in FAMILIES)
# Where each package's tests live: tests/impls/<folder>/test_<name>.py (the package's name).
TEST_FOLDERS = {package: family.test_folder for package, family in FAMILIES.items()}


@dataclass(frozen=True)
class ImplInfo:
    """What one module implements, and how faithfully."""

    name: str  # short unique name, e.g. "tome"
    title: str  # the algorithm in a few words
    papers: tuple[str, ...]  # ids of the records in papers/ whose algorithm this is
    family: str  # a tokenkb.taxonomy.Family value
    training_free: bool  # usable on a pretrained model without training
    arxiv: str | None  # the arXiv id the module docstring cites (None for baselines)
    simplified: str  # what differs from the paper, plainly
    module: str = field(default="", compare=False)  # filled in by discover()

    @property
    def test_file(self) -> str:
        """tests/impls/<package>/test_<name>.py: the test folders mirror the source."""
        folder = TEST_FOLDERS[self.module.split(".")[1]]
        return "/".join(part for part in ("tests/impls", folder, f"test_{self.name}.py") if part)


def config_for(module: Any, keep_rate: float, depth: int, num_patches: int) -> Any:
    """`module.config_for` for a ViT of this depth and patch count (for older callers; the one
    way is `module.config_for(keep, model_config)`, e.g. with the model's `ViTConfig`)."""
    return module.config_for(keep_rate, SimpleNamespace(depth=depth, num_patches=num_patches))


def kv_config_for(module: Any, keep: float, head_dim: int) -> Any:
    """`module.config_for` of a KV method for a model with this head dimension (for older
    callers, as `config_for`)."""
    return module.config_for(keep, SimpleNamespace(head_dim=head_dim))


# The canonical algorithm of each family: what a method's record links at impl_level "family"
# when its own algorithm has no module yet. Per family, by the record's first modality ("*" for
# any other); a family keyed "*-trained" / "*-free" splits by training-freeness. Families with no
# token-level algorithm of their own (hardware, other) have none: a hardware record uses its
# second family. The test in tests/impls/test_registry.py keeps records and this table in step.
CANONICAL: dict[str, dict[str, str]] = {
    "pruning": {
        "vlm": "reference_impls.vlm.fastv",
        "language": "reference_impls.text.power_bert",
        "*-free": "reference_impls.vision.zero_tprune",
        "*-trained": "reference_impls.vision.dynamicvit",
    },
    "merging": {
        "diffusion": "reference_impls.diffusion.tome_sd",
        "*": "reference_impls.vision.tome",
    },
    "prune-merge": {"vlm": "reference_impls.vlm.prumerge", "*": "reference_impls.vision.evit"},
    "clustering": {"*": "reference_impls.vision.atc"},
    "learned-compression": {
        "vlm": "reference_impls.projector.resampler",
        "*": "reference_impls.vision.tokenlearner",
    },
    "kv-eviction": {"*": "reference_impls.kv.h2o"},
    "kv-quantization": {"*": "reference_impls.kv.kivi"},
    "kv-merging": {"*": "reference_impls.kv.minicache"},
    "prompt-compression": {"*": "reference_impls.prompt.llmlingua"},
    "token-skipping": {"*": "reference_impls.text.mod"},
}


def canonical_impl(
    families: list[str], modalities: list[str], training_free: bool | None
) -> str | None:
    """The module a method links at family level: its first family that has a canonical
    algorithm, chosen by its first modality (and training-freeness where that splits)."""
    modality = modalities[0] if modalities else "*"
    for family in families:
        table = CANONICAL.get(family)
        if table is None:
            continue
        if modality in table:
            return table[modality]
        if "*" in table:
            return table["*"]
        return table["*-free" if training_free else "*-trained"]
    return None


def discover() -> list[ImplInfo]:
    """Every registered implementation, sorted by name."""
    found: list[ImplInfo] = []
    for package_name in FAMILY_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package_name}.{info.name}")
            impl = getattr(module, "IMPL", None)
            if isinstance(impl, ImplInfo):
                found.append(dataclasses.replace(impl, module=module.__name__))
    return sorted(found, key=lambda impl: impl.name)


def conformance_problems() -> list[str]:
    """Every way a family package departs from its protocol (`families.FAMILIES`), one line
    each: an algorithm module without `IMPL` or without a name its family requires, an
    infrastructure module that registers itself. Empty when everything conforms."""
    problems: list[str] = []
    for package_name, family in FAMILIES.items():
        package = importlib.import_module(f"reference_impls.{package_name}")
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            path = f"reference_impls/{package_name}/{info.name}.py"
            registered = isinstance(getattr(module, "IMPL", None), ImplInfo)
            if info.name in family.infrastructure:
                if registered:
                    problems.append(f"{path}: infrastructure of {package_name} defines IMPL")
                continue
            if not registered:
                problems.append(
                    f"{path}: no IMPL; an algorithm module registers itself "
                    f"(or list it in FAMILIES[{package_name!r}].infrastructure)"
                )
            lacking = missing(module, family)
            if lacking:
                problems.append(
                    f"{path}: lacks {', '.join(lacking)}; every {package_name} method exposes "
                    f"{', '.join(family.exposes)}"
                )
            elif list(inspect.signature(module.config_for).parameters)[1:2] != ["model_config"]:
                problems.append(
                    f"{path}: config_for{inspect.signature(module.config_for)} should take "
                    "(keep, model_config, ...): the one signature of every method"
                )
    return problems
