"""The arXiv client, `kb new` and `kb enrich` against a hostile or broken server and disk.

Each test stands for a class of attack or fault: XML entity tricks in any encoding, a server that
drips bytes for ever or announces gigabytes, redirects elsewhere, metadata that would make a
record `kb validate` rejects, two `kb new` at once, a file edited while enrich waits for arXiv,
and a disk that refuses writes. In every case the command ends within its deadline with one
line and an exit code, and `papers/` holds only whole, valid records (no temporary files).

Recorded hostile responses are in tests/data/arxiv/hostile-*.xml (see its README.md); the rest
are built here. Servers that misbehave on the wire run on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import multiprocessing
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tokenkb.cli
import tokenkb.scaffold as scaffold
import tokenkb.sources.arxiv as arxiv
from tokenkb.outputs import locked
from tokenkb.store import dump_record, parse_record, read_text

from .conftest import DATA, PAPERS, Run

RECORDED = DATA / "arxiv"
TOME = RECORDED / "tome-2210.09461.xml"


# --- building responses -----------------------------------------------------------------------


def entry(
    arxiv_id: str = "2212.00001",
    title: str = "A Synthetic Paper: For Tests Only",
    authors: tuple[str, ...] = ("Ada Lovelace",),
    published: str = "2022-12-01",
    updated: str = "2023-02-01",
    journal_ref: str | None = None,
    version: str = "1",
) -> str:
    names = "".join(f"<author><name>{name}</name></author>" for name in authors)
    ref = (
        f'<arxiv:journal_ref xmlns:arxiv="http://arxiv.org/schemas/atom">{journal_ref}'
        "</arxiv:journal_ref>"
        if journal_ref
        else ""
    )
    return (
        f"<entry><id>http://arxiv.org/abs/{arxiv_id}v{version}</id>"
        f"<updated>{updated}T10:00:00Z</updated><published>{published}T10:00:00Z</published>"
        f"<title>{title}</title><summary>Not a real paper.</summary>{names}{ref}</entry>"
    )


def feed(*entries: str, prolog: str = '<?xml version="1.0" encoding="UTF-8"?>\n') -> str:
    return (
        f'{prolog}<feed xmlns="http://www.w3.org/2005/Atom"><title>ArXiv Query</title>'
        + "".join(entries)
        + "</feed>\n"
    )


def one_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message


class FakeTime:
    """A clock that only moves when something sleeps (or a fake server says time passed)."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


Answer = Callable[[str], "arxiv.Response"]


class Server:
    """A scripted arXiv for the CLI: `answer(url)` gives the response to every request."""

    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.calls: list[str] = []
        self.answer: Answer = lambda url: arxiv.Response(200, TOME.read_bytes())

    def __call__(self, url: str, deadline: object) -> arxiv.Response:
        self.calls.append(url)
        return self.answer(url)

    def send(self, body: bytes | str) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.answer = lambda url: arxiv.Response(200, data)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Server:
    """`kb new` / `kb enrich` talk to a scripted server, on a fake clock."""
    time = FakeTime()
    scripted = Server(time)
    monkeypatch.setattr(
        tokenkb.cli,
        "_arxiv_client",
        lambda: arxiv.ArxivClient(scripted, clock=time.clock, sleep=time.sleep),
    )
    return scripted


def kb_new(kb: Callable[..., Run], papers_dir: Path, arxiv_id: str = "2212.00001") -> Run:
    return kb("--papers", str(papers_dir), "new", "--arxiv", arxiv_id, "--modality", "vision")


def gappy_records(papers_dir: Path) -> list[Path]:
    """ToMe's and H2O's records without authors and paper link, which enrich would fill."""
    paths = []
    for name in ("tome-2023.yaml", "h2o-2023.yaml"):
        paper = scaffold.load_stored(PAPERS / name).paper
        path = papers_dir / name
        path.write_text(dump_record(paper.model_copy(update={"authors": [], "paper": None})))
        paths.append(path)
    return paths


def listing(directory: Path) -> list[str]:
    """Every name in `directory`, hidden ones (temporary files) included."""
    return sorted(p.name for p in directory.iterdir())


# --- 1. XML entity attacks, in every encoding -------------------------------------------------

DOCTYPE = "arXiv response declares a DOCTYPE, which the API never sends; refusing to parse it"
NUL = "arXiv response is not UTF-8 (it holds NUL bytes)"
ENTITY_FEED = feed(
    entry(title="Token Merging &e;"),
    prolog='<?xml version="1.0"?>\n<!DOCTYPE feed [<!ENTITY e "EXPANDED BY A DTD">]>\n',
)
HOSTILE_XML = {
    "billion-laughs": ((RECORDED / "hostile-billion-laughs.xml").read_bytes(), DOCTYPE),
    "external-entity": ((RECORDED / "hostile-external-entity.xml").read_bytes(), DOCTYPE),
    "external-dtd": (
        feed(entry(), prolog='<!DOCTYPE feed SYSTEM "http://evil.example/x.dtd">\n').encode(),
        DOCTYPE,
    ),
    "doctype-utf-8": (ENTITY_FEED.encode("utf-8"), DOCTYPE),
    "doctype-utf-8-bom": (b"\xef\xbb\xbf" + ENTITY_FEED.encode("utf-8"), DOCTYPE),
    "utf-16-le-recorded": ((RECORDED / "hostile-entity-utf16le.xml").read_bytes(), NUL),
    "utf-16-le": (ENTITY_FEED.encode("utf-16-le"), NUL),
    "utf-16-be": (ENTITY_FEED.encode("utf-16-be"), NUL),
    "utf-16-le-bom": (b"\xff\xfe" + ENTITY_FEED.encode("utf-16-le"), NUL),
    "utf-16-be-bom": (b"\xfe\xff" + ENTITY_FEED.encode("utf-16-be"), NUL),
    "utf-32-le": (ENTITY_FEED.encode("utf-32-le"), NUL),
    "utf-32-be-bom": (b"\x00\x00\xfe\xff" + ENTITY_FEED.encode("utf-32-be"), NUL),
    "declares-utf-16": (
        feed(entry(), prolog='<?xml version="1.0" encoding="UTF-16"?>\n').encode(),
        "arXiv response declares encoding 'UTF-16'; the API sends UTF-8 only",
    ),
    "declares-latin-1": (
        feed(entry(), prolog="<?xml version='1.0' encoding='ISO-8859-1'?>\n").encode(),
        "arXiv response declares encoding 'ISO-8859-1'; the API sends UTF-8 only",
    ),
}


@pytest.mark.parametrize(("body", "message"), HOSTILE_XML.values(), ids=HOSTILE_XML.keys())
def test_xml_attacks_are_refused_whatever_the_encoding(body: bytes, message: str) -> None:
    with pytest.raises(arxiv.ArxivResponseError) as error:
        arxiv.parse_feed(body)
    assert str(error.value) == message


@pytest.mark.parametrize(("body", "message"), HOSTILE_XML.values(), ids=HOSTILE_XML.keys())
def test_kb_new_refuses_xml_attacks_with_one_line(
    kb, papers_dir: Path, server: Server, body: bytes, message: str
) -> None:
    server.send(body)
    result = kb_new(kb, papers_dir)
    assert (result.code, result.out, result.err) == (2, "", f"kb new: {message}\n")
    assert listing(papers_dir) == []


def test_an_entity_without_a_dtd_is_not_well_formed() -> None:
    with pytest.raises(arxiv.ArxivResponseError) as error:
        arxiv.parse_feed(feed(entry(title="Token &xxe;")).encode())
    # expat's wording of the rest varies between its versions
    assert str(error.value).startswith("arXiv response is not well-formed XML: undefined entity")
    one_line(str(error.value))


# --- 2. deadlines -----------------------------------------------------------------------------


def test_a_dripping_server_is_cut_off_at_the_request_deadline() -> None:
    time = FakeTime()
    calls = []

    def drip(url: str, deadline: arxiv.Deadline) -> arxiv.Response:
        calls.append(url)

        def body() -> Iterator[bytes]:
            while True:  # one byte a second, for ever
                time.now += 1.0
                yield b" "

        return arxiv.Response(200, body())

    client = arxiv.ArxivClient(drip, clock=time.clock, sleep=time.sleep)
    with pytest.raises(arxiv.ArxivTimeout) as error:
        client.fetch("2210.09461")
    assert str(error.value) == "arXiv did not answer within 60 s; try later"
    assert time.now == 60.0
    assert len(calls) == 1  # a server that answers too slowly is not asked again


def test_retries_stop_at_the_total_deadline() -> None:
    """Every try hangs 50 s then times out: with 100 s in all, the second try is cut short."""
    time = FakeTime()

    def hang(url: str, deadline: arxiv.Deadline) -> arxiv.Response:
        time.now += min(50.0, deadline.left())
        raise TimeoutError("timed out")

    config = arxiv.ClientConfig(total_s=100.0, retries=10)
    client = arxiv.ArxivClient(hang, config=config, clock=time.clock, sleep=time.sleep)
    with pytest.raises(arxiv.ArxivTimeout) as error:
        client.fetch("2210.09461")
    assert str(error.value) == (
        "arXiv did not answer within 100 s for all requests together; try later"
    )
    assert time.now == 100.0


def test_no_backoff_past_the_total_deadline() -> None:
    time = FakeTime()
    busy = arxiv.Response(503, b"", retry_after=120.0)
    config = arxiv.ClientConfig(total_s=100.0)
    client = arxiv.ArxivClient(lambda url, deadline: busy, config, time.clock, time.sleep)
    with pytest.raises(arxiv.ArxivUnreachable) as error:
        client.fetch("2210.09461")
    assert str(error.value) == (
        "cannot reach export.arxiv.org: HTTP 503 (1 try; no time left for another within "
        "100 s); check the network or try later"
    )
    assert time.now == 0.0  # it did not sleep 120 s first


def test_kb_new_against_a_dripping_server_exits_2_on_time(
    kb, papers_dir: Path, server: Server
) -> None:
    def drip(url: str) -> arxiv.Response:
        def body() -> Iterator[bytes]:
            while True:
                server.time.now += 1.0
                yield b"<"

        return arxiv.Response(200, body())

    server.answer = drip
    result = kb_new(kb, papers_dir)
    assert (result.code, result.err) == (2, "kb new: arXiv did not answer within 60 s; try later\n")
    assert server.time.now == 60.0
    assert listing(papers_dir) == []


def test_kb_enrich_against_a_dripping_server_exits_2_on_time(
    kb, papers_dir: Path, server: Server
) -> None:
    path, _ = gappy_records(papers_dir)
    before = path.read_bytes()

    def drip(url: str) -> arxiv.Response:
        def body() -> Iterator[bytes]:
            while True:
                server.time.now += 0.5
                yield b"<"

        return arxiv.Response(200, body())

    server.answer = drip
    result = kb("--papers", str(papers_dir), "enrich")
    assert (result.code, result.err) == (
        2,
        "kb enrich: arXiv did not answer within 60 s; try later\n",
    )
    assert path.read_bytes() == before


def test_an_endless_body_is_refused_at_the_size_limit() -> None:
    time = FakeTime()
    read = []

    def flood(url: str, deadline: arxiv.Deadline) -> arxiv.Response:
        def body() -> Iterator[bytes]:
            while True:
                read.append(1)
                yield b" " * (1024 * 1024)

        return arxiv.Response(200, body())

    client = arxiv.ArxivClient(flood, clock=time.clock, sleep=time.sleep)
    with pytest.raises(arxiv.ArxivResponseError) as error:
        client.fetch("2210.09461")
    assert str(error.value) == (
        f"arXiv response is longer; refusing anything over {arxiv.MAX_RESPONSE_BYTES} bytes"
    )
    assert len(read) == arxiv.MAX_RESPONSE_BYTES // (1024 * 1024) + 1


# --- the real transport against misbehaving local servers ------------------------------------


Handler = Callable[[socket.socket, bytes, threading.Event], None]


@contextlib.contextmanager
def raw_server(handle: Handler, tls: bool = False) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that hands each connection and its request to `handle`; with
    `tls`, the URL is https and `handle` gets the connection before the client's first byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def run(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            request = b""
            with contextlib.suppress(OSError):
                while not tls and b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                handle(conn, request, stop)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            worker = threading.Thread(target=run, args=(conn,), daemon=True)
            worker.start()
            workers.append(worker)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{listener.getsockname()[1]}/api/query"
    finally:
        stop.set()
        thread.join()
        for worker in workers:
            worker.join()
        listener.close()


def real_client(url: str, deadline_s: float = 0.5) -> arxiv.ArxivClient:
    config = arxiv.ClientConfig(
        url=url, deadline_s=deadline_s, total_s=deadline_s * 2, retries=0, min_interval_s=0
    )
    return arxiv.ArxivClient(arxiv.http_transport, config=config)


def drip_body(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/atom+xml\r\n\r\n<feed")
    while not stop.wait(0.05):
        conn.sendall(b" ")


def drip_headers(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not stop.wait(0.05):  # a header line that never ends
        conn.sendall(b"a")


def silent(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    stop.wait(5.0)


@pytest.mark.parametrize("handle", [drip_body, drip_headers, silent])
def test_real_transport_meets_the_deadline(handle: Handler) -> None:
    with raw_server(handle) as url:
        client = real_client(url)
        began = time.monotonic()
        with pytest.raises(arxiv.ArxivTimeout) as error:
            client.fetch("2210.09461")
        took = time.monotonic() - began
    assert str(error.value) == "arXiv did not answer within 0.5 s; try later"
    assert 0.5 <= took < 3.0  # the deadline, plus scheduling on a busy machine


def test_real_transport_meets_the_deadline_in_a_dripping_tls_handshake() -> None:
    def drip_tls(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB, to come...
        while not stop.wait(0.05):
            conn.sendall(b"\x00")  # ...one byte at a time

    with raw_server(drip_tls, tls=True) as url:
        client = real_client(url)
        began = time.monotonic()
        with pytest.raises(arxiv.ArxivTimeout) as error:
            client.fetch("2210.09461")
        took = time.monotonic() - began
    assert str(error.value) == "arXiv did not answer within 0.5 s; try later"
    assert 0.5 <= took < 3.0  # the deadline, plus scheduling on a busy machine


def test_real_transport_refuses_a_2_gb_content_length_without_reading() -> None:
    def huge(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n<feed")
        stop.wait(5.0)

    with raw_server(huge) as url, pytest.raises(arxiv.ArxivResponseError) as error:
        real_client(url, deadline_s=5.0).fetch("2210.09461")
    assert str(error.value) == (
        "arXiv response announces 2147483648 bytes; refusing anything over "
        f"{arxiv.MAX_RESPONSE_BYTES} bytes"
    )


def test_real_transport_does_not_follow_a_redirect() -> None:
    """Whether to another host or to a look-alike feed on this one: a 3xx is an error."""
    elsewhere_asked = threading.Event()

    def elsewhere(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        elsewhere_asked.set()
        body = TOME.read_bytes()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with raw_server(elsewhere) as other:

        def redirect(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
            conn.sendall(
                f"HTTP/1.1 302 Found\r\nLocation: {other}?id_list=2210.09461\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )

        with raw_server(redirect) as url, pytest.raises(arxiv.ArxivResponseError) as error:
            real_client(url, deadline_s=5.0).fetch("2210.09461")
    assert str(error.value) == (
        f"arXiv answered HTTP 302 for {url}?id_list=2210.09461&max_results=1; "
        "redirects are not followed"
    )
    assert not elsewhere_asked.is_set()


def test_real_transport_asks_for_no_compression_and_decompresses_nothing() -> None:
    bomb = gzip.compress(b"\0" * (16 * 1024 * 1024), compresslevel=9)  # 16 MiB of zeros
    requests: list[bytes] = []

    def gzipped(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        requests.append(request)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
            + bomb
        )

    with raw_server(gzipped) as url, pytest.raises(arxiv.ArxivResponseError) as error:
        real_client(url, deadline_s=5.0).fetch("2210.09461")
    assert str(error.value) == NUL  # the gzip bytes, as sent
    (request,) = requests
    assert b"\r\nAccept-Encoding: identity\r\n" in request
    assert len(bomb) < 100_000


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/api/query",
        "http://export.arxiv.org/api/query",  # not over TLS
        "https://export.arxiv.org.evil.example/api/query",
        "ftp://127.0.0.1/api/query",
    ],
)
def test_the_client_talks_only_to_export_arxiv_org_over_https(url: str) -> None:
    with pytest.raises(ValueError) as error:
        arxiv.ClientConfig(url=url)
    assert str(error.value) == (
        f"url must be https://export.arxiv.org/... (or a loopback address in tests), got {url!r}"
    )


# --- 3. metadata that would make a bad record -------------------------------------------------


def test_kb_new_refuses_a_70_kb_title(kb, papers_dir: Path, server: Server) -> None:
    server.send(feed(entry(title="Token " * 12_000)))
    result = kb_new(kb, papers_dir)
    assert (result.code, result.err) == (
        2,
        "kb new: arXiv response: entry 1 (2212.00001) has a title of 71999 characters (arXiv "
        "titles are far under 1000); refusing it\n",
    )
    assert listing(papers_dir) == []


def test_kb_new_refuses_4000_authors(kb, papers_dir: Path, server: Server) -> None:
    authors = tuple(f"Author Number{n}" for n in range(4000))
    server.send(feed(entry(authors=authors)))
    result = kb_new(kb, papers_dir)
    assert result.code == 1
    assert result.err.startswith("kb new: arXiv 2212.00001 ")  # the schema's limit, or the size
    one_line(result.err.rstrip("\n"))
    assert listing(papers_dir) == []


# How store words the size limit (its exact numbers are its own tests' business).
SIZE_PROBLEM = r"file is [^;()]* bytes; a record must be [^;()]*"
LONG_AUTHORS = tuple(f"Firstname Middlename Lastname-Number{n:04d}" for n in range(1900))


def test_kb_new_refuses_a_record_over_the_size_limit(kb, papers_dir: Path, server: Server) -> None:
    """1900 authors pass the schema, but the file would be over the size kb validate allows."""
    server.send(feed(entry(authors=LONG_AUTHORS)))
    result = kb_new(kb, papers_dir)
    assert result.code == 1
    assert re.fullmatch(
        r"kb new: arXiv 2212\.00001 would make a record that kb validate rejects: "
        + SIZE_PROBLEM
        + r" \(arXiv lists 1900 authors and a title of 33 characters\); write this record by "
        r"hand\n",
        result.err,
    ), result.err
    assert listing(papers_dir) == []


def test_kb_enrich_refuses_a_fill_over_the_size_limit(kb, papers_dir: Path, server: Server) -> None:
    path, _ = gappy_records(papers_dir)
    (papers_dir / "h2o-2023.yaml").unlink()
    before = path.read_bytes()
    title = "Token Merging: Your ViT But Faster"
    server.send(feed(entry("2210.09461", title, LONG_AUTHORS, "2022-10-17", "2023-03-01")))
    result = kb("--papers", str(papers_dir), "enrich")
    assert result.code == 1
    assert re.fullmatch(
        re.escape(f"{path}:1: filling authors, paper from arXiv 2210.09461 would make a record ")
        + r"that kb validate rejects \("
        + SIZE_PROBLEM
        + r"\); fill them by hand\n",
        result.out,
    ), result.out
    assert path.read_bytes() == before
    assert listing(papers_dir) == ["tome-2023.yaml"]


def test_invisible_and_control_characters_are_removed_from_titles_and_names() -> None:
    title = "Token\u200b Merging\u202e:\u0085Your\tViT\u009b But\u2028Faster\ue000"
    body = feed(entry(title=title, authors=("Ada\u202e Love\u200dlace\u009b",)))
    (meta,) = arxiv.parse_feed(body.encode())
    assert meta.title == "Token Merging: Your ViT But Faster"
    assert meta.authors == ("Ada Lovelace",)


def test_kb_new_writes_a_clean_title(kb, papers_dir: Path, server: Server) -> None:
    server.send(feed(entry(title="\u202eToken Merging\u200b: Your ViT\u009b But Faster")))
    result = kb_new(kb, papers_dir)
    path = papers_dir / "token-merging-2022.yaml"
    assert (result.code, result.out) == (0, f"{path}\n")
    assert "title: 'Token Merging: Your ViT But Faster'\n" in path.read_text()
    assert kb("validate", str(papers_dir)).code == 0


def test_api_error_messages_are_cleaned_and_short() -> None:
    error_entry = (
        "<entry><id>http://arxiv.org/api/errors#x</id><title>Error</title>"
        f"<summary>bad\u009b[2J id\u202e {'x' * 1000}</summary></entry>"
    )
    with pytest.raises(arxiv.ArxivApiError) as error:
        arxiv.parse_feed(feed(error_entry).encode())
    assert str(error.value) == "arXiv API error: bad[2J id " + "x" * 289 + "…"


def test_kb_new_refuses_a_paper_published_in_2099(kb, papers_dir: Path, server: Server) -> None:
    server.send((RECORDED / "hostile-published-2099.xml").read_bytes())
    result = kb_new(kb, papers_dir)
    assert result.code == 2
    assert result.err.startswith(
        "kb new: arXiv response: entry 1 (2212.00001) has <published> 2099-01-01, after today ("
    )
    one_line(result.err.rstrip("\n"))
    assert listing(papers_dir) == []


@pytest.mark.parametrize(
    ("published", "updated", "message"),
    [
        ("2024-01-01", "2024-01-01", None),
        (
            "2024-01-02",
            "2024-01-02",
            "has <published> 2024-01-02, after today (2024-01-01); refusing it",
        ),
        (
            "2023-12-01",
            "2024-01-02",
            "has <updated> 2024-01-02, after today (2024-01-01); refusing it",
        ),
        (
            "1991-07-31",
            "1991-07-31",
            "has <published> 1991-07-31, before arXiv began (1991-08-01); refusing it",
        ),
        (
            "2023-12-01",
            "2023-11-30",
            "has <updated> 2023-11-30 before <published> 2023-12-01; refusing it",
        ),
    ],
)
def test_dates_must_be_between_arxivs_start_and_today(
    monkeypatch: pytest.MonkeyPatch, published: str, updated: str, message: str | None
) -> None:
    monkeypatch.setattr(arxiv, "today", lambda: date(2024, 1, 1))
    body = feed(entry(published=published, updated=updated)).encode()
    if message is None:
        assert arxiv.parse_feed(body)[0].published == date(2024, 1, 1)
        return
    with pytest.raises(arxiv.ArxivResponseError) as error:
        arxiv.parse_feed(body)
    assert str(error.value) == f"arXiv response: entry 1 (2212.00001) {message}"


def test_a_venue_years_ahead_is_not_believed(papers_dir: Path) -> None:
    """'ICLR 2099' in a journal reference made `token-merging-2099`: the id takes v1's year."""
    body = feed(entry(title="Token Merging: Your ViT But Faster", journal_ref="ICLR 2099"))
    (meta,) = arxiv.parse_feed(body.encode())
    path, text = scaffold.new_record(meta, papers_dir, modality=["vision"])
    assert path.name == "token-merging-2022.yaml"
    assert "venue: arXiv\n" in text
    next_year = feed(entry(title="Token Merging: Your ViT But Faster", journal_ref="ICLR 2024"))
    path, text = scaffold.new_record(
        arxiv.parse_feed(next_year.encode())[0], papers_dir, modality=["vision"]
    )
    assert (path.name, "venue: ICLR 2024\n" in text) == ("token-merging-2024.yaml", True)


@pytest.mark.parametrize(
    "given",
    ["9912.12345", "0703.1234", "arXiv:9901.00001"],
)
def test_ids_with_a_dot_before_april_2007_are_not_arxiv_ids(given: str) -> None:
    with pytest.raises(arxiv.InvalidArxivId) as error:
        arxiv.parse_arxiv_id(given)
    assert str(error.value) == (
        f"{given!r} is not an arXiv id: ids with a dot begin at 0704 (April 2007) and end at "
        "this month; older ids look like 'hep-th/9901001'"
    )


def test_ids_from_a_month_to_come_are_not_arxiv_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arxiv, "today", lambda: date(2024, 1, 31))
    assert arxiv.parse_arxiv_id("2401.00001") == "2401.00001"
    with pytest.raises(arxiv.InvalidArxivId, match=r"^'2402\.00001' is not an arXiv id: ids"):
        arxiv.parse_arxiv_id("2402.00001")


# --- 6. other hostile answers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            feed(entry(), entry(title="Another Title")),
            "arXiv response: entry 2 repeats 2212.00001; refusing an answer that describes one "
            "paper twice",
        ),
        (
            feed(entry().replace("<id>http://arxiv.org/abs/2212.00001v1</id>", "")),
            "arXiv response: entry 1 has no <id>",
        ),
        (
            feed(entry(version="9" * 5000)),
            "arXiv response: entry 1 has id 'http://arxiv.org/abs/2212.00001v"
            + "9" * 47
            + "…', not an arxiv.org/abs/<id>v<n> URL",
        ),
        (
            feed(entry(authors=("A" * 301,))),
            "arXiv response: entry 1 (2212.00001) has an author name of 301 characters (over "
            "300); refusing it",
        ),
    ],
    ids=["duplicate-entries", "no-id", "5000-digit-version", "long-name"],
)
def test_odd_feeds_are_refused_with_one_line(body: str, message: str) -> None:
    with pytest.raises(arxiv.ArxivResponseError) as error:
        arxiv.parse_feed(body.encode())
    assert str(error.value) == message


def test_too_many_authors_are_refused_in_the_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arxiv, "MAX_AUTHORS", 3)
    with pytest.raises(arxiv.ArxivResponseError) as error:
        arxiv.parse_feed(feed(entry(authors=("A", "B", "C", "D"))).encode())
    assert str(error.value) == (
        "arXiv response: entry 1 (2212.00001) lists 4 authors (no arXiv paper has over 3); "
        "refusing it"
    )


# --- 4. kb new and kb enrich, concurrently ----------------------------------------------------


def _kb_new_in_child(papers: str, arxiv_id: str, barrier: threading.Barrier) -> None:
    """A forked `kb new` whose write waits (up to 1 s) until the other one is about to write too:
    without a lock both decide on the same free id before either writes."""
    real_write = scaffold.write_text_atomic

    def write_when_both_planned(path: Path, text: str) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=1.0)
        real_write(path, text)

    scaffold.write_text_atomic = write_when_both_planned
    code = tokenkb.cli.main(
        ["--papers", papers, "new", "--arxiv", arxiv_id, "--modality", "vision"]
    )
    os._exit(code)


def _run_two_kb_new(papers_dir: Path, ids: tuple[str, str]) -> list[int]:
    """The exit codes of two forked `kb new`, run at once (the parent's patches apply)."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    children = [
        context.Process(target=_kb_new_in_child, args=(str(papers_dir), i, barrier)) for i in ids
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
        if child.exitcode is None:  # hung: stop it, and let the exit codes say so
            child.kill()
            child.join()
    return sorted(-1 if child.exitcode is None else child.exitcode for child in children)


@pytest.fixture
def same_title_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two arXiv ids whose titles give one slug, so `kb new` plans the same record id."""
    bodies = {
        i: feed(entry(arxiv_id=i, title=f"Token Merging: {title}")).encode()
        for i, title in (("2212.00001", "Once"), ("2212.00002", "Twice"))
    }

    def transport(url: str, deadline: object) -> arxiv.Response:
        (asked,) = [i for i in bodies if i in url]
        return arxiv.Response(200, bodies[asked])

    time = FakeTime()
    monkeypatch.setattr(
        tokenkb.cli,
        "_arxiv_client",
        lambda: arxiv.ArxivClient(transport, clock=time.clock, sleep=time.sleep),
    )


def test_two_concurrent_kb_new_with_the_same_id_lose_nothing(
    kb, papers_dir: Path, same_title_server: None
) -> None:
    assert _run_two_kb_new(papers_dir, ("2212.00001", "2212.00002")) == [0, 0]
    assert listing(papers_dir) == ["token-merging-2022.yaml", "token-merging-2022b.yaml"]
    arxiv_ids = {
        parse_record(read_text(p), str(p), stem=p.stem)[0].arxiv for p in papers_dir.iterdir()
    }
    assert arxiv_ids == {"2212.00001", "2212.00002"}
    assert kb("validate", str(papers_dir)).code == 0


def test_two_concurrent_kb_new_for_one_paper_write_it_once(
    kb, papers_dir: Path, same_title_server: None
) -> None:
    assert _run_two_kb_new(papers_dir, ("2212.00001", "2212.00001")) == [0, 1]
    assert listing(papers_dir) == ["token-merging-2022.yaml"]


def test_kb_new_plans_and_writes_under_the_lock(papers_dir: Path) -> None:
    meta = arxiv.parse_feed(TOME.read_bytes())[0]
    with locked(papers_dir), pytest.raises(scaffold.ScaffoldError) as error:
        scaffold.create_record(meta, papers_dir, ["vision"], lock_timeout=0.1)
    assert str(error.value) == (
        f"{papers_dir}: another kb command has been writing here for 0 s; try again when it "
        "has finished"
    )
    assert listing(papers_dir) == []


def test_kb_enrich_skips_a_file_edited_while_it_waited_for_arxiv(
    kb, papers_dir: Path, server: Server
) -> None:
    tome_path, h2o_path = gappy_records(papers_dir)
    h2o_before = h2o_path.read_text()
    batch = (RECORDED / "batch-2210.09461-2306.14048.xml").read_bytes()

    def answer_after_an_edit(url: str) -> arxiv.Response:
        with h2o_path.open("a") as handle:  # someone edits a record meanwhile
            handle.write("# edited meanwhile\n")
        return arxiv.Response(200, batch)

    server.answer = answer_after_an_edit
    result = kb("--papers", str(papers_dir), "enrich")
    assert (result.code, result.out) == (
        1,
        f"{tome_path}: filled authors, paper from arXiv 2210.09461\n"
        f"{h2o_path}:1: changed since kb enrich read it, so authors, paper were not filled; run "
        "kb enrich again\n",
    )
    assert result.err == "2 records with an arXiv id: 1 filled, 1 problem\n"
    assert "- Daniel Bolya\n" in tome_path.read_text()
    assert h2o_path.read_text() == h2o_before + "# edited meanwhile\n"


def test_kb_enrich_writes_under_the_lock(papers_dir: Path, server: Server) -> None:
    tome_path, _ = gappy_records(papers_dir)
    record = scaffold.load_stored(tome_path)
    client = arxiv.ArxivClient(server, clock=server.time.clock, sleep=server.time.sleep)
    plan = scaffold.enrich([record], client)
    with locked(papers_dir):
        applied = scaffold.apply_changes(plan.changes, lock_timeout=0.1)
    assert applied.written == []
    assert applied.error == (
        f"{papers_dir}: another kb command has been writing here for 0 s; try again when it "
        "has finished"
    )
    assert tome_path.read_text() == record.text


def test_kb_new_is_not_held_by_a_fifo_or_dev_zero_in_papers(
    kb, papers_dir: Path, server: Server
) -> None:
    """Looking for the arXiv id in papers/ read every file whole: a FIFO blocked it for ever,
    a symlink to /dev/zero filled memory."""
    os.mkfifo(papers_dir / "fifo-2023.yaml")
    (papers_dir / "zero-2023.yaml").symlink_to("/dev/zero")
    result = kb("--papers", str(papers_dir), "new", "--arxiv", "2210.09461", "--modality", "vision")
    assert (result.code, result.out) == (0, f"{papers_dir / 'token-merging-2022.yaml'}\n")


# --- 5. a disk that refuses the write ---------------------------------------------------------


def _refuse(monkeypatch: pytest.MonkeyPatch, papers_dir: Path, code: int) -> str:
    """Make writes into `papers_dir` fail with `code`: for real where the file system lets
    chmod stop us, else (as root, or for ENOSPC) by an error injected where a write happens."""
    if code == errno.EACCES:
        papers_dir.chmod(0o555)
        probe = papers_dir / ".probe"
        try:
            probe.touch()
        except PermissionError:
            return os.strerror(code)  # chmod works here: the real thing
        probe.unlink()
    real_fsync = os.fsync

    def fail(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent == papers_dir:
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail)
    return os.strerror(code)


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_kb_new_cannot_write_one_line_and_nothing_left(
    kb, papers_dir: Path, server: Server, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    reason = _refuse(monkeypatch, papers_dir, code)
    try:
        result = kb(
            "--papers", str(papers_dir), "new", "--arxiv", "2210.09461", "--modality", "vision"
        )
    finally:
        papers_dir.chmod(0o755)
    path = papers_dir / "token-merging-2022.yaml"
    assert (result.code, result.out, result.err) == (
        1,
        "",
        f"kb new: {path}: cannot write: {reason}\n",
    )
    assert listing(papers_dir) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOSPC], ids=["read-only", "disk-full"])
def test_kb_enrich_cannot_write_one_line_and_records_whole(
    kb, papers_dir: Path, server: Server, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    paths = gappy_records(papers_dir)
    before = {p: p.read_bytes() for p in paths}
    batch = (RECORDED / "batch-2210.09461-2306.14048.xml").read_bytes()
    server.answer = lambda url: arxiv.Response(200, batch)
    reason = _refuse(monkeypatch, papers_dir, code)
    try:
        result = kb("--papers", str(papers_dir), "enrich")
    finally:
        papers_dir.chmod(0o755)
    assert result.code == 1
    h2o_path = papers_dir / "h2o-2023.yaml"  # the first in order
    assert result.err == (
        f"2 records with an arXiv id: 0 filled, 0 problems\nkb enrich: {h2o_path}: cannot write: "
        f"{reason}\n"
    )
    assert {p: p.read_bytes() for p in paths} == before
    assert listing(papers_dir) == sorted(p.name for p in paths)


# --- fuzz: whatever the server sends, one line or a valid record ------------------------------

FUZZ_EXAMPLES = int(os.environ.get("TOKENKB_FUZZ_EXAMPLES", "60"))
# Characters XML 1.0 can carry (anything else is a parse error, which the other tests cover).
_XML_CHAR = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters=[chr(c) for c in range(32) if chr(c) not in "\t\n\r"]
    + ["\ufffe", "\uffff"],
)
_XML_TEXT = st.text(_XML_CHAR, max_size=120)
_DATES = st.one_of(
    st.dates(date(2007, 4, 1), date(2024, 6, 1)), st.dates(date(1985, 1, 1), date(2100, 12, 31))
)


def _mutated(body: bytes, data: st.DataObject) -> bytes:
    """`body` with a few bytes replaced, inserted or deleted."""
    out = bytearray(body)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(out)))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if action == "insert":
            out.insert(at, byte)
        elif at < len(out):
            if action == "replace":
                out[at] = byte
            else:
                del out[at]
    return bytes(out)


@settings(max_examples=FUZZ_EXAMPLES * 3, deadline=None)
@given(st.data())
def test_parse_feed_gives_papers_or_one_line_arxiv_error(data: st.DataObject) -> None:
    """Random bytes, or a recorded feed with bytes changed: never another exception."""
    seed = data.draw(st.sampled_from([TOME, RECORDED / "batch-2210.09461-2306.14048.xml"]))
    body = data.draw(st.one_of(st.binary(max_size=300), st.just(seed.read_bytes())))
    body = _mutated(body, data)
    try:
        papers = arxiv.parse_feed(body)
    except arxiv.ArxivError as exc:
        one_line(str(exc))
        return
    for meta in papers:
        assert meta.title == arxiv.clean_text(meta.title)
        assert all(name == arxiv.clean_text(name) for name in meta.authors)


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    title=_XML_TEXT,
    authors=st.lists(_XML_TEXT, max_size=4),
    published=_DATES,
    revised_after=st.one_of(st.integers(0, 900), st.integers(-40, 40)),
    journal_ref=st.one_of(st.none(), _XML_TEXT, st.sampled_from(["ICLR 2023", "CVPR 2099"])),
)
def test_kb_new_writes_a_valid_record_or_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    title: str,
    authors: list[str],
    published: date,
    revised_after: int,
    journal_ref: str | None,
) -> None:
    monkeypatch.setattr(arxiv, "today", lambda: date(2024, 6, 1))
    updated = published + timedelta(days=revised_after)
    body = feed(
        entry(
            title=xml_escape(title),
            authors=tuple(xml_escape(a) for a in authors),
            published=published.isoformat(),
            updated=updated.isoformat(),
            journal_ref=xml_escape(journal_ref) if journal_ref else None,
        )
    ).encode()
    time = FakeTime()
    client = arxiv.ArxivClient(
        lambda url, deadline: arxiv.Response(200, body), clock=time.clock, sleep=time.sleep
    )
    monkeypatch.setattr(tokenkb.cli, "_arxiv_client", lambda: client)
    with tempfile.TemporaryDirectory() as scratch:
        papers = Path(scratch) / "papers"
        papers.mkdir()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = tokenkb.cli.main(
                ["--papers", str(papers), "new", "--arxiv", "2212.00001", "--modality", "vision"]
            )
            written = listing(papers)
            validated = tokenkb.cli.main(["validate", str(papers)]) if written else None
        event(f"kb new exit {code}")  # --hypothesis-show-statistics: how many records written
        if code == 0:
            assert len(written) == 1 and validated == 0, (written, out.getvalue())
        else:
            assert (code, written) in ((1, []), (2, [])), (code, written)
            assert err.getvalue().startswith("kb new: ")
            one_line(err.getvalue().removesuffix("\n"))
