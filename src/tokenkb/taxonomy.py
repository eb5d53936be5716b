"""Controlled vocabularies of the record: every value with a one-line meaning.

This module is the single definition of kind, modality, family and implementation level, and of
the venue names a record may use. It has no dependencies beyond the standard library so that the
fast query path can import it without pulling in pydantic. Extend a vocabulary with care: add the
value, its meaning, and a record that uses it in the same change.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What sort of work a record describes."""

    METHOD = "method"
    SURVEY = "survey"
    BENCHMARK = "benchmark"
    ANALYSIS = "analysis"
    SYSTEM = "system"
    THESIS = "thesis"
    BLOG = "blog"


class Modality(StrEnum):
    """Which kind of model or data the token reduction applies to."""

    VISION = "vision"
    VIDEO = "video"
    LANGUAGE = "language"
    VLM = "vlm"
    AUDIO = "audio"
    DIFFUSION = "diffusion"
    SSM = "ssm"
    MULTIMODAL = "multimodal"


class Family(StrEnum):
    """How the tokens are reduced."""

    PRUNING = "pruning"
    MERGING = "merging"
    PRUNE_MERGE = "prune-merge"
    CLUSTERING = "clustering"
    LEARNED_COMPRESSION = "learned-compression"
    KV_EVICTION = "kv-eviction"
    KV_QUANTIZATION = "kv-quantization"
    KV_MERGING = "kv-merging"
    PROMPT_COMPRESSION = "prompt-compression"
    TOKEN_SKIPPING = "token-skipping"
    HARDWARE = "hardware"
    OTHER = "other"


class ImplLevel(StrEnum):
    """How closely the linked reference implementation follows this work."""

    PAPER = "paper"
    FAMILY = "family"


MEANINGS: dict[type[StrEnum], dict[str, str]] = {
    Kind: {
        "method": "proposes a token-reduction algorithm",
        "survey": "reviews and organises a body of work",
        "benchmark": "proposes a benchmark or evaluation protocol for token reduction",
        "analysis": "studies token reduction empirically or theoretically without a new method",
        "system": "an inference system, library or kernel built around token reduction",
        "thesis": "a doctoral or master's thesis",
        "blog": "a blog post, report or article outside the peer-reviewed literature",
    },
    Modality: {
        "vision": "image models: ViTs and other vision backbones",
        "video": "video models and video tokens",
        "language": "text-only language models (LLMs, encoders)",
        "vlm": "vision-language models: visual tokens fed to a language model",
        "audio": "speech and audio models",
        "diffusion": "diffusion models for generation (U-Net or transformer denoisers)",
        "ssm": "state space models (Mamba and relatives)",
        "multimodal": "several modalities at once beyond vision-language",
    },
    Family: {
        "pruning": "drops tokens judged unimportant",
        "merging": "combines similar tokens into fewer tokens",
        "prune-merge": "prunes some tokens and merges others, or fuses pruned ones into kept ones",
        "clustering": "groups tokens by clustering and keeps one token per cluster",
        "learned-compression": (
            "learned modules that produce fewer tokens: resamplers, projectors, learned tokenizers"
        ),
        "kv-eviction": "evicts entries from the key-value cache of an autoregressive model",
        "kv-quantization": "stores the key-value cache at reduced numeric precision",
        "kv-merging": "merges key-value cache entries across tokens, heads or layers",
        "prompt-compression": "shortens the input prompt before the model reads it",
        "token-skipping": "lets tokens skip layers or computation without removing them",
        "hardware": "hardware or kernel co-design for token reduction",
        "other": "token reduction that fits none of the above; say how in the summary",
    },
    ImplLevel: {
        "paper": "the reference implementation is this paper's own algorithm",
        "family": "the reference implementation is the canonical algorithm of this work's family",
    },
}

# Venue names a record may use, as `<NAME> <YEAR>` with an optional ` Workshop` or ` Findings`
# suffix, or exactly `arXiv`. The spelling here is the normalised one; `VENUE_SPELLINGS` maps the
# variants seen in the wild to it so validation can say "did you mean".
VENUES: tuple[str, ...] = (
    "AAAI",
    "ACL",
    "ACM MM",
    "ASPLOS",
    "BMVC",
    "COLING",
    "COLM",
    "CVPR",
    "DAC",
    "EACL",
    "ECCV",
    "EMNLP",
    "HPCA",
    "ICASSP",
    "ICCV",
    "ICDAR",
    "ICLR",
    "ICML",
    "IJCAI",
    "ISCA",
    "ISCAS",
    "KDD",
    "MICRO",
    "MLSys",
    "NAACL",
    "NeurIPS",
    "SIGIR",
    "TACL",
    "TIP",
    "TMLR",
    "TPAMI",
    "TNNLS",
    "WACV",
    "WWW",
)
VENUE_SUFFIXES: tuple[str, ...] = ("Workshop", "Findings")
ARXIV_VENUE = "arXiv"

VENUE_SPELLINGS: dict[str, str] = {
    "neurips": "NeurIPS",
    "nips": "NeurIPS",
    "mlsys": "MLSys",
    "acmmm": "ACM MM",
    "acm mm": "ACM MM",
    "mm": "ACM MM",
    "t-pami": "TPAMI",
    "pami": "TPAMI",
    "cvprw": "CVPR",
    "iccvw": "ICCV",
    "eccvw": "ECCV",
}
