"""The registry of reference implementations: found by walking the package, never kept by hand.

Every algorithm module defines `IMPL = ImplInfo(...)`. `discover()` imports the modules of each
family package and collects those entries; a test checks that the registry, the modules, their
tests and the paper records agree, so a list can never drift from the code.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

FAMILY_PACKAGES = ("reference_impls.vision",)


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
        return f"tests/impls/test_{self.name}.py"


def discover() -> list[ImplInfo]:
    """Every registered implementation, sorted by name."""
    found: list[ImplInfo] = []
    for package_name in FAMILY_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package_name}.{info.name}")
            impl = getattr(module, "IMPL", None)
            if isinstance(impl, ImplInfo):
                found.append(
                    ImplInfo(**{**impl.__dict__, "module": module.__name__})  # type: ignore[arg-type]
                )
    return sorted(found, key=lambda impl: impl.name)
