"""One way to apply any registered method, by name.

`apply(model, name, keep=... | **fields)` is a context manager that applies an in-model method
(the vision, VLM, text, diffusion and KV-cache families) to one of our models and restores the
model exactly on exit, also when the body raises. The input families have one verb each:
`compress_prompt` (prompt compression), `pack_video` (video token reduction before the model),
`make_projector` (projectors that emit fewer visual tokens). Every method's configuration comes
from `make_config(name, keep, model_config, **fields)`: `keep` (the share of tokens kept) goes
through the module's `config_for`, the module's own `Config` fields override it, and neither
gives the module's defaults.

Below this layer stay the modules' own adapters (`patch(model, config)`, `make_press(config)`
passed as `press=`, `compress(...)`): `apply` only chooses the adapter that the family protocol
(`reference_impls.families`) names for the model. What this module must not do: hold algorithm
code, or know any method by name.

A KV method's press is installed the way kvpress's `with press(model):` does it: a forward
pre-hook on every attention layer hands the press to the layer (after any press passed to the
forward call, which runs first), and the hooks are removed on exit. The press keeps per-layer
state from the last prefill, so one `with` block serves generations one after another, not
interleaved. Methods apply to the models of `reference_impls` only; a transformers LLaMA is
converted first with `reference_impls.llm.smollm2.from_transformers`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from torch import Tensor, nn

from .families import FAMILIES, FamilyProtocol, Patches, config_for, family_of
from .llm.llama import Press, PressContext
from .registry import ImplInfo, discover

ModelT = TypeVar("ModelT", bound=nn.Module)


@dataclass(frozen=True)
class Method:
    """A registered method: its registry entry, its module and its family's protocol."""

    impl: ImplInfo
    module: ModuleType
    family: FamilyProtocol


@functools.cache
def _by_name() -> dict[str, ImplInfo]:
    return {impl.name: impl for impl in discover()}


def method(name: str) -> Method:
    """The registered method called `name` ("tome", "h2o", ...)."""
    impls = _by_name()
    if name not in impls:
        close = difflib.get_close_matches(name, impls, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no registered method {name!r}{hint} (reference_impls.methods.names())")
    impl = impls[name]
    return Method(impl, importlib.import_module(impl.module), family_of(impl.module))


def names(family: str | None = None) -> list[str]:
    """The registered methods, sorted, optionally of one family package ("vision", "kv", ...)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    return [
        name
        for name, impl in _by_name().items()
        if family is None or family_of(impl.module).package == family
    ]


def make_config(
    name: str, keep: float | None = None, model_config: object = None, **fields: Any
) -> Any:
    """The `Config` of method `name`: from `keep` through `config_for(keep, model_config)` when
    given (else the defaults), with `fields` of its `Config` overriding."""
    found = method(name)
    Config = found.module.Config
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(
            f"{name}: no field {', '.join(unknown)} in {found.impl.module}.Config; "
            f"its fields: {', '.join(sorted(known))} (or keep=)"
        )
    config = Config() if keep is None else config_for(found.module, keep, model_config)
    return dataclasses.replace(config, **fields) if fields else config


# --- in-model methods -----------------------------------------------------------------------


@contextmanager
def apply(model: ModelT, name: str, keep: float | None = None, **fields: Any) -> Iterator[ModelT]:
    """Apply method `name` to `model` inside the `with` block; the model is restored on exit.

    `keep` is the share of tokens kept (through the module's `config_for` for this model's
    configuration); `fields` are the method's own `Config` fields (they override `keep`'s)."""
    found = method(name)
    family = found.family
    if family.role != "in-model":
        verb = family.applies_to[0]
        raise TypeError(
            f"{name} is a {family.package} method: it changes a model's input, not the model; "
            f"use reference_impls.{verb}({name!r}, ...)"
        )
    kinds = {cls.__name__ for cls in type(model).__mro__}
    if not kinds & set(family.applies_to):
        hint = (
            "; convert a transformers LLaMA with reference_impls.llm.smollm2.from_transformers"
            if family.package == "kv"
            else ""
        )
        raise TypeError(
            f"{name} applies to {' or '.join(family.applies_to)}, not to "
            f"{type(model).__name__}{hint}"
        )
    config = make_config(name, keep, getattr(model, "config", None), **fields)
    # The family protocol names the lower layer: a press (KV methods) or a `patch` adapter.
    adapter = (
        attach_press(model, found.module.make_press(config))
        if "make_press" in family.exposes
        else found.module.patch(model, config)
    )
    with adapter:
        yield model


@dataclass(frozen=True)
class Chained:
    """Two presses one after the other: `second` sees the entries `first` kept."""

    first: Press
    second: Press

    def prefill(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        keys, values = self.first.prefill(ctx)
        return self.second.prefill(dataclasses.replace(ctx, keys=keys, values=values))

    def decode(self, ctx: PressContext) -> tuple[Tensor, Tensor]:
        keys, values = self.first.decode(ctx)
        return self.second.decode(dataclasses.replace(ctx, keys=keys, values=values))


PRESS_ARG = 5  # Attention.forward(x, layer, cache, cos, sin, press, seen)


@contextmanager
def attach_press(model: nn.Module, press: Press) -> Iterator[nn.Module]:
    """Hand `press` to every attention layer of `model` (a `Llama`, or a `Llava`'s language
    model) inside the `with` block: forward pre-hooks, removed on exit."""
    llm = getattr(model, "llm", model)
    layers = getattr(llm, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no LLaMA layers to hand a press to")

    def hand_over(
        _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if "press" in kwargs:
            outer = kwargs["press"]
            kwargs = {**kwargs, "press": press if outer is None else Chained(outer, press)}
            return args, kwargs
        outer = args[PRESS_ARG]
        chained = press if outer is None else Chained(outer, press)
        return (*args[:PRESS_ARG], chained, *args[PRESS_ARG + 1 :]), kwargs

    attentions = [layer.get_submodule("self_attn") for layer in layers]
    handles = [a.register_forward_pre_hook(hand_over, with_kwargs=True) for a in attentions]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


# --- input-side methods: one verb per family ------------------------------------------------


def _input_method(name: str, package: str) -> Method:
    found = method(name)
    if found.family.package != package:
        role = found.family
        how = (
            f"reference_impls.apply(model, {name!r}, ...)"
            if role.role == "in-model"
            else f"reference_impls.{role.applies_to[0]}({name!r}, ...)"
        )
        raise TypeError(f"{name} is a {role.package} method, not a {package} one; use {how}")
    return found


def compress_prompt(
    name: str,
    text: Any,
    question: str,
    scorer: Any,
    keep: float | None = None,
    instruction: str | None = None,
    **fields: Any,
) -> Any:
    """Compress a prompt with prompt-compression method `name`: `text` (a string, or the
    demonstrations / documents as a list), the `question` (kept whole), a `prompt.scorer`
    language model; returns `prompt.scorer.Compressed`."""
    found = _input_method(name, "prompt")
    config = make_config(name, keep, None, **fields)
    extra = {} if instruction is None else {"instruction": instruction}
    return found.module.compress(text, question, scorer, config, **extra)


def pack_video(name: str, video: Tensor, keep: float | None = None, **fields: Any) -> Any:
    """Reduce the tokens of `video` with video method `name` before the model reads them; returns
    the method's packed tokens (`video.packing.Packed`, or RLT's `RunLengthTokens` holding one).
    The input is what the method reads: DyCoke frame tokens `(B, T, N, C)`, RLT pixels
    `(B, T, C, H, W)`."""
    found = _input_method(name, "video")
    return found.module.pack_video(video, make_config(name, keep, None, **fields))


def make_projector(
    name: str, keep: float | None = None, num_patches: int = 576, **fields: Any
) -> nn.Module:
    """A new (randomly initialised) projector of method `name` that maps `num_patches` patch
    tokens `(B, N, in_dim)` to about `keep * num_patches` tokens `(B, M, out_dim)`."""
    found = _input_method(name, "projector")
    config = make_config(name, keep, Patches(num_patches), **fields)
    projector: nn.Module = found.module.Projector(config)
    return projector
