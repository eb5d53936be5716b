"""The arXiv API client: metadata for arXiv ids, politely fetched. The only network module.

It asks `export.arxiv.org/api/query?id_list=...` (the arXiv API, https://info.arxiv.org/help/api/)
for up to `batch_size` ids at a time and parses the Atom feed it returns with the standard
library. The API's terms ask for at most one request every three seconds: every request, retries
included, goes through a `RateLimiter`. Timeouts, connection errors, HTTP 429 and 5xx are retried
with exponential backoff (at least the server's Retry-After); when the tries are spent the caller
gets `ArxivUnreachable`, whose message is one line.

The transport (`url, timeout -> Response`) is injected, as are the clock and the sleep of the
rate limiter, so tests replay recorded responses without a network or a real wait. This module
never writes files and never prints; it knows nothing about records (see `tokenkb.scaffold`).
A response with a DOCTYPE is refused: the API never sends one, and a DTD is how XML entity
attacks arrive.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import urlencode

log = logging.getLogger(__name__)

API_URL = "https://export.arxiv.org/api/query"
HOST = "export.arxiv.org"
USER_AGENT = "tokenkb (token-reduction knowledge base; kb new/enrich)"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

ATOM = "{http://www.w3.org/2005/Atom}"
ARXIV = "{http://arxiv.org/schemas/atom}"
OPENSEARCH = "{http://a9.com/-/spec/opensearch/1.1/}"

# A bare id as the API writes it in <id>: new style (2210.09461) or old style (hep-th/9901001),
# then the version.
_ENTRY_ID = re.compile(
    r"^https?://arxiv\.org/abs/(?P<id>[0-9]{4}\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})"
    r"v(?P<version>[0-9]+)$"
)
# What a user may type for an id: bare, `arXiv:` prefixed, or an abs/pdf/html URL; a version
# and `.pdf` are dropped. Only the prefix is case-insensitive (old-style archives are lowercase).
_GIVEN_ID = re.compile(
    r"^(?:(?i:arxiv:)\s*|(?i:https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf|html)/))?"
    r"(?P<id>[0-9]{2}(?:0[1-9]|1[0-2])\.[0-9]{4,5}"
    r"|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{2}(?:0[1-9]|1[0-2])[0-9]{3})"
    r"(?:v[0-9]+)?(?:\.pdf)?/?$"
)


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


class ArxivNotFound(ArxivError):
    """The API answered, but knows no paper with this id."""

    def __init__(self, arxiv_id: str) -> None:
        super().__init__(f"arXiv has no paper {arxiv_id}; check the id")
        self.arxiv_id = arxiv_id


class ArxivApiError(ArxivError):
    """The API answered with an error entry (e.g. 'incorrect id format for ...')."""


class ArxivResponseError(ArxivError):
    """The API's answer is not a well-formed arXiv Atom feed."""


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
        digits = 5 if int(found[:2]) >= 15 else 4
        if len(found.split(".")[1]) == digits:
            return found
        raise InvalidArxivId(
            f"{shown!r} is not an arXiv id: ids from 2015 on have 5 digits after the dot, "
            "earlier ones 4 (e.g. '2210.09461', '1412.6980')"
        )
    raise InvalidArxivId(
        f"{shown!r} is not an arXiv id such as '2210.09461' (also accepted: "
        "'arXiv:2210.09461v2', 'https://arxiv.org/abs/2210.09461', 'hep-th/9901001')"
    )


# --- transport --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """What the transport got back: the HTTP status, the body and any Retry-After (seconds)."""

    status: int
    body: bytes
    retry_after: float | None = None


# (url, timeout in seconds) -> Response. Raises OSError (TimeoutError, ConnectionError,
# urllib's URLError) when no HTTP response arrived at all.
Transport = Callable[[str, float], Response]


def urllib_transport(url: str, timeout: float) -> Response:
    """The real transport: one GET with urllib; HTTP errors come back as a Response."""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, answer.read(MAX_RESPONSE_BYTES + 1))
    except urllib.error.HTTPError as exc:
        body = exc.read(MAX_RESPONSE_BYTES + 1) if exc.fp is not None else b""
        return Response(exc.code, body, _retry_after(exc.headers.get("Retry-After")))
    except http.client.HTTPException as exc:  # e.g. IncompleteRead: not an OSError
        raise ConnectionError(f"broken HTTP response ({type(exc).__name__})") from exc


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
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


@dataclass(frozen=True)
class ClientConfig:
    """How the client talks to the API. Defaults follow the API's terms of use."""

    url: str = API_URL
    min_interval_s: float = 3.0  # the API asks for no more than one request every 3 s
    timeout_s: float = 20.0
    retries: int = 3  # tries after the first
    backoff_s: float = 3.0  # first retry delay; doubles on each further retry
    max_backoff_s: float = 120.0
    batch_size: int = 50

    def __post_init__(self) -> None:
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(f"url must be an http(s) URL, got {self.url!r}")
        if self.min_interval_s < 0:
            raise ValueError(f"min_interval_s must be 0 or more, got {self.min_interval_s}")
        if not 0 < self.timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600], got {self.timeout_s}")
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
    """One paper as the arXiv API describes it. Text fields have their whitespace collapsed."""

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


def _text(element: ET.Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    collapsed = " ".join(element.text.split())
    return collapsed or None


def _date(value: str | None, what: str, where: str) -> date:
    if value is None:
        raise ArxivResponseError(f"arXiv response: {where} has no <{what}>")
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise ArxivResponseError(
            f"arXiv response: {where} has <{what}> {value!r}, not a date"
        ) from None


def parse_feed(body: bytes) -> list[ArxivMeta]:
    """The papers in an arXiv API Atom feed, in feed order.

    An error entry (the API's way of reporting a bad query) raises ArxivApiError; a body that
    is not UTF-8, holds a DOCTYPE, or is not an Atom feed raises ArxivResponseError.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ArxivResponseError("arXiv response is not UTF-8") from None
    if re.search(r"<!DOCTYPE|<!ENTITY", text, re.IGNORECASE):
        raise ArxivResponseError(
            "arXiv response declares a DOCTYPE, which the API never sends; refusing to parse it"
        )
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ArxivResponseError(f"arXiv response is not well-formed XML: {exc}") from None
    if root.tag != f"{ATOM}feed":
        raise ArxivResponseError(f"arXiv response is not an Atom feed (root element {root.tag!r})")
    papers = []
    for number, entry in enumerate(root.iter(f"{ATOM}entry"), 1):
        papers.append(_parse_entry(entry, number))
    return papers


def _parse_entry(entry: ET.Element, number: int) -> ArxivMeta:
    where = f"entry {number}"
    entry_id = _text(entry.find(f"{ATOM}id")) or ""
    title = _text(entry.find(f"{ATOM}title"))
    if "/api/errors" in entry_id or title == "Error":
        message = _text(entry.find(f"{ATOM}summary")) or entry_id or "unspecified error"
        raise ArxivApiError(f"arXiv API error: {message}")
    match = _ENTRY_ID.match(entry_id)
    if match is None:
        raise ArxivResponseError(
            f"arXiv response: {where} has id {entry_id!r}, not an arxiv.org/abs/<id>v<n> URL"
        )
    where = f"entry {number} ({match.group('id')})"
    if title is None:
        raise ArxivResponseError(f"arXiv response: {where} has no <title>")
    authors = tuple(
        name
        for author in entry.iter(f"{ATOM}author")
        if (name := _text(author.find(f"{ATOM}name"))) is not None
    )
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
        published=_date(_text(entry.find(f"{ATOM}published")), "published", where),
        updated=_date(_text(entry.find(f"{ATOM}updated")), "updated", where),
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


# --- the client -------------------------------------------------------------------------------


class ArxivClient:
    """Fetches `ArxivMeta` by id: batched, rate-limited, retried with backoff.

    `transport`, `clock` and `sleep` default to the real network and time; tests pass fakes.
    """

    def __init__(
        self,
        transport: Transport = urllib_transport,
        config: ClientConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.config = config or ClientConfig()
        self.sleep = sleep
        self.limiter = RateLimiter(self.config.min_interval_s, clock, sleep)

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
        tries = config.retries + 1
        reason = "no answer"
        retry_after: float | None = None
        for attempt in range(tries):
            if attempt:
                delay = max(config.backoff_s * 2 ** (attempt - 1), retry_after or 0.0)
                delay = min(delay, config.max_backoff_s)
                log.info("arXiv: %s; try %d of %d in %.1f s", reason, attempt + 1, tries, delay)
                self.sleep(delay)
            retry_after = None
            self.limiter.wait()
            try:
                response = self.transport(url, config.timeout_s)
            except OSError as exc:
                timed_out = isinstance(exc, TimeoutError) or isinstance(
                    getattr(exc, "reason", None), TimeoutError
                )
                reason = f"timed out after {config.timeout_s:g} s" if timed_out else _os_reason(exc)
                continue
            if response.status == 200:
                if len(response.body) > MAX_RESPONSE_BYTES:
                    raise ArxivResponseError(
                        f"arXiv response is over {MAX_RESPONSE_BYTES} bytes; refusing it"
                    )
                return response.body
            reason = f"HTTP {response.status}"
            if _retryable(response.status):
                retry_after = response.retry_after
                continue
            # A 4xx usually carries an error entry saying what was wrong with the query.
            with contextlib.suppress(ArxivResponseError):
                parse_feed(response.body)
            raise ArxivResponseError(f"arXiv answered HTTP {response.status} for {url}")
        raise ArxivUnreachable(f"{reason} ({tries} {'try' if tries == 1 else 'tries'})")


def _os_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)  # urllib.error.URLError wraps the socket error
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError):
        return reason.strerror or str(reason) or type(reason).__name__
    if reason is not None:
        return str(reason)
    return exc.strerror or str(exc) or type(exc).__name__
