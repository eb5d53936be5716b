"""The arXiv API client: metadata for arXiv ids, politely fetched. The only network module.

It asks `export.arxiv.org/api/query?id_list=...` (the arXiv API, https://info.arxiv.org/help/api/)
for up to `batch_size` ids at a time and parses the Atom feed it returns. The API's terms ask for
at most one request every three seconds: every request, retries included, goes through a
`RateLimiter`. Timeouts, connection errors, HTTP 429 and 5xx are retried with exponential backoff
(at least the server's Retry-After); when the tries are spent the caller gets `ArxivUnreachable`,
whose message is one line.

Nothing the server sends can hold us, fill memory or reach a record unchecked:
- time: each request must be complete within `deadline_s` and everything a client does (retries,
  backoff and rate-limit waits included) within `total_s`; the real transport gives every network
  wait only the time left, so a server that drips one byte a second is cut off on time
  (`ArxivTimeout`);
- size: a body over `MAX_RESPONSE_BYTES` (announced or received) is refused; nothing is ever
  decompressed (we send `Accept-Encoding: identity`);
- where: only `https://export.arxiv.org` is spoken to (a loopback address in tests); redirects are
  never followed;
- XML: the body must be UTF-8 (no NUL bytes, no other declared encoding) and is parsed with DTDs,
  entities and external references forbidden (defusedxml), whatever it says of itself;
- content: control and format characters are removed from every text, whitespace collapsed;
  absurdly long titles or author lists, dates after today, duplicate entries are refused.

The transport (`url, deadline -> Response`) is injected, as are the clock and the sleep, so tests
replay recorded responses without a network or a real wait. This module never writes files and
never prints; it knows nothing about records (see `tokenkb.scaffold`).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import logging
import re
import socket
import ssl
import time
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from urllib.parse import urlencode, urlsplit

import defusedxml
import defusedxml.ElementTree

log = logging.getLogger(__name__)

API_URL = "https://export.arxiv.org/api/query"
HOST = "export.arxiv.org"
USER_AGENT = "tokenkb (token-reduction knowledge base; kb new/enrich)"
# A full batch of 200 entries is well under 1 MiB; the limit also bounds the parsed tree.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
# What one entry may hold. Real titles are under 300 characters and the longest author lists
# (particle-physics collaborations) about 5 000 names; beyond these, an answer is not arXiv's.
MAX_TITLE_CHARS = 1000
MAX_NAME_CHARS = 300
MAX_AUTHORS = 10_000
ARXIV_BEGAN = date(1991, 8, 1)

ATOM = "{http://www.w3.org/2005/Atom}"
ARXIV = "{http://arxiv.org/schemas/atom}"

# A bare id as the API writes it in <id>: new style (2210.09461) or old style (hep-th/9901001),
# then the version.
_ENTRY_ID = re.compile(
    r"^https?://arxiv\.org/abs/(?P<id>[0-9]{4}\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})"
    r"v(?P<version>[0-9]{1,6})$"
)
# What a user may type for an id: bare, `arXiv:` prefixed, or an abs/pdf/html URL; a version
# and `.pdf` are dropped. Only the prefix is case-insensitive (old-style archives are lowercase).
_GIVEN_ID = re.compile(
    r"^(?:(?i:arxiv:)\s*|(?i:https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf|html)/))?"
    r"(?P<id>[0-9]{2}(?:0[1-9]|1[0-2])\.[0-9]{4,5}"
    r"|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{2}(?:0[1-9]|1[0-2])[0-9]{3})"
    r"(?:v[0-9]+)?(?:\.pdf)?/?$"
)
# The encoding an XML declaration names, if it names one.
_DECLARED_ENCODING = re.compile(r"""\A\ufeff?<\?xml[^>]*?\sencoding\s*=\s*["']([^"'>]{0,40})""")
# Removed from every text: control (Cc), format (Cf: zero-width and bidi controls), private-use
# (Co) and surrogate (Cs) characters. A terminal obeys some; a record must not hold any.
_INVISIBLE = frozenset(("Cc", "Cf", "Co", "Cs"))


def today() -> date:
    """Today in UTC, the calendar arXiv dates its versions by (tests replace this function)."""
    return datetime.now(UTC).date()


# --- errors -----------------------------------------------------------------------------------


class ArxivError(Exception):
    """Anything that stops us from getting metadata from arXiv; the message is one line."""


class InvalidArxivId(ArxivError, ValueError):
    """The text given is not an arXiv identifier."""


class ArxivUnreachable(ArxivError):
    """No usable answer from the API after every try (no network, timeouts, 5xx, 429)."""

    def __init__(self, reason: str) -> None:
        reason = " ".join(reason.split()) or "no reason given"
        super().__init__(f"cannot reach {HOST}: {reason}; check the network or try later")
        self.reason = reason


class ArxivTimeout(ArxivError):
    """The API did not finish answering within the deadline of a request or of the client."""

    def __init__(self, seconds: float, total: bool = False) -> None:
        scope = " for all requests together" if total else ""
        super().__init__(f"arXiv did not answer within {seconds:g} s{scope}; try later")
        self.seconds = seconds


class ArxivNotFound(ArxivError):
    """The API answered, but knows no paper with this id."""

    def __init__(self, arxiv_id: str) -> None:
        super().__init__(f"arXiv has no paper {arxiv_id}; check the id")
        self.arxiv_id = arxiv_id


class ArxivApiError(ArxivError):
    """The API answered with an error entry (e.g. 'incorrect id format for ...')."""


class ArxivResponseError(ArxivError):
    """The API's answer is not a well-formed arXiv Atom feed, or is one we refuse."""


# --- ids --------------------------------------------------------------------------------------


def parse_arxiv_id(text: str) -> str:
    """The bare id (no version) in `text`: an id, `arXiv:` id, abs/pdf URL, with or without vN.

    Raises InvalidArxivId with a message that shows a valid example.
    """
    shown = text.strip()
    match = _GIVEN_ID.match(shown)
    if match is not None:
        found = match.group("id")
        if "/" in found:
            return found
        yymm = found[:4]
        if not "0704" <= yymm <= today().strftime("%y%m"):
            raise InvalidArxivId(
                f"{shown!r} is not an arXiv id: ids with a dot begin at 0704 (April 2007) and "
                "end at this month; older ids look like 'hep-th/9901001'"
            )
        digits = 5 if int(found[:2]) >= 15 else 4
        if len(found.split(".")[1]) == digits:
            return found
        raise InvalidArxivId(
            f"{shown!r} is not an arXiv id: ids from 2015 on have 5 digits after the dot, "
            "earlier ones 4 (e.g. '2210.09461', '1412.6980')"
        )
    raise InvalidArxivId(
        f"{_shorten(shown)!r} is not an arXiv id such as '2210.09461' (also accepted: "
        "'arXiv:2210.09461v2', 'https://arxiv.org/abs/2210.09461', 'hep-th/9901001')"
    )


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- transport --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deadline:
    """When the current request must be over, on the client's clock.

    `timeout()` is what the next network wait (connect, TLS handshake, a read) may take: the
    per-wait `read_timeout`, or less when the deadline is nearer; TimeoutError once it has passed.
    """

    end: float
    read_timeout: float
    clock: Callable[[], float] = time.monotonic

    def left(self) -> float:
        return self.end - self.clock()

    def timeout(self) -> float:
        left = self.left()
        if left <= 0:
            raise TimeoutError("the request's deadline has passed")
        return min(self.read_timeout, left)


@dataclass(frozen=True)
class Response:
    """What the transport got back: the HTTP status, the body and any Retry-After (seconds).

    `body` is the whole body, or its chunks as they arrive (the real transport); the client reads
    them under its deadline and size limit. `length` is the announced Content-Length, if any.
    """

    status: int
    body: bytes | Iterator[bytes]
    retry_after: float | None = None
    length: int | None = None


# (url, deadline) -> Response. Raises OSError (TimeoutError, ConnectionError, socket.gaierror,
# ssl.SSLError) when no HTTP response arrived at all; reading the body may raise OSError too.
Transport = Callable[[str, Deadline], Response]


def http_transport(url: str, deadline: Deadline) -> Response:
    """The real transport: one GET over a socket whose every wait is bounded by `deadline`.

    http.client parses the answer; urllib is not used because it follows redirects, honours proxy
    variables and cannot bound a read by anything but a per-wait timeout. HTTP errors come back
    as a Response. The caller must exhaust or close the body iterator (it closes the socket).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock: socket.socket = socket.create_connection((host, port), timeout=deadline.timeout())
    try:
        if parts.scheme == "https":
            sock.settimeout(deadline.timeout())  # CPython bounds the whole handshake by it
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: application/atom+xml\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
        )
        sock.settimeout(deadline.timeout())  # sendall: the whole send, since Python 3.5
        sock.sendall(request.encode("ascii"))
        answer = http.client.HTTPResponse(_DeadlineSocket(sock, deadline))  # type: ignore[arg-type]
        answer.begin()
    except http.client.HTTPException as exc:  # e.g. BadStatusLine: not an OSError
        sock.close()
        raise ConnectionError(f"broken HTTP response ({type(exc).__name__})") from exc
    except BaseException:
        sock.close()
        raise
    return Response(
        answer.status,
        _Body(answer, sock),
        _retry_after(answer.getheader("Retry-After")),
        answer.length,
    )


class _DeadlineSocket:
    """What http.client needs of a socket (`makefile`), with every read bounded by a deadline.

    A buffered reader loops over raw reads until a line or a size is complete, so a per-read
    socket timeout alone lets a server that drips bytes hold a reader for ever; here each raw
    read gets only the time the deadline has left.
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self._sock.settimeout(self._deadline.timeout())
        return self._sock.recv_into(buffer)


class _Body:
    """The chunks of an answer's body as they arrive; closing it (or reaching the end) closes
    the connection."""

    def __init__(self, answer: http.client.HTTPResponse, sock: socket.socket) -> None:
        self._answer = answer
        self._sock = sock

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = self._answer.read1(CHUNK_BYTES)  # one raw read at most: never waits for more
        except http.client.HTTPException as exc:  # e.g. IncompleteRead: not an OSError
            self.close()
            raise ConnectionError(f"broken HTTP response ({type(exc).__name__})") from exc
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._answer.close()
        self._sock.close()


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 9:
        return None
    return float(value.strip())


# --- rate limit and retries -------------------------------------------------------------------


class RateLimiter:
    """At most one request every `interval` seconds (clock and sleep injectable for tests)."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be 0 or more seconds, got {interval}")
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self._last: float | None = None

    def wait(self) -> None:
        """Sleep until `interval` seconds have passed since the previous request, then mark."""
        if self._last is not None:
            remaining = self._last + self.interval - self.clock()
            if remaining > 0:
                log.debug("rate limit: sleeping %.2f s", remaining)
                self.sleep(remaining)
        self._last = self.clock()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ClientConfig:
    """How the client talks to the API. Defaults follow the API's terms of use."""

    url: str = API_URL
    min_interval_s: float = 3.0  # the API asks for no more than one request every 3 s
    timeout_s: float = 20.0  # one network wait: connecting, or one read
    deadline_s: float = 60.0  # one request, from connecting to its last byte
    total_s: float = 300.0  # every request of this client: retries and waits included
    retries: int = 3  # tries after the first
    backoff_s: float = 3.0  # first retry delay; doubles on each further retry
    max_backoff_s: float = 120.0
    batch_size: int = 50

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if not (
            (parts.scheme == "https" and host == HOST)
            or (parts.scheme in ("http", "https") and _is_loopback(host))
        ):
            raise ValueError(
                f"url must be https://{HOST}/... (or a loopback address in tests), got {self.url!r}"
            )
        if self.min_interval_s < 0:
            raise ValueError(f"min_interval_s must be 0 or more, got {self.min_interval_s}")
        if not 0 < self.timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600], got {self.timeout_s}")
        if not 0 < self.deadline_s <= 600:
            raise ValueError(f"deadline_s must be in (0, 600], got {self.deadline_s}")
        if not self.deadline_s <= self.total_s <= 3600:
            raise ValueError(
                f"total_s must be in [deadline_s={self.deadline_s:g}, 3600], got {self.total_s}"
            )
        if not 0 <= self.retries <= 10:
            raise ValueError(f"retries must be in [0, 10], got {self.retries}")
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"backoff_s must be in [0, max_backoff_s={self.max_backoff_s}], "
                f"got {self.backoff_s}"
            )
        if not 1 <= self.batch_size <= 200:
            raise ValueError(f"batch_size must be in [1, 200], got {self.batch_size}")


def _retryable(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


# --- metadata ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArxivLink:
    href: str
    rel: str | None = None
    title: str | None = None
    type: str | None = None


@dataclass(frozen=True)
class ArxivMeta:
    """One paper as the arXiv API describes it. Text fields are cleaned (see `clean_text`)."""

    arxiv_id: str  # bare, no version: '2210.09461'
    version: int  # the latest version, as listed by the API
    title: str
    authors: tuple[str, ...]
    published: date  # v1
    updated: date  # latest version
    abstract: str
    doi: str | None = None
    journal_ref: str | None = None
    comment: str | None = None
    primary_category: str | None = None
    categories: tuple[str, ...] = ()
    links: tuple[ArxivLink, ...] = field(default_factory=tuple)

    @property
    def abs_url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv_id}"


def clean_text(text: str) -> str:
    """`text` on one line: whitespace runs become one space, invisible characters go.

    Invisible means control, format (zero-width, bidi overrides), private-use and surrogate
    characters: a terminal obeys some of them, and a record must hold none.
    """
    words = (
        "".join(c for c in word if unicodedata.category(c) not in _INVISIBLE)
        for word in text.split()
    )
    return " ".join(word for word in words if word)


def _text(element: ET.Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return clean_text(element.text) or None


def _date(value: str | None, what: str, where: str) -> date:
    if value is None:
        raise ArxivResponseError(f"arXiv response: {where} has no <{what}>")
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise ArxivResponseError(
            f"arXiv response: {where} has <{what}> {_shorten(value)!r}, not a date"
        ) from None


def _feed_text(body: bytes) -> str:
    """The body as text, when it is UTF-8 (the only encoding the API sends)."""
    if b"\0" in body:  # UTF-16 and UTF-32 text is full of NUL bytes; UTF-8 XML holds none
        raise ArxivResponseError("arXiv response is not UTF-8 (it holds NUL bytes)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ArxivResponseError("arXiv response is not UTF-8") from None
    declared = _DECLARED_ENCODING.match(text)
    if declared is not None and declared.group(1).strip().lower() != "utf-8":
        raise ArxivResponseError(
            f"arXiv response declares encoding {declared.group(1)!r}; the API sends UTF-8 only"
        )
    return text


def parse_feed(body: bytes) -> list[ArxivMeta]:
    """The papers in an arXiv API Atom feed, in feed order.

    An error entry (the API's way of reporting a bad query) raises ArxivApiError; a body that
    is not UTF-8, holds a DOCTYPE or an entity, is not an Atom feed or holds an entry we refuse
    raises ArxivResponseError.
    """
    text = _feed_text(body)
    try:
        # Parsing the decoded text makes expat read it as UTF-8 whatever it declares.
        root = defusedxml.ElementTree.fromstring(
            text, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException:
        raise ArxivResponseError(
            "arXiv response declares a DOCTYPE, which the API never sends; refusing to parse it"
        ) from None
    except ET.ParseError as exc:
        raise ArxivResponseError(f"arXiv response is not well-formed XML: {exc}") from None
    if root.tag != f"{ATOM}feed":
        raise ArxivResponseError(
            f"arXiv response is not an Atom feed (root element {_shorten(root.tag)!r})"
        )
    papers: list[ArxivMeta] = []
    seen: set[str] = set()
    for number, entry in enumerate(root.iter(f"{ATOM}entry"), 1):
        meta = _parse_entry(entry, number)
        if meta.arxiv_id in seen:
            raise ArxivResponseError(
                f"arXiv response: entry {number} repeats {meta.arxiv_id}; refusing an answer "
                "that describes one paper twice"
            )
        seen.add(meta.arxiv_id)
        papers.append(meta)
    return papers


def _parse_entry(entry: ET.Element, number: int) -> ArxivMeta:
    where = f"entry {number}"
    entry_id = _text(entry.find(f"{ATOM}id")) or ""
    title = _text(entry.find(f"{ATOM}title"))
    if "/api/errors" in entry_id or title == "Error":
        message = _text(entry.find(f"{ATOM}summary")) or entry_id or "unspecified error"
        raise ArxivApiError(f"arXiv API error: {_shorten(message, 300)}")
    if not entry_id:
        raise ArxivResponseError(f"arXiv response: {where} has no <id>")
    match = _ENTRY_ID.match(entry_id)
    if match is None:
        raise ArxivResponseError(
            f"arXiv response: {where} has id {_shorten(entry_id)!r}, "
            "not an arxiv.org/abs/<id>v<n> URL"
        )
    where = f"entry {number} ({match.group('id')})"
    if title is None:
        raise ArxivResponseError(f"arXiv response: {where} has no <title>")
    if len(title) > MAX_TITLE_CHARS:
        raise ArxivResponseError(
            f"arXiv response: {where} has a title of {len(title)} characters (arXiv titles are "
            f"far under {MAX_TITLE_CHARS}); refusing it"
        )
    authors = tuple(
        name
        for author in entry.iter(f"{ATOM}author")
        if (name := _text(author.find(f"{ATOM}name"))) is not None
    )
    if len(authors) > MAX_AUTHORS:
        raise ArxivResponseError(
            f"arXiv response: {where} lists {len(authors)} authors (no arXiv paper has over "
            f"{MAX_AUTHORS}); refusing it"
        )
    long_name = next((name for name in authors if len(name) > MAX_NAME_CHARS), None)
    if long_name is not None:
        raise ArxivResponseError(
            f"arXiv response: {where} has an author name of {len(long_name)} characters "
            f"(over {MAX_NAME_CHARS}); refusing it"
        )
    published = _date(_text(entry.find(f"{ATOM}published")), "published", where)
    updated = _date(_text(entry.find(f"{ATOM}updated")), "updated", where)
    _check_dates(published, updated, where)
    primary = entry.find(f"{ARXIV}primary_category")
    links = tuple(
        ArxivLink(
            href=link.attrib["href"],
            rel=link.get("rel"),
            title=link.get("title"),
            type=link.get("type"),
        )
        for link in entry.iter(f"{ATOM}link")
        if "href" in link.attrib
    )
    return ArxivMeta(
        arxiv_id=match.group("id"),
        version=int(match.group("version")),
        title=title,
        authors=authors,
        published=published,
        updated=updated,
        abstract=_text(entry.find(f"{ATOM}summary")) or "",
        doi=_text(entry.find(f"{ARXIV}doi")),
        journal_ref=_text(entry.find(f"{ARXIV}journal_ref")),
        comment=_text(entry.find(f"{ARXIV}comment")),
        primary_category=primary.get("term") if primary is not None else None,
        categories=tuple(
            term for c in entry.iter(f"{ATOM}category") if (term := c.get("term")) is not None
        ),
        links=links,
    )


def _check_dates(published: date, updated: date, where: str) -> None:
    now = today()
    for what, value in (("published", published), ("updated", updated)):
        if value > now:
            raise ArxivResponseError(
                f"arXiv response: {where} has <{what}> {value.isoformat()}, after today "
                f"({now.isoformat()}); refusing it"
            )
    if published < ARXIV_BEGAN:
        raise ArxivResponseError(
            f"arXiv response: {where} has <published> {published.isoformat()}, before arXiv "
            f"began ({ARXIV_BEGAN.isoformat()}); refusing it"
        )
    if updated < published:
        raise ArxivResponseError(
            f"arXiv response: {where} has <updated> {updated.isoformat()} before <published> "
            f"{published.isoformat()}; refusing it"
        )


# --- the client -------------------------------------------------------------------------------


class ArxivClient:
    """Fetches `ArxivMeta` by id: batched, rate-limited, retried with backoff, within deadlines.

    `transport`, `clock` and `sleep` default to the real network and time; tests pass fakes.
    The total deadline (`config.total_s`) starts with the client's first request.
    """

    def __init__(
        self,
        transport: Transport = http_transport,
        config: ClientConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.config = config or ClientConfig()
        self.clock = clock
        self.sleep = sleep
        self.limiter = RateLimiter(self.config.min_interval_s, clock, sleep)
        self._end: float | None = None  # when every request must be over

    def fetch(self, arxiv_id: str) -> ArxivMeta:
        """The paper with this id (any accepted spelling); ArxivNotFound when arXiv has none."""
        bare = parse_arxiv_id(arxiv_id)
        found = self.fetch_many([bare])
        if bare not in found:
            raise ArxivNotFound(bare)
        return found[bare]

    def fetch_many(self, arxiv_ids: Iterable[str]) -> dict[str, ArxivMeta]:
        """Papers by bare id; ids arXiv does not know are absent. One request per batch."""
        wanted = list(dict.fromkeys(parse_arxiv_id(i) for i in arxiv_ids))
        found: dict[str, ArxivMeta] = {}
        size = self.config.batch_size
        for start in range(0, len(wanted), size):
            batch = wanted[start : start + size]
            for meta in parse_feed(self._get(self._url(batch))):
                if meta.arxiv_id in batch:
                    found[meta.arxiv_id] = meta
        return found

    def _url(self, batch: Sequence[str]) -> str:
        query = urlencode({"id_list": ",".join(batch), "max_results": len(batch)}, safe=",/")
        return f"{self.config.url}?{query}"

    def _get(self, url: str) -> bytes:
        """The body of a 200 answer to `url`, after retries; raises ArxivError otherwise."""
        config = self.config
        if self._end is None:
            self._end = self.clock() + config.total_s
        tries = config.retries + 1
        reason = "no answer"
        retry_after: float | None = None
        for attempt in range(tries):
            if attempt:
                delay = max(config.backoff_s * 2 ** (attempt - 1), retry_after or 0.0)
                delay = min(delay, config.max_backoff_s)
                if self.clock() + delay >= self._end:
                    raise ArxivUnreachable(
                        f"{reason} ({attempt} {'try' if attempt == 1 else 'tries'}; no time "
                        f"left for another within {config.total_s:g} s)"
                    )
                log.info("arXiv: %s; try %d of %d in %.1f s", reason, attempt + 1, tries, delay)
                self.sleep(delay)
            retry_after = None
            self.limiter.wait()
            start = self.clock()
            if start >= self._end:
                raise ArxivTimeout(config.total_s, total=True)
            deadline = Deadline(
                min(start + config.deadline_s, self._end), config.timeout_s, self.clock
            )
            try:
                response = self.transport(url, deadline)
                body = self._read(response, deadline)
            except OSError as exc:
                if deadline.left() <= 0:  # a server still talking, too slowly: not retried
                    raise self._late(deadline) from None
                timed_out = isinstance(exc, TimeoutError) or isinstance(
                    getattr(exc, "reason", None), TimeoutError
                )
                reason = f"timed out after {config.timeout_s:g} s" if timed_out else _os_reason(exc)
                continue
            if response.status == 200:
                return body
            reason = f"HTTP {response.status}"
            if _retryable(response.status):
                retry_after = response.retry_after
                continue
            # A 4xx usually carries an error entry saying what was wrong with the query.
            with contextlib.suppress(ArxivResponseError):
                parse_feed(body)
            tail = "; redirects are not followed" if 300 <= response.status <= 399 else ""
            raise ArxivResponseError(f"arXiv answered HTTP {response.status} for {url}{tail}")
        raise ArxivUnreachable(f"{reason} ({tries} {'try' if tries == 1 else 'tries'})")

    def _late(self, deadline: Deadline) -> ArxivTimeout:
        total = self._end is not None and deadline.end >= self._end
        return ArxivTimeout(self.config.total_s if total else self.config.deadline_s, total)

    def _read(self, response: Response, deadline: Deadline) -> bytes:
        """The whole body, read under the deadline and the size limit."""
        body = response.body
        if isinstance(body, bytes):
            _check_size(len(body))
            return body
        try:
            if response.length is not None:
                _check_size(response.length, announced=True)
            parts: list[bytes] = []
            size = 0
            for chunk in body:
                size += len(chunk)
                _check_size(size)
                parts.append(chunk)
                if deadline.left() <= 0:
                    raise self._late(deadline)
            return b"".join(parts)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


def _check_size(size: int, announced: bool = False) -> None:
    if size > MAX_RESPONSE_BYTES:
        what = f"announces {size} bytes" if announced else "is longer"
        raise ArxivResponseError(
            f"arXiv response {what}; refusing anything over {MAX_RESPONSE_BYTES} bytes"
        )


def _os_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)  # urllib.error.URLError wraps the socket error
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError):
        return reason.strerror or str(reason) or type(reason).__name__
    if reason is not None:
        return str(reason)
    return exc.strerror or str(exc) or type(exc).__name__
