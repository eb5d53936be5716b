"""Vocabulary hints the lists give: section headings and tags mapped to modality, family and
training-freeness, venue strings mapped to normalised venues, and the years of dates.

These are hints with provenance, not verdicts: a curator confirms them in `papers/`.
"""

from __future__ import annotations

import re

from ..model import suggest_venue

# Words in a heading or tag, lowercased with '_' and '-' as spaces, and what they imply.
MODALITY_WORDS: dict[str, str] = {
    "vision": "vision",
    "vit": "vision",
    "vision transformer": "vision",
    "video": "video",
    "video retrieval": "video",
    "language": "language",
    "nlp": "language",
    "llm": "language",
    "vision language model": "vlm",
    "vlm": "vlm",
    "state space models": "ssm",
    "ssm": "ssm",
    "diffusion": "diffusion",
    "diffusion transformers": "diffusion",
    "audio": "audio",
    "speech": "audio",
    # task badges of the token-compression lists
    "image recognition": "vision",
    "image classification": "vision",
    "video recognition": "video",
    "video understanding": "video",
    "image generation": "diffusion",
    "text2image": "diffusion",
    "text to image": "diffusion",
    "visual question answering": "vlm",
    "multimodal": "multimodal",
}
FAMILY_WORDS: dict[str, str] = {
    "token merging": "merging",
    "soft token merging": "merging",
    "learnable token merging": "merging",
    "energy token merging": "merging",
    "token pooling": "merging",
    "token aggregation": "merging",
    "multi scale token aggregation": "merging",
    "token pruning": "pruning",
    "pruning": "pruning",
    "dynamic token sparsification": "pruning",
    "attention based token pruning": "pruning",
    "token sparsification": "pruning",
    "dynamic token pruning": "pruning",
    "input token pruning": "pruning",
    "token dropping": "pruning",
    "token clustering": "clustering",
    "clustering": "clustering",
    "token skipping": "token-skipping",
    "prompt compression": "prompt-compression",
    "context compression": "prompt-compression",
    "kv cache compression": "kv-eviction",
    "hardware co design": "hardware",
}
TRAINING_WORDS: dict[str, bool] = {"training free": True, "training based": False}


def words(text: str) -> str:
    """Lowercase, '_' and '-' and '/' as spaces, no emoji or punctuation, single spaces."""
    text = re.sub(r"[_\-/]", " ", text.lower())
    text = re.sub(r"[^a-z0-9 ]", " ", text)
    return " ".join(text.split())


def read_tag(tag: str) -> tuple[str | None, str | None, bool | None]:
    """(modality, family, training_free) implied by one heading or tag, each possibly None."""
    key = words(tag)
    return MODALITY_WORDS.get(key), FAMILY_WORDS.get(key), TRAINING_WORDS.get(key)


_EXTRA_VENUES = {
    "ieee transactions on image processing": "TIP",
    "ieee transactions on pattern analysis and machine intelligence": "TPAMI",
    "advances in neural information processing systems": "NeurIPS",
    "international conference on learning representations": "ICLR",
    "international conference on machine learning": "ICML",
    "nations of the americas chapter of the association for computational linguistics": "NAACL",
    "north american chapter of the association for computational linguistics": "NAACL",
    "empirical methods in natural language processing": "EMNLP",
    "annual meeting of the association for computational linguistics": "ACL",
}


def _workshop(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name} Workshop" if suggest_venue(f"{name} 2020") else match.group()


def read_venue(text: str) -> str | None:
    """The normalised venue in `text` ('ECCV 2024 (Oral)' -> 'ECCV 2024'), or None."""
    if re.match(r"^\s*(?:arxiv|corr)\b", text, re.I):
        return "arXiv"
    text = re.sub(r"\((?:oral|spotlight|poster|highlight)\)", " ", text, flags=re.I)
    text = re.sub(r"\(also [^)]*\)", " ", text, flags=re.I)
    # 'NeurIPSw 2024', 'ICLRw'24': a venue name with a trailing 'w' is its workshop.
    text = re.sub(r"\b([A-Za-z]{3,})w\b", _workshop, text)
    lowered = " ".join(text.lower().split())
    for name, venue in _EXTRA_VENUES.items():
        if name in lowered:
            year = re.search(r"(?:19|20)[0-9]{2}", text)
            return f"{venue} {year.group()}" if year else None
    return suggest_venue(text.strip(" .,;"))


MONTHS = (
    "jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec|january|february|march|april|june|"
    "july|august|september|october|november|december"
)
DATE = re.compile(
    rf"^(?:(?:\d{{1,2}}(?:-\d{{1,2}})?(?:st|nd|rd|th)?\s+)?(?:{MONTHS})\.?,?\s+(?:\d{{1,2}}(?:st|nd|rd|th)?,?\s+)?"
    rf"(?:19|20)\d\d(?:\s*\([^)]*\))?|(?:19|20)\d\d)$",
    re.IGNORECASE,
)


# Numeric dates lists write in date columns and badges: '2025.07', '2025-07-18', '202506'.
NUMERIC_DATE = re.compile(
    r"^((?:19|20)\d\d)(?:[.\-/ ]?(?:0[1-9]|1[0-2])(?:[.\-/]\d\d)?|[.\-/](?:[1-9]))?$"
)


def date_year(text: str) -> int | None:
    """The year of a date-only string ('19 May 2023', 'Oct 2023', '2021', 'July 18, 2024',
    '2025.07', '202506', '2025-07-18')."""
    text = " ".join(text.split()).strip(" .,`")
    if DATE.match(text):
        return int(re.findall(r"(?:19|20)\d\d", text)[0])
    numeric = NUMERIC_DATE.match(text)
    return int(numeric.group(1)) if numeric else None
