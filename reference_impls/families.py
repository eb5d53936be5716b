"""The family protocols: what every algorithm module of a family package exposes, and how it is
applied. The registry reads this table; tests check modules against it; nothing else keeps a copy.

Two roles. An *in-model* family attaches to a model inside a `with` block
(`reference_impls.apply(model, name, ...)`) through the module's own lower layer (`patch(model,
config)`, or `make_press(config)` for KV methods). An *input* family transforms the model's input
before the model reads it and has one verb for the whole family (`compress_prompt`,
`pack_video`, `make_projector`). Every module of every family exposes `Config` and
`config_for(keep, model_config)`: `keep` is the share of tokens kept, `model_config` the
configuration of the model the method is applied to (`None` where a method needs none).

This module imports nothing from the method modules: the registry, the CLI and the tests read it
without loading torch models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class FamilyProtocol:
    """One family package: its role, the names its algorithm modules expose, its machinery."""

    package: str  # "vision": the package reference_impls.vision
    role: Literal["in-model", "input"]
    # the models (class names) an in-model method applies to; for an input family, its verb
    applies_to: tuple[str, ...]
    # what every algorithm module of the package must define
    exposes: tuple[str, ...]
    # modules of the package that are shared machinery, not algorithms (they define no IMPL)
    infrastructure: frozenset[str]
    # where the package's tests live: tests/impls/<test_folder>/test_<name>.py (the package's name:
    # the test folders mirror the source)
    test_folder: str


FAMILIES: dict[str, FamilyProtocol] = {
    family.package: family
    for family in (
        FamilyProtocol(
            "vision",
            "in-model",
            ("VisionTransformer",),
            ("Config", "config_for", "patch"),
            frozenset({"vit", "adapter", "tokens", "macs"}),
            "vision",
        ),
        FamilyProtocol(
            "kv",
            "in-model",
            ("Llama", "Llava"),
            ("Config", "config_for", "make_press"),
            frozenset({"base"}),
            "kv",
        ),
        FamilyProtocol(
            "prompt",
            "input",
            ("compress_prompt",),
            ("Config", "config_for", "compress"),
            frozenset({"scorer"}),
            "prompt",
        ),
        FamilyProtocol(
            "vlm",
            "in-model",
            ("Llava",),
            ("Config", "config_for", "patch"),
            frozenset({"llava", "select"}),
            "vlm",
        ),
        FamilyProtocol(
            "projector",
            "input",
            ("make_projector",),
            ("Config", "config_for", "output_tokens", "Projector"),
            frozenset({"grid"}),
            "projector",
        ),
        FamilyProtocol(
            "video",
            "input",
            ("pack_video",),
            ("Config", "config_for", "pack_video"),
            frozenset({"packing"}),
            "video",
        ),
        FamilyProtocol(
            "diffusion",
            "in-model",
            ("DiT",),
            ("Config", "config_for", "patch"),
            frozenset({"dit"}),
            "diffusion",
        ),
        FamilyProtocol(
            "text",
            "in-model",
            ("TextEncoder",),
            ("Config", "config_for", "patch"),
            frozenset({"encoder"}),
            "text",
        ),
    )
}


# Packages of shared models and machinery that several families use; they hold no algorithm.
SHARED_PACKAGES = frozenset({"llm"})


def family_of(module_name: str) -> FamilyProtocol:
    """The protocol of the package holding `module_name` ("reference_impls.vision.tome")."""
    parts = module_name.split(".")
    if len(parts) != 3 or parts[0] != "reference_impls" or parts[1] not in FAMILIES:
        raise ValueError(
            f"{module_name} is not a module of a family package "
            f"(reference_impls.<{'|'.join(FAMILIES)}>.<name>)"
        )
    return FAMILIES[parts[1]]


def missing(module: object, family: FamilyProtocol) -> list[str]:
    """The names `family` requires that `module` does not define (empty when it conforms)."""
    return [name for name in family.exposes if not hasattr(module, name)]


@dataclass(frozen=True)
class Patches:
    """The model configuration a projector reads: the vision encoder's patch count (a
    `ViTConfig` serves as well)."""

    num_patches: int


def depth_of(model_config: object, default: int | None = None) -> int:
    """The depth a method plans its blocks or layers for: the language model's for a
    `LlavaConfig`, the model's own `depth` for any other configuration; an int is the depth
    itself (the older call `config_for(keep, depth)`); `None` gives `default`."""
    if isinstance(model_config, int):
        return model_config
    if model_config is None:
        if default is None:
            raise TypeError("this config_for needs the model's depth: pass its configuration")
        return default
    llm = getattr(model_config, "llm", None)
    depth = getattr(llm if llm is not None else model_config, "depth", None)
    if not isinstance(depth, int):
        raise TypeError(
            f"{type(model_config).__name__} has no depth: pass the model's configuration"
        )
    return depth


def patches_of(model_config: object, default: int) -> int:
    """The patch count of the vision encoder (`ViTConfig.num_patches`, a `LlavaConfig`'s
    encoder's, `Patches`); `default` for anything else (an int is a depth, not a count)."""
    vision = getattr(model_config, "vision", model_config)
    return int(getattr(vision, "num_patches", default))


def head_dim_of(model_config: object, default: int) -> int:
    """The attention head dimension of a `LlamaConfig` (or a `LlavaConfig`'s language model)."""
    llm = getattr(model_config, "llm", model_config)
    return int(getattr(llm, "head_dim", default))


def seq_len_of(model_config: object, default: int) -> int:
    """The longest input a text encoder takes (`EncoderConfig.max_len`)."""
    return int(getattr(model_config, "max_len", default))


def config_for(module: Any, keep: float, model_config: object = None) -> Any:
    """`module.config_for(keep, model_config)`: the one way to turn a share `keep` of the tokens
    into a method's Config for a model with `model_config` (`ViTConfig`, `LlavaConfig`,
    `EncoderConfig`, `LlamaConfig`, `DiTConfig`, `Patches` for a projector; `None` for the
    module's defaults where a method needs no model sizes). Which sizes a method reads is its own
    business (`depth_of`, `patches_of`, `head_dim_of`, `seq_len_of`)."""
    return module.config_for(keep, model_config)
