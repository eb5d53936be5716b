"""The arXiv client, `kb new --arxiv` and `kb enrich`, on recorded Atom responses.

No test touches the network: a fake transport replays the hand-written responses in
tests/data/arxiv/ (see its README.md for their provenance), and a fake clock stands in for time,
so rate limiting and backoff are checked without waiting. One test group serves the real urllib
transport from a local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import urllib.error
from collections.abc import Callable, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from time import monotonic as _monotonic
from urllib.parse import parse_qs, urlsplit

import pytest

import tokenkb.cli
from tokenkb.model import Paper
from tokenkb.scaffold import (
    Applied,
    ScaffoldError,
    StoredRecord,
    apply_changes,
    enrich,
    find_arxiv,
    load_stored,
    new_record,
    slug_base,
    title_key,
    write_new_record,
)
from tokenkb.sources.arxiv import (
    ArxivApiError,
    ArxivClient,
    ArxivMeta,
    ArxivNotFound,
    ArxivResponseError,
    ArxivUnreachable,
    ClientConfig,
    Deadline,
    InvalidArxivId,
    RateLimiter,
    Response,
    http_transport,
    parse_arxiv_id,
    parse_feed,
)
from tokenkb.store import dump_record, parse_record

from .conftest import DATA, PAPERS

RECORDED = DATA / "arxiv"
TOME = RECORDED / "tome-2210.09461.xml"
H2O = RECORDED / "h2o-2306.14048.xml"
BATCH = RECORDED / "batch-2210.09461-2306.14048.xml"
ERROR = RECORDED / "error-incorrect-id.xml"
EMPTY = RECORDED / "empty-2210.99999.xml"

TOME_AUTHORS = (
    "Daniel Bolya",
    "Cheng-Yang Fu",
    "Xiaoliang Dai",
    "Peizhao Zhang",
    "Christoph Feichtenhofer",
    "Judy Hoffman",
)
H2O_TITLE = (
    "H$_2$O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models"
)
UNREACHABLE_TAIL = "; check the network or try later"


# --- fakes ------------------------------------------------------------------------------------


class FakeTime:
    """A clock that only moves when something sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Answer = Response | BaseException | Callable[[str], Response]


class FakeTransport:
    """Gives the scripted answers in order and records (time, url, timeout) of each call."""

    def __init__(self, time: FakeTime, answers: list[Answer]) -> None:
        self.time = time
        self.answers = list(answers)
        self.calls: list[tuple[float, str, float]] = []

    def __call__(self, url: str, deadline: Deadline) -> Response:
        self.calls.append((self.time.now, url, deadline.timeout()))
        assert self.answers, f"unexpected request {url}"
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, Response):
            return answer
        return answer(url)


def ok(path: Path) -> Response:
    return Response(200, path.read_bytes())


def replay(url: str) -> Response:
    """The recorded response for the id_list in `url`."""
    ids = sorted(parse_qs(urlsplit(url).query)["id_list"][0].split(","))
    by_ids = {
        ("2210.09461",): TOME,
        ("2306.14048",): H2O,
        ("2210.09461", "2306.14048"): BATCH,
        ("2210.99999",): EMPTY,
    }
    return ok(by_ids[tuple(ids)])


def make_client(
    *answers: Answer, config: ClientConfig | None = None
) -> tuple[ArxivClient, FakeTransport, FakeTime]:
    time = FakeTime()
    transport = FakeTransport(time, list(answers))
    client = ArxivClient(transport, config=config, clock=time.clock, sleep=time.sleep)
    return client, transport, time


def tome() -> ArxivMeta:
    return parse_feed(TOME.read_bytes())[0]


def h2o() -> ArxivMeta:
    return parse_feed(H2O.read_bytes())[0]


def synthetic_feed(entry: str) -> bytes:
    """A one-entry feed around `entry` (for cases no recorded paper shows)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<feed xmlns="http://www.w3.org/2005/Atom">\n'
        "  <title>ArXiv Query</title>\n"
        f"{entry}\n"
        "</feed>\n"
    ).encode()


SYNTHETIC_ENTRY = """  <entry>
    <id>http://arxiv.org/abs/2212.00001v2</id>
    <updated>2023-02-01T10:00:00Z</updated>
    <published>2022-12-01T10:00:00Z</published>
    <title>A Synthetic Paper: For Tests Only</title>
    <summary>Not a real paper.</summary>
    <author><name>Ada Lovelace</name></author>
    <arxiv:doi xmlns:arxiv="http://arxiv.org/schemas/atom">10.1234/synthetic.5678</arxiv:doi>
    <arxiv:journal_ref xmlns:arxiv="http://arxiv.org/schemas/atom">{journal_ref}</arxiv:journal_ref>
    <arxiv:comment xmlns:arxiv="http://arxiv.org/schemas/atom">12 pages,
      3 figures</arxiv:comment>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="cs.CV"/>
    <category term="cs.CV"/>
    <category term="cs.LG"/>
  </entry>"""


def synthetic(journal_ref: str = "ICLR 2023") -> ArxivMeta:
    return parse_feed(synthetic_feed(SYNTHETIC_ENTRY.format(journal_ref=journal_ref)))[0]


# --- parsing ----------------------------------------------------------------------------------


def test_parse_recorded_tome() -> None:
    """Every field of a recorded entry; text fields come out on one line."""
    (meta,) = parse_feed(TOME.read_bytes())
    assert (meta.arxiv_id, meta.version, meta.title) == (
        "2210.09461",
        3,
        "Token Merging: Your ViT But Faster",
    )
    assert meta.authors == TOME_AUTHORS
    assert (meta.published, meta.updated) == (date(2022, 10, 17), date(2023, 3, 1))
    assert (meta.doi, meta.journal_ref, meta.comment) == (None, None, None)
    assert (meta.primary_category, meta.categories) == ("cs.CV", ("cs.CV",))
    assert meta.abstract.startswith("We introduce Token Merging (ToMe), a simple method")
    assert meta.abstract.endswith("competitive with state-of-the-art on images, video, and audio.")
    assert "\n" not in meta.abstract and "  " not in meta.abstract
    assert [(link.title, link.href) for link in meta.links] == [
        (None, "http://arxiv.org/abs/2210.09461v3"),
        ("pdf", "http://arxiv.org/pdf/2210.09461v3"),
    ]
    assert meta.abs_url == "https://arxiv.org/abs/2210.09461"


def test_parse_wrapped_latex_title_and_accents() -> None:
    meta = h2o()
    assert meta.title == H2O_TITLE
    assert meta.authors[8] == "Christopher Ré"
    assert (meta.published, meta.primary_category) == (date(2023, 6, 24), "cs.LG")


def test_parse_batch_keeps_feed_order() -> None:
    assert [m.arxiv_id for m in parse_feed(BATCH.read_bytes())] == ["2306.14048", "2210.09461"]


def test_parse_arxiv_namespace_fields() -> None:
    meta = synthetic()
    assert (meta.doi, meta.journal_ref, meta.comment) == (
        "10.1234/synthetic.5678",
        "ICLR 2023",
        "12 pages, 3 figures",
    )
    assert (meta.primary_category, meta.categories) == ("cs.CV", ("cs.CV", "cs.LG"))
    assert (meta.arxiv_id, meta.version, meta.published) == ("2212.00001", 2, date(2022, 12, 1))


def test_parse_old_style_id() -> None:
    entry = SYNTHETIC_ENTRY.format(journal_ref="x").replace("2212.00001v2", "hep-th/9901001v1")
    assert parse_feed(synthetic_feed(entry))[0].arxiv_id == "hep-th/9901001"


def test_error_entry_is_an_error() -> None:
    with pytest.raises(ArxivApiError) as error:
        parse_feed(ERROR.read_bytes())
    assert str(error.value) == "arXiv API error: incorrect id format for 2210.0946"


def test_unknown_id_gives_an_empty_feed() -> None:
    assert parse_feed(EMPTY.read_bytes()) == []


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?>\n<!DOCTYPE feed [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>&b;</title></feed>',
        b'<!DOCTYPE feed SYSTEM "file:///etc/passwd"><feed xmlns="http://www.w3.org/2005/Atom"/>',
    ],
    ids=["entity-expansion", "external-dtd"],
)
def test_doctype_is_rejected(body: bytes) -> None:
    with pytest.raises(ArxivResponseError) as error:
        parse_feed(body)
    assert str(error.value) == (
        "arXiv response declares a DOCTYPE, which the API never sends; refusing to parse it"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"<html><body>busy</body></html>",
            "arXiv response is not an Atom feed (root element 'html')",
        ),
        (b"<feed", "arXiv response is not well-formed XML: unclosed token: line 1, column 0"),
        (b"\xff\xfe<feed/>", "arXiv response is not UTF-8"),
        (
            synthetic_feed(
                SYNTHETIC_ENTRY.format(journal_ref="x").replace(
                    "<published>2022-12-01T10:00:00Z</published>", ""
                )
            ),
            "arXiv response: entry 1 (2212.00001) has no <published>",
        ),
        (
            synthetic_feed("<entry><id>http://example.org/1</id><title>T</title></entry>"),
            "arXiv response: entry 1 has id 'http://example.org/1', not an arxiv.org/abs/<id>v<n> URL",
        ),
    ],
    ids=["html", "truncated", "not-utf8", "no-published", "foreign-id"],
)
def test_malformed_responses(body: bytes, message: str) -> None:
    with pytest.raises(ArxivResponseError) as error:
        parse_feed(body)
    assert str(error.value) == message


# --- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "bare"),
    [
        ("2210.09461", "2210.09461"),
        (" arXiv:2210.09461v2 ", "2210.09461"),
        ("arxiv: 2210.09461", "2210.09461"),
        ("https://arxiv.org/abs/2210.09461v3", "2210.09461"),
        ("http://export.arxiv.org/pdf/2210.09461.pdf", "2210.09461"),
        ("1412.6980", "1412.6980"),
        ("hep-th/9901001v2", "hep-th/9901001"),
        ("math.GT/0309136", "math.GT/0309136"),
    ],
)
def test_arxiv_id_spellings(given: str, bare: str) -> None:
    assert parse_arxiv_id(given) == bare


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            "xyz",
            "'xyz' is not an arXiv id such as '2210.09461' (also accepted: 'arXiv:2210.09461v2', 'https://arxiv.org/abs/2210.09461', 'hep-th/9901001')",
        ),
        (
            "2210.0946",
            "'2210.0946' is not an arXiv id: ids from 2015 on have 5 digits after the dot, earlier ones 4 (e.g. '2210.09461', '1412.6980')",
        ),
    ],
)
def test_bad_arxiv_ids(given: str, message: str) -> None:
    with pytest.raises(InvalidArxivId) as error:
        parse_arxiv_id(given)
    assert str(error.value) == message


@pytest.mark.parametrize("given", ["2213.00001", "2210.09461 and more", "10.1109/CVPR.2023", ""])
def test_not_arxiv_ids(given: str) -> None:
    with pytest.raises(InvalidArxivId):
        parse_arxiv_id(given)


# --- the client: requests, rate limit, retries --------------------------------------------


def test_fetch_asks_once_with_the_bare_id() -> None:
    client, transport, _ = make_client(ok(TOME))
    assert client.fetch("arXiv:2210.09461v1") == tome()
    assert transport.calls == [
        (0.0, "https://export.arxiv.org/api/query?id_list=2210.09461&max_results=1", 20.0)
    ]


def test_two_calls_are_three_seconds_apart() -> None:
    client, transport, time = make_client(ok(TOME), ok(H2O))
    client.fetch("2210.09461")
    time.now += 1.0  # the caller spends a second between the two lookups
    client.fetch("2306.14048")
    assert [at for at, _, _ in transport.calls] == [0.0, 3.0]
    assert time.sleeps == [2.0]


def test_rate_limiter_matches_a_naive_schedule() -> None:
    """Against a loop that computes each request's time directly: max(arrival, last + 3)."""
    rng = random.Random(0)
    time = FakeTime()
    limiter = RateLimiter(3.0, time.clock, time.sleep)
    gaps = [rng.choice([0.0, 0.5, 2.9, 3.0, 4.0, 10.0]) for _ in range(50)]
    got, expected, last = [], [], None
    for gap in gaps:
        time.now += gap
        arrival = time.now
        expected.append(arrival if last is None else max(arrival, last + 3.0))
        last = expected[-1]
        limiter.wait()
        got.append(time.now)
    assert got == pytest.approx(expected)


def test_retry_on_503_with_exponential_backoff_then_success() -> None:
    client, transport, time = make_client(Response(503, b""), Response(503, b""), ok(TOME))
    assert client.fetch("2210.09461").title == "Token Merging: Your ViT But Faster"
    assert time.sleeps == [3.0, 6.0]
    assert [at for at, _, _ in transport.calls] == [0.0, 3.0, 9.0]


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    client, transport, time = make_client(Response(429, b"", retry_after=10.0), ok(TOME))
    client.fetch("2210.09461")
    assert time.sleeps == [10.0]
    assert len(transport.calls) == 2


def test_timeouts_exhaust_the_retries_with_a_one_line_error() -> None:
    client, transport, time = make_client(*[TimeoutError("timed out")] * 4)
    with pytest.raises(ArxivUnreachable) as error:
        client.fetch("2210.09461")
    assert str(error.value) == (
        "cannot reach export.arxiv.org: timed out after 20 s (4 tries)" + UNREACHABLE_TAIL
    )
    assert time.sleeps == [3.0, 6.0, 12.0]
    assert len(transport.calls) == 4


def test_no_network_is_a_one_line_error() -> None:
    down = urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name\nresolution"))
    client, transport, _ = make_client(down, config=ClientConfig(retries=0))
    with pytest.raises(ArxivUnreachable) as error:
        client.fetch("2210.09461")
    assert str(error.value) == (
        "cannot reach export.arxiv.org: Temporary failure in name resolution (1 try)"
        + UNREACHABLE_TAIL
    )
    assert len(transport.calls) == 1


def test_5xx_to_the_end_is_unreachable() -> None:
    client, _, _ = make_client(*[Response(502, b"")] * 2, config=ClientConfig(retries=1))
    with pytest.raises(ArxivUnreachable) as error:
        client.fetch("2210.09461")
    assert (
        str(error.value) == "cannot reach export.arxiv.org: HTTP 502 (2 tries)" + UNREACHABLE_TAIL
    )


def test_400_with_an_error_entry_is_not_retried() -> None:
    client, transport, _ = make_client(Response(400, ERROR.read_bytes()))
    with pytest.raises(ArxivApiError, match=r"incorrect id format for 2210\.0946"):
        client.fetch_many(["2210.09461"])
    assert len(transport.calls) == 1


def test_404_without_a_feed() -> None:
    client, transport, _ = make_client(Response(404, b"not found"))
    with pytest.raises(ArxivResponseError) as error:
        client.fetch("2210.09461")
    assert str(error.value) == (
        "arXiv answered HTTP 404 for "
        "https://export.arxiv.org/api/query?id_list=2210.09461&max_results=1"
    )
    assert len(transport.calls) == 1


def test_unknown_id_is_not_found() -> None:
    client, _, _ = make_client(ok(EMPTY))
    with pytest.raises(ArxivNotFound) as error:
        client.fetch("2210.99999")
    assert str(error.value) == "arXiv has no paper 2210.99999; check the id"


def test_fetch_many_batches_and_rate_limits() -> None:
    ids = [f"2301.{n:05d}" for n in range(1, 121)]
    empty = Response(200, synthetic_feed(""))
    client, transport, _ = make_client(empty, empty, empty)
    assert client.fetch_many(ids + ids[:5]) == {}
    asked = [parse_qs(urlsplit(url).query) for _, url, _ in transport.calls]
    assert [q["id_list"][0].split(",") for q in asked] == [ids[:50], ids[50:100], ids[100:]]
    assert [q["max_results"] for q in asked] == [["50"], ["50"], ["20"]]
    assert [at for at, _, _ in transport.calls] == [0.0, 3.0, 6.0]


def test_fetch_many_keeps_only_asked_ids() -> None:
    client, transport, _ = make_client(ok(BATCH))
    found = client.fetch_many(["2210.09461"])
    assert list(found) == ["2210.09461"]
    assert client.fetch_many([]) == {}
    assert len(transport.calls) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"batch_size": 201},
        {"retries": -1},
        {"timeout_s": 0},
        {"min_interval_s": -1},
        {"backoff_s": 500},
        {"url": "ftp://example.org"},
    ],
)
def test_client_config_ranges(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ClientConfig(**bad)  # type: ignore[arg-type]


# --- the real transport, against a local server ---------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if "busy" in self.path:
            self.send_response(503)
            self.send_header("Retry-After", "7")
            self.end_headers()
            self.wfile.write(b"try later")
            return
        body = TOME.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/atom+xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetched(response: Response) -> tuple[int, bytes, float | None]:
    """A streamed response as (status, body, Retry-After), read to the end."""
    body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
    return response.status, body, response.retry_after


def test_http_transport_gives_status_body_and_retry_after(local_server: str) -> None:
    deadline = Deadline(_monotonic() + 5.0, 5.0)
    answer = http_transport(f"{local_server}/api/query?id_list=2210.09461", deadline)
    assert fetched(answer) == (200, TOME.read_bytes(), None)
    assert answer.length == len(TOME.read_bytes())
    assert fetched(http_transport(f"{local_server}/busy", deadline)) == (503, b"try later", 7.0)


def test_http_transport_refused_connection_is_unreachable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClientConfig(url=f"http://127.0.0.1:{port}/api/query", retries=0)
    client = ArxivClient(http_transport, config=config)
    with pytest.raises(ArxivUnreachable) as error:
        client.fetch("2210.09461")
    assert str(error.value).startswith("cannot reach export.arxiv.org: Connection refused")
    assert "\n" not in str(error.value)


# --- kb new: the scaffold ---------------------------------------------------------------------


TOME_SCAFFOLD = """# yaml-language-server: $schema=../schema/paper.schema.json
id: token-merging-2022
title: 'Token Merging: Your ViT But Faster'
authors:
- Daniel Bolya
- Cheng-Yang Fu
- Xiaoliang Dai
- Peizhao Zhang
- Christoph Feichtenhofer
- Judy Hoffman
year: 2022
venue: arXiv
kind: method
modality:
- vision
arxiv: '2210.09461'
paper: https://arxiv.org/abs/2210.09461
sources:
- source: arxiv
  fields: [title, authors, year, arxiv, paper]
"""


def test_new_record_is_valid_and_canonical(papers_dir: Path) -> None:
    path, text = new_record(tome(), papers_dir, modality=["vision"])
    assert path == papers_dir / "token-merging-2022.yaml"
    assert text == TOME_SCAFFOLD
    paper, _ = parse_record(text, str(path), stem=path.stem)
    assert dump_record(paper) == text
    assert (paper.family, paper.training_free, paper.summary, paper.code) == ([], None, None, None)
    assert not path.exists()  # new_record writes nothing


def test_new_record_is_written_atomically(
    papers_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, text = new_record(tome(), papers_dir, modality=["vision"])

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", fail)
        with pytest.raises(ScaffoldError) as error:
            write_new_record(path, text)
    assert str(error.value) == f"{path}: cannot write: disk full"
    assert list(papers_dir.iterdir()) == []  # neither the record nor a temporary file
    write_new_record(path, text)
    assert path.read_bytes() == text.encode()
    assert [p.name for p in papers_dir.iterdir()] == [path.name]


def test_new_record_refuses_to_overwrite(papers_dir: Path) -> None:
    path, text = new_record(tome(), papers_dir, modality=["vision"])
    path.write_text("keep me\n")
    with pytest.raises(ScaffoldError) as error:
        write_new_record(path, text)
    assert str(error.value) == f"{path} already exists; not overwriting it"
    assert path.read_text() == "keep me\n"


def test_new_record_refuses_a_known_arxiv_id(papers_dir: Path) -> None:
    shutil.copy(PAPERS / "tome-2023.yaml", papers_dir)
    assert find_arxiv(papers_dir, "2210.09461") == papers_dir / "tome-2023.yaml"
    with pytest.raises(ScaffoldError) as error:
        new_record(tome(), papers_dir, modality=["vision"])
    assert str(error.value) == (
        f"{papers_dir / 'tome-2023.yaml'} already has arXiv 2210.09461; edit that record"
    )


def test_new_record_ids_are_unique(papers_dir: Path) -> None:
    (papers_dir / "h2o-2023.yaml").write_text("id: h2o-2023\narxiv: '2401.00001'\n")
    path, text = new_record(h2o(), papers_dir, modality=["language"], kind="method")
    assert path.name == "h2o-2023b.yaml"
    paper, _ = parse_record(text, str(path), stem=path.stem)
    assert (paper.title, paper.year, paper.arxiv) == (H2O_TITLE, 2023, "2306.14048")


def test_new_record_venue_and_doi_from_arxiv(papers_dir: Path) -> None:
    path, text = new_record(synthetic("ICLR 2023"), papers_dir, modality=["vision"], kind="survey")
    paper, _ = parse_record(text, str(path), stem=path.stem)
    assert path.name == "a-synthetic-paper-2023.yaml"  # the venue year, as tome-2023
    assert (paper.year, paper.venue, paper.doi, paper.kind) == (
        2022,
        "ICLR 2023",
        "10.1234/synthetic.5678",
        "survey",
    )
    assert paper.sources[0].fields == ["title", "authors", "year", "venue", "arxiv", "doi", "paper"]


def test_new_record_unknown_journal_stays_arxiv(papers_dir: Path) -> None:
    path, text = new_record(synthetic("J. Obscure Res. 12 (2020)"), papers_dir, modality=["vision"])
    paper, _ = parse_record(text, str(path), stem=path.stem)
    assert (path.name, paper.venue) == ("a-synthetic-paper-2022.yaml", "arXiv")
    assert "venue" not in paper.sources[0].fields


def test_new_record_needs_a_modality(papers_dir: Path) -> None:
    with pytest.raises(ScaffoldError, match="at least one modality"):
        new_record(tome(), papers_dir, modality=[])


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Token Merging: Your ViT But Faster", "token-merging"),
        (H2O_TITLE, "h2o"),
        ("SnapKV: LLM Knows What You are Looking for Before Generation", "snapkv"),
        (
            "Efficient Streaming Language Models with Attention Sinks",
            "efficient-streaming-language",
        ),
        (
            "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration",
            "image-worth-tokens",
        ),
        ("Zéro-TPrune: Zero-Shot Token Pruning", "zero-tprune"),
        ("???", "paper"),
    ],
)
def test_slug_base(title: str, slug: str) -> None:
    assert slug_base(title) == slug


def test_title_key_ignores_case_punctuation_and_tex() -> None:
    assert title_key(H2O_TITLE) == title_key(
        "H2O: heavy hitter oracle for efficient generative inference of large language models"
    )
    assert title_key("\\texttt{ToMe}: Fast") == title_key("ToMe - fast")
    assert title_key("Token Merging") != title_key("Token Pruning")


# --- kb enrich: the plan ----------------------------------------------------------------------


def store(directory: Path, paper: Paper) -> StoredRecord:
    path = directory / f"{paper.id}.yaml"
    path.write_text(dump_record(paper), encoding="utf-8")
    return load_stored(path)


def repo_record(name: str) -> Paper:
    return load_stored(PAPERS / name).paper


def replaying_client() -> tuple[ArxivClient, FakeTransport]:
    client, transport, _ = make_client(*[replay] * 3)
    return client, transport


def test_enrich_fills_only_empty_fields(papers_dir: Path) -> None:
    gappy = repo_record("tome-2023.yaml").model_copy(update={"authors": [], "paper": None})
    record = store(papers_dir, gappy)
    client, transport = replaying_client()
    plan = enrich([record], client)
    assert (plan.asked, plan.problems, len(transport.calls)) == (1, [], 1)
    (change,) = plan.changes
    assert (change.path, change.arxiv_id, change.fields) == (
        record.path,
        "2210.09461",
        ("authors", "paper"),
    )
    after, _ = parse_record(change.new_text, str(record.path), stem=record.path.stem)
    assert after.authors == list(TOME_AUTHORS)
    assert after.paper == "https://arxiv.org/abs/2210.09461"
    assert after.sources[-1].model_dump(exclude_defaults=True) == {
        "source": "arxiv",
        "fields": ["authors", "paper"],
    }
    unchanged = {"authors", "paper", "sources"}
    assert after.model_dump(exclude=unchanged) == gappy.model_dump(exclude=unchanged)
    assert after.sources[:-1] == gappy.sources
    assert record.path.read_text() == change.old_text  # planning writes nothing
    assert apply_changes(plan.changes) == Applied(written=[change])
    assert record.path.read_text() == change.new_text


def test_enrich_adds_to_an_existing_arxiv_source(papers_dir: Path) -> None:
    paper = repo_record("tome-2023.yaml")
    sources = [*paper.sources, {"source": "arxiv", "fields": ["title"]}]
    gappy = Paper.model_validate(
        {**paper.model_dump(exclude_defaults=True), "paper": None, "sources": sources},
        context={"stem": paper.id},
    )
    plan = enrich([store(papers_dir, gappy)], replaying_client()[0])
    after, _ = parse_record(plan.changes[0].new_text, "x", stem=paper.id)
    assert after.sources[-1].fields == ["title", "paper"]
    assert len(after.sources) == len(gappy.sources)


def test_enrich_reports_disagreements_and_changes_nothing(papers_dir: Path) -> None:
    paper = repo_record("h2o-2023.yaml")
    authors = list(paper.authors)
    authors[2] = "Tianyi Zhao"
    wrong = paper.model_copy(
        update={
            "title": "H2O: Something Else Entirely",
            "aliases": [],
            "year": 2022,
            "authors": authors,
        }
    )
    record = store(papers_dir, wrong)
    plan = enrich([record], replaying_client()[0])
    assert plan.changes == []
    name = str(record.path)
    lines = record.text.splitlines()
    title_line = lines.index("title: 'H2O: Something Else Entirely'") + 1
    author_line = lines.index("- Tianyi Zhao") + 1
    year_line = lines.index("year: 2022") + 1
    assert [str(p) for p in plan.problems] == [
        f"{name}:{title_line}: title differs from arXiv 2306.14048's title '{H2O_TITLE}'; if both are right, add that title to aliases, else correct the title",
        f"{name}:{author_line}: author 3 is 'Tianyi Zhao' here but 'Tianyi Zhou' on arXiv 2306.14048; check the author list",
        f"{name}:{year_line}: year 2022 but arXiv 2306.14048 v1 is from 2023-06-24; year is the first public version: check which came first",
    ]


def test_enrich_title_known_as_an_alias_is_no_disagreement(papers_dir: Path) -> None:
    paper = repo_record("h2o-2023.yaml")
    renamed = paper.model_copy(update={"title": "A Venue Title", "aliases": ["H2O", H2O_TITLE]})
    plan = enrich([store(papers_dir, renamed)], replaying_client()[0])
    assert (plan.changes, plan.problems) == ([], [])


def test_enrich_real_records_agree_with_arxiv(papers_dir: Path) -> None:
    """The records in papers/ and the recorded responses describe the same papers."""
    records = [store(papers_dir, repo_record(name)) for name in ("tome-2023.yaml", "h2o-2023.yaml")]
    client, transport = replaying_client()
    plan = enrich(records, client)
    assert (plan.asked, plan.changes, plan.problems, len(transport.calls)) == (2, [], [], 1)


def test_enrich_unknown_id_and_records_without_one(papers_dir: Path) -> None:
    paper = repo_record("tome-2023.yaml")
    lost = store(
        papers_dir,
        paper.model_copy(update={"id": "lost-2022", "arxiv": "2210.99999", "paper": None}),
    )
    no_id = store(
        papers_dir, paper.model_copy(update={"id": "no-id-2022", "arxiv": None, "paper": None})
    )
    plan = enrich([lost, no_id], replaying_client()[0])
    line = lost.text.splitlines().index("arxiv: '2210.99999'") + 1
    assert plan.asked == 1
    assert [str(p) for p in plan.problems] == [
        f"{lost.path}:{line}: arXiv has no paper 2210.99999; check the id"
    ]
    assert plan.changes == []


def test_enrich_does_not_rewrite_a_non_canonical_file(papers_dir: Path) -> None:
    paper = repo_record("tome-2023.yaml").model_copy(update={"paper": None})
    path = papers_dir / "tome-2023.yaml"
    text = dump_record(paper).replace("year: 2022\n", "year:   2022\n")
    path.write_text(text)
    record = load_stored(path)
    plan = enrich([record], replaying_client()[0])
    line = text.splitlines().index("year:   2022") + 1
    assert plan.changes == []
    assert [str(p) for p in plan.problems] == [
        f"{path}:{line}: not in canonical form, so filling paper would rewrite more than those fields; run 'kb fmt {path}' first"
    ]


def test_apply_changes_refuses_a_file_changed_since_read(papers_dir: Path) -> None:
    record = store(papers_dir, repo_record("tome-2023.yaml").model_copy(update={"paper": None}))
    plan = enrich([record], replaying_client()[0])
    record.path.write_text(record.text + "# edited meanwhile\n")
    applied = apply_changes(plan.changes)
    assert (applied.written, applied.error) == ([], None)
    assert [str(p) for p in applied.skipped] == [
        f"{record.path}:1: changed since kb enrich read it, so paper were not filled; run kb enrich again"
    ]
    assert record.path.read_text().endswith("# edited meanwhile\n")


def test_change_diff_shows_the_filled_lines(papers_dir: Path) -> None:
    record = store(papers_dir, repo_record("tome-2023.yaml").model_copy(update={"paper": None}))
    (change,) = enrich([record], replaying_client()[0]).changes
    added = [
        line
        for line in change.diff().splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    assert added == [
        "+paper: https://arxiv.org/abs/2210.09461",
        "+- source: arxiv",
        "+  fields: [paper]",
    ]


# --- the CLI ----------------------------------------------------------------------------------


class ScriptedArxiv:
    """A transport for the CLI: scripted answers first, then recorded responses by id_list."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.calls: list[str] = []

    def __call__(self, url: str, deadline: Deadline) -> Response:
        self.calls.append(url)
        answer = self.answers.pop(0) if self.answers else replay
        if isinstance(answer, BaseException):
            raise answer
        return answer if isinstance(answer, Response) else answer(url)


@pytest.fixture
def arxiv(monkeypatch: pytest.MonkeyPatch) -> ScriptedArxiv:
    """Route `kb new` / `kb enrich` to a scripted transport and a fake clock."""
    scripted = ScriptedArxiv()
    time = FakeTime()
    monkeypatch.setattr(
        tokenkb.cli,
        "_arxiv_client",
        lambda: ArxivClient(scripted, clock=time.clock, sleep=time.sleep),
    )
    return scripted


def test_cli_new_writes_a_valid_record(kb, papers_dir: Path, arxiv) -> None:
    result = kb("--papers", str(papers_dir), "new", "--arxiv", "2210.09461", "--modality", "vision")
    path = papers_dir / "token-merging-2022.yaml"
    assert (result.code, result.out) == (0, f"{path}\n")
    assert result.err.startswith("arXiv cannot say the rest: add family, training_free")
    assert path.read_text() == TOME_SCAFFOLD
    assert kb("validate", str(papers_dir)).code == 0


def test_cli_new_dry_run_prints_yaml(kb, papers_dir: Path, arxiv) -> None:
    result = kb(
        "--papers",
        str(papers_dir),
        "new",
        "--arxiv",
        "arXiv:2210.09461v3",
        "--modality",
        "vision",
        "--dry-run",
    )
    assert (result.code, result.out) == (0, TOME_SCAFFOLD)
    assert result.err == f"would write {papers_dir / 'token-merging-2022.yaml'}\n"
    assert list(papers_dir.iterdir()) == []


def test_cli_new_bad_id(kb, papers_dir: Path, arxiv) -> None:
    result = kb("--papers", str(papers_dir), "new", "--arxiv", "xyz", "--modality", "vision")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "kb new: error: 'xyz' is not an arXiv id such as '2210.09461' (also accepted: "
        "'arXiv:2210.09461v2', 'https://arxiv.org/abs/2210.09461', 'hep-th/9901001')\n"
    )
    assert arxiv.calls == []


def test_cli_new_without_network(kb, papers_dir: Path, arxiv) -> None:
    arxiv.answers.extend(
        [urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))] * 4
    )
    result = kb("--papers", str(papers_dir), "new", "--arxiv", "2210.09461", "--modality", "vision")
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "kb new: cannot reach export.arxiv.org: Connection refused (4 tries); check the network "
        "or try later\n"
    )
    assert len(arxiv.calls) == 4
    assert list(papers_dir.iterdir()) == []


def test_cli_new_unknown_id(kb, papers_dir: Path, arxiv) -> None:
    result = kb("--papers", str(papers_dir), "new", "--arxiv", "2210.99999", "--modality", "vision")
    assert (result.code, result.err) == (2, "kb new: arXiv has no paper 2210.99999; check the id\n")


def test_cli_new_refuses_a_known_id_without_asking(kb, papers_dir: Path, arxiv) -> None:
    shutil.copy(PAPERS / "tome-2023.yaml", papers_dir)
    result = kb("--papers", str(papers_dir), "new", "--arxiv", "2210.09461", "--modality", "vision")
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        f"kb new: {papers_dir / 'tome-2023.yaml'} already has arXiv 2210.09461; edit that record\n"
    )
    assert arxiv.calls == []


def test_cli_new_requires_a_modality(
    kb, papers_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tokenkb.cli.main(["--papers", str(papers_dir), "new", "--arxiv", "2210.09461"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --modality" in capsys.readouterr().err


def test_cli_enrich_dry_run_then_write(kb, papers_dir: Path, arxiv) -> None:
    gappy = repo_record("tome-2023.yaml").model_copy(update={"authors": [], "paper": None})
    record = store(papers_dir, gappy)
    store(papers_dir, repo_record("h2o-2023.yaml"))
    before = record.path.read_text()

    dry = kb("--papers", str(papers_dir), "enrich", "--dry-run")
    assert dry.code == 0
    assert dry.out.startswith(
        f"{record.path}: would fill authors, paper from arXiv 2210.09461\n--- {record.path}\n"
    )
    assert "+- Daniel Bolya\n" in dry.out
    assert dry.err == "2 records with an arXiv id: 1 would fill, 0 problems\n"
    assert record.path.read_text() == before

    done = kb("--papers", str(papers_dir), "enrich", str(record.path))
    assert (done.code, done.out) == (
        0,
        f"{record.path}: filled authors, paper from arXiv 2210.09461\n",
    )
    assert done.err == "1 record with an arXiv id: 1 filled, 0 problems\n"
    assert load_stored(record.path).paper.authors == list(TOME_AUTHORS)
    assert kb("validate", str(papers_dir)).code == 0


def test_cli_enrich_disagreement_exits_1(kb, papers_dir: Path, arxiv) -> None:
    record = store(papers_dir, repo_record("tome-2023.yaml").model_copy(update={"year": 2021}))
    result = kb("enrich", str(record.path))
    line = record.text.splitlines().index("year: 2021") + 1
    assert result.code == 1
    assert result.out == (
        f"{record.path}:{line}: year 2021 but arXiv 2210.09461 v1 is from 2022-10-17; year is the first public version: check which came first\n"
    )


def test_cli_enrich_without_network_changes_nothing(kb, papers_dir: Path, arxiv) -> None:
    record = store(papers_dir, repo_record("tome-2023.yaml").model_copy(update={"paper": None}))
    arxiv.answers.extend([TimeoutError("timed out")] * 4)
    result = kb("enrich", str(papers_dir))
    assert (result.code, result.out) == (2, "")
    assert result.err == (
        "kb enrich: cannot reach export.arxiv.org: timed out after 20 s (4 tries); check the "
        "network or try later\n"
    )
    assert record.path.read_text() == record.text


def test_cli_enrich_invalid_records_first(kb, papers_dir: Path, arxiv) -> None:
    bad = papers_dir / "bad-2023.yaml"
    bad.write_text("id: bad-2023\ntitle: Bad\n")
    result = kb("enrich", str(papers_dir))
    assert result.code == 1
    assert result.out.startswith(f"{bad}:1: missing required field")
    assert result.err == "kb enrich: fix the records above first (kb validate shows them all)\n"
    assert arxiv.calls == []


def test_cli_enrich_missing_path(kb, arxiv) -> None:
    result = kb("enrich", "no/such/dir")
    assert (result.code, result.err) == (2, "kb enrich: no such file or directory: no/such/dir\n")
