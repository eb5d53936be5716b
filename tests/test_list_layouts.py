"""The Markdown entry reader on one fixture per list layout, each with its exact entries.

The fixtures under data/list_layouts/ are written for these tests (no real list is copied):
pipe tables, tables with badges and nicknames, HTML tables, nested nickname bullets, numbered
entries, bold titles with italic authors, short blocks under headings, BibTeX fenced in Markdown,
and the seed layouts with the drift real maintainers introduce (a bolded venue, `'26` years,
reordered links, extra badges, a doubled GitHub URL).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenkb import importer
from tokenkb.sources import markdown
from tokenkb.sources.links import read_link

LAYOUTS = Path(__file__).resolve().parent / "data" / "list_layouts"
FIELDS = (
    "title",
    "aliases",
    "authors",
    "year",
    "venue",
    "venue_text",
    "arxiv",
    "doi",
    "openreview",
    "acl",
    "paper",
    "code",
    "project",
    "modality",
    "family",
    "training_free",
    "problems",
)

EXPECTED: dict[str, list[tuple[int, dict[str, Any]]]] = {
    "badge_table.md": [
        (
            7,
            {
                "title": "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large Vision-Language Models",
                "aliases": ["FastV"],
                "authors": ["Liang Chen", "Haozhe Zhao", "Tianyu Liu"],
                "venue": "ECCV 2024",
                "venue_text": "ECCV-2024",
                "arxiv": "2403.06764",
                "code": "https://github.com/pkunlp-icler/FastV",
            },
        ),
        (
            8,
            {
                "title": "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models",
                "aliases": ["PruMerge"],
                "year": 2024,
                "venue": "arXiv",
                "venue_text": "arXiv-2024.03",
                "arxiv": "2403.15388",
            },
        ),
    ],
    "bold_link_date.md": [
        (
            5,
            {
                "title": "VLA-Cache: Efficient Vision-Language-Action Manipulation via Adaptive Token Caching",
                "aliases": ["VLA-Cache"],
                "year": 2025,
                "venue": "NeurIPS 2025",
                "venue_text": "NeurIPS 2025",
                "arxiv": "2502.02175",
                "code": "https://github.com/siyuhsu/vla-cache",
            },
        ),
        (
            6,
            {
                "title": "EfficientVLA: Training-Free Acceleration and Compression for Vision-Language-Action Models",
                "year": 2025,
                "arxiv": "2506.10100",
            },
        ),
    ],
    "bold_title_authors.md": [
        (
            5,
            {
                "title": "Stop Overthinking: A Survey on Efficient Reasoning for Large Language Models",
                "authors": ["Yang Sui", "Yu-Neng Chuang", "Guanchu Wang"],
                "year": 2025,
                "venue": "TMLR 2025",
                "venue_text": "TMLR2025",
                "arxiv": "2503.16419",
            },
        ),
        (
            7,
            {
                "title": "TokenSkip: Controllable Chain-of-Thought Compression in LLMs",
                "authors": ["Heming Xia", "Yongqi Leng", "Chak Tou Leong"],
                "year": 2025,
                "venue": "arXiv",
                "venue_text": "Arxiv",
                "arxiv": "2502.12067",
                "code": "https://github.com/hemingkx/TokenSkip",
            },
        ),
        (
            9,
            {
                "title": "A Work With Two Authors of One Name",
                "authors": ["Wen Wang", "Ada Lovelace"],
                "year": 2025,
                "arxiv": "2504.00004",
                "problems": ["authors Wen Wang listed twice; kept once"],
            },
        ),
    ],
    "fenced_bibtex.md": [
        (3, {"title": "Token Merging: Your ViT But Faster", "arxiv": "2210.09461"}),
        (
            8,
            {
                "title": "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large Vision-Language Models",
                "authors": ["Liang Chen", "Haozhe Zhao"],
                "year": 2024,
                "venue": "ECCV 2024",
                "venue_text": "ECCV",
                "arxiv": "2403.06764",
            },
        ),
    ],
    "html_table.md": [
        (
            10,
            {
                "title": "Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations",
                "aliases": ["EViT"],
                "authors": ["Youwei Liang", "Chongjian Ge", "Zhan Tong"],
                "venue": "ICLR 2022",
                "venue_text": "ICLR-2022",
                "arxiv": "2202.07800",
                "code": "https://github.com/youweiliang/evit",
            },
        ),
        (
            16,
            {
                "title": "DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification",
                "aliases": ["DynamicViT"],
                "venue": "NeurIPS 2021",
                "venue_text": "NeurIPS 2021",
                "arxiv": "2106.02034",
            },
        ),
    ],
    "italic_title_table.md": [
        (
            5,
            {
                "title": "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference",
                "year": 2024,
                "venue": "ICML 2025",
                "venue_text": "ICML 2025",
                "arxiv": "2410.04417",
                "code": "https://github.com/Gumpest/SparseVLMs",
                "training_free": True,
            },
        ),
        (
            6,
            {
                "title": "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models",
                "year": 2024,
                "venue": "arXiv",
                "venue_text": "arXiv (preprint)",
                "arxiv": "2403.15388",
                "training_free": False,
            },
        ),
    ],
    "link_dash_desc.md": [
        (
            5,
            {
                "title": "LongLLMLingua: Accelerating and Enhancing LLMs in Long Context Scenarios via Prompt Compression",
                "arxiv": "2310.06839",
                "family": ["prompt-compression"],
            },
        ),
        (
            6,
            {
                "title": "RECOMP: Improving Retrieval-Augmented LMs with Compression and Selective Augmentation",
                "openreview": "mlJLVigNHp",
                "paper": "https://openreview.net/forum?id=mlJLVigNHp",
                "family": ["prompt-compression"],
            },
        ),
        (14, {"title": "A Title Whose Link Shows Only Its Id", "arxiv": "2401.00009"}),
    ],
    "link_title_drift.md": [
        (
            4,
            {
                "title": "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language Models",
                "aliases": ["DyCoke"],
                "venue": "CVPR 2025",
                "venue_text": "CVPR'25",
                "arxiv": "2411.15024",
                "code": "https://github.com/KD-TAO/DyCoke",
                "modality": ["video"],
            },
        ),
        (
            5,
            {
                "title": "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large Vision-Language Models",
                "aliases": ["FastV"],
                "venue": "ECCV 2024",
                "venue_text": "ECCV 2024",
                "arxiv": "2403.06764",
                "code": "https://github.com/pkunlp-icler/FastV",
            },
        ),
    ],
    "nested_nick.md": [
        (
            9,
            {
                "title": "Compressing Prompts for Accelerated Inference of Large Language Models",
                "aliases": ["LLMLingua"],
                "acl": "2023.emnlp-main.825",
                "paper": "https://aclanthology.org/2023.emnlp-main.825",
            },
        ),
        (
            10,
            {
                "title": "Compressing Context to Enhance Inference Efficiency of Large Language Models",
                "aliases": ["Selective Context"],
                "arxiv": "2310.06201",
            },
        ),
        (
            14,
            {
                "title": "Data Distillation for Efficient and Faithful Task-Agnostic Prompt Compression",
                "aliases": ["LLMLingua-2"],
                "acl": "2024.findings-acl.57",
                "paper": "https://aclanthology.org/2024.findings-acl.57",
            },
        ),
        (
            15,
            {
                "title": "In-context Autoencoder for Context Compression in a Large Language Model",
                "arxiv": "2307.06945",
            },
        ),
    ],
    "nick_date_table.md": [
        (
            5,
            {
                "title": "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
                "aliases": ["H2O"],
                "year": 2023,
                "arxiv": "2306.14048",
                "code": "https://github.com/FMInference/H2O",
            },
        ),
        (
            6,
            {
                "title": "SnapKV: LLM Knows What You are Looking for Before Generation",
                "aliases": ["SnapKV"],
                "year": 2024,
                "arxiv": "2404.14469",
            },
        ),
        (
            7,
            {
                "title": "Efficient Streaming Language Models with Attention Sinks",
                "aliases": ["StreamingLLM"],
                "year": 2023,
                "arxiv": "2309.17453",
                "code": "https://github.com/mit-han-lab/streaming-llm",
            },
        ),
    ],
    "numbered.md": [
        (
            3,
            {
                "title": "Token Merging: Your ViT But Faster",
                "authors": ["Daniel Bolya", "Cheng-Yang Fu", "Xiaoliang Dai"],
                "venue": "ICLR 2023",
                "venue_text": "ICLR'23",
                "arxiv": "2210.09461",
                "code": "https://github.com/facebookresearch/ToMe",
                "family": ["merging"],
            },
        ),
        (
            4,
            {
                "title": "Token Merging for Fast Stable Diffusion",
                "authors": ["Daniel Bolya", "Judy Hoffman"],
                "venue": "CVPR 2023 Workshop",
                "venue_text": "CVPRW'23",
                "arxiv": "2303.17604",
                "family": ["merging"],
            },
        ),
        (
            5,
            {
                "title": "A Merging Method Written With a Short Year",
                "venue": "NeurIPS 2026",
                "venue_text": "NeurIPS'26",
                "arxiv": "2601.00002",
                "family": ["merging"],
            },
        ),
    ],
    "numbered_bold_drift.md": [
        (
            4,
            {
                "title": "ToMA: Token Merge with Attention for Diffusion Models",
                "aliases": ["ToMA"],
                "authors": ["Wenbo Lu", "Shaoyi Zheng", "Yuxuan Xia"],
                "venue": "ICML 2025",
                "venue_text": "ICML 2025",
                "arxiv": "2509.10918",
                "code": "https://github.com/WenboLuu/ToMA",
                "modality": ["diffusion"],
                "family": ["merging"],
                "training_free": True,
            },
        ),
        (
            10,
            {
                "title": "A Diffusion Pruner From the Future",
                "authors": ["Ada Lovelace"],
                "venue": "CVPR 2026",
                "venue_text": "CVPR '26",
                "arxiv": "2602.00003",
                "family": ["pruning"],
            },
        ),
    ],
    "pipe_table.md": [
        (
            7,
            {
                "title": "SnapKV: LLM Knows What You are Looking for Before Generation",
                "year": 2024,
                "venue": "NeurIPS 2024",
                "venue_text": "NeurIPS",
                "arxiv": "2404.14469",
                "code": "https://github.com/FasterDecoding/SnapKV",
            },
        ),
        (
            8,
            {
                "title": "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
                "year": 2023,
                "venue": "NeurIPS 2023",
                "venue_text": "NeurIPS",
                "arxiv": "2306.14048",
            },
        ),
        (
            9,
            {
                "title": "Efficient Streaming Language Models with Attention Sinks",
                "year": 2024,
                "venue": "ICLR 2024",
                "venue_text": "ICLR'24",
                "openreview": "NG7sS51zVF",
                "paper": "https://openreview.net/forum?id=NG7sS51zVF",
                "code": "https://github.com/mit-han-lab/streaming-llm",
            },
        ),
        (
            10,
            {
                "title": "A Work at a Venue We Do Not List",
                "year": 2025,
                "venue_text": "FooConf",
                "arxiv": "2501.00001",
                "problems": ["venue 'FooConf' is not one tokenkb knows"],
            },
        ),
        (
            11,
            {
                "title": "A Work Whose Only Link Is a Proceedings Page",
                "year": 2024,
                "venue": "MLSys 2024",
                "venue_text": "MLSys",
                "paper": "https://proceedings.mlsys.org/paper_files/paper/2024/hash/abc-Abstract-Conference.html",
            },
        ),
    ],
    "short_blocks.md": [
        (
            5,
            {
                "title": "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large Vision-Language Models",
                "arxiv": "2403.06764",
                "code": "https://github.com/pkunlp-icler/FastV",
            },
        ),
        (
            11,
            {
                "title": "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
                "arxiv": "2306.14048",
            },
        ),
    ],
    "unreadable.md": [],
    "venue_first_drift.md": [
        (
            5,
            {
                "title": "Vid-TLDR: Training Free Token Merging for Light-weight Video Transformer",
                "venue": "CVPR 2024",
                "venue_text": "CVPR 2024",
                "arxiv": "2403.13347",
                "code": "https://github.com/mlvlab/vid-TLDR",
                "modality": ["vision"],
            },
        ),
        (
            6,
            {
                "title": "Don't Look Twice: Faster Video Transformers with Run-Length Tokenization",
                "venue": "NeurIPS 2024",
                "venue_text": "NeurIPS'24",
                "arxiv": "2411.05222",
                "code": "https://github.com/rccchoudhury/rlt",
                "modality": ["vision"],
            },
        ),
        (
            7,
            {
                "title": "Token Merging in a Venue Spelled the Old Way",
                "venue": "NeurIPS 2023",
                "venue_text": "NIPS 2023",
                "arxiv": "2310.00001",
                "modality": ["vision"],
                "family": ["merging"],
            },
        ),
        (
            8,
            {
                "title": "Agglomerative Token Clustering",
                "venue": "ECCV 2024",
                "venue_text": "ECCV",
                "arxiv": "2409.11923",
                "code": "https://github.com/JoakimHaurum/ATC",
                "modality": ["vision"],
            },
        ),
    ],
}


def read(name: str) -> list[tuple[int, dict[str, Any]]]:
    result = importer.read_source(LAYOUTS / name)
    assert result.format == "awesome"
    return [
        (e.line, {k: getattr(e, k) for k in FIELDS if getattr(e, k) not in (None, [])})
        for e in result.entries
    ]


def test_every_layout_fixture_has_expectations() -> None:
    assert sorted(p.name for p in LAYOUTS.iterdir()) == sorted(EXPECTED)
    assert len([name for name, found in EXPECTED.items() if found]) >= 12


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_reads_to_exact_entries(name: str) -> None:
    assert read(name) == EXPECTED[name]


def test_what_could_not_be_read_is_reported_with_its_line_and_reason() -> None:
    result = importer.read_source(LAYOUTS / "unreadable.md")
    assert [(u.line, u.reason) for u in result.unparsed] == [
        (3, "no title could be read from this bullet"),
        (
            6,
            "no row of this table could be read (2 rows with paper links): is its title column "
            "named 'Title' or 'Paper'?",
        ),
        (8, "no title could be read from this row"),
        (9, "no title could be read from this row"),
    ]
    assert [(u.line, u.reason) for u in result.skipped] == [
        (4, "a bullet without a link: not a work")
    ]


def test_links_that_are_not_papers_are_reported_as_not_works() -> None:
    result = importer.read_source(LAYOUTS / "link_dash_desc.md")
    assert [(u.line, u.reason) for u in result.skipped] == [(10, "no link to a paper: not a work")]
    nested = importer.read_source(LAYOUTS / "nested_nick.md")
    assert [u.line for u in nested.skipped] == [5, 7, 12]  # the category bullets


def test_markdown_with_paper_links_is_never_refused(tmp_path: Path) -> None:
    for name in EXPECTED:
        text = (LAYOUTS / name).read_text(encoding="utf-8")
        assert importer.detect_format(text, LAYOUTS / name) == "awesome"
    bib = tmp_path / "refs.txt"
    bib.write_text("@article{a,\n  title={A Title},\n  year={2024}\n}\n", encoding="utf-8")
    assert importer.read_source(bib).format == "bibtex"


def test_dry_run_json_keeps_its_contract_for_a_table(kb: Any, papers_dir: Path) -> None:
    result = kb(
        "--papers",
        str(papers_dir),
        "import",
        str(LAYOUTS / "unreadable.md"),
        "--dry-run",
        "--format",
        "json",
    )
    report = json.loads(result.out)
    assert report["entries"] == []
    assert [(u["line"], u["text"]) for u in report["unparsed"]] == [
        (3, "[[Paper](https://arxiv.org/abs/2401.00005)]"),
        (6, "(table)"),
        (8, "1 | - | [[pdf]](https://arxiv.org/abs/2401.00006)"),
        (9, "2 | - | [[pdf]](https://arxiv.org/abs/2401.00007)"),
    ]


def test_bare_urls_are_links_and_titles_stay_text() -> None:
    text = (
        "# Papers, links written out\n\n"
        "- Token Merging: Your ViT But Faster, ICLR 2023. https://arxiv.org/abs/2210.09461 "
        "code: https://github.com/facebookresearch/ToMe\n"
        "- https://arxiv.org/abs/2403.06764 An Image is Worth 1/2 Tokens After Layer 2\n"
    )
    found = [(e.line, e.title, e.venue, e.arxiv, e.code) for e in markdown.parse(text, "l").entries]
    assert found == [
        (
            3,
            "Token Merging: Your ViT But Faster",
            "ICLR 2023",
            "2210.09461",
            "https://github.com/facebookresearch/ToMe",
        ),
        (4, "An Image is Worth 1/2 Tokens After Layer 2", None, "2403.06764", None),
    ]


def test_a_markdown_file_the_other_readers_refuse_is_read_not_refused(tmp_path: Path) -> None:
    source = tmp_path / "notes.md"
    source.write_text(
        "# Notes\n\nSome prose.\n\n- https://arxiv.org/abs/2403.06764 An Image is Worth 1/2 "
        "Tokens After Layer 2\n- see https://example.org for more\n",
        encoding="utf-8",
    )
    result = importer.read_source(source)
    assert result.format == "awesome"
    assert [(e.line, e.arxiv) for e in result.entries] == [(5, "2403.06764")]
    assert [(u.line, u.reason) for u in result.skipped] == [(6, "no link to a paper: not a work")]


@pytest.mark.parametrize(
    ("url", "role"),
    [
        ("https://cvpr.thecvf.com/virtual/2025/poster/33335", "paper"),
        ("https://someone.github.io/files/preprint.pdf", "paper"),
        ("https://someone.github.io/project/", "project"),
        ("https://proceedings.mlsys.org/paper_files/paper/2024/hash/x.html", "paper"),
    ],
)
def test_paper_hosts_lists_link_to(url: str, role: str) -> None:
    link = read_link(url)
    assert (link.paper, link.project) == ((url, None) if role == "paper" else (None, url))
