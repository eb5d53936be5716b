"""Read and write `papers/<id>.yaml`: strict YAML in, canonical YAML out.

Reading is stricter than PyYAML: a duplicate key (which PyYAML silently resolves by keeping the
last value), an anchor or alias, a merge key, an explicit tag, a second document, tabs used as
indentation, control characters, bytes that are not UTF-8, an empty or oversized file are all
errors with a line number. The parser walks libyaml's events (the C parser when present) and
builds plain Python values plus a map from each field's path to its line, so every pydantic error
points at a line. Whatever the input, reading returns or raises RecordError: only regular files
are read, never more than the size limit, and no scalar reaches a constructor that can fail.

Writing produces one canonical form (model field order, defaults left out, unicode kept): load
then dump of a canonical file gives the same bytes. Writes are atomic (see `outputs`).
This module does not print and does not decide what to do about problems; callers do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .files import FileTooLarge, directory_entries, is_record_name, read_bytes_bounded, read_problem
from .model import ENUM_FIELDS, FIELD_NAMES, Paper, Source
from .outputs import write_text_atomic
from .problems import Problem, RecordError, did_you_mean

MAX_BYTES = 64 * 1024  # a record file must be smaller than this
MAX_DEPTH = 8
SCHEMA_COMMENT = "# yaml-language-server: $schema=../schema/paper.schema.json\n"
YAML_WIDTH = 1_000_000  # one line per value: a changed word changes one line of the diff

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NOKEY = object()  # the mapping frame is waiting for a key
_DROP = object()  # the value belongs to a duplicate key and is not kept

Loc = tuple[str | int, ...]  # where a value sits: field names and list indexes


class ParsedYaml:
    """A YAML document as plain values, with the line of every key and list item."""

    __slots__ = ("data", "lines", "raw")

    def __init__(self, data: Any, lines: dict[Loc, int], raw: dict[Loc, str]) -> None:
        self.data = data
        self.lines = lines
        self.raw = raw  # source text of scalars that did not resolve to strings

    def line(self, loc: Iterable[str | int]) -> int:
        """The line of the deepest known prefix of `loc`."""
        loc = tuple(loc)
        while loc not in self.lines and loc:
            loc = loc[:-1]
        return self.lines.get(loc, 1)


def _size_problem(name: str, size: int) -> Problem | None:
    """The one size rule of a record, used for files read and texts about to be written."""
    if size < MAX_BYTES:
        return None
    return Problem(name, 1, f"file is {size} bytes; a record must be under {MAX_BYTES} bytes")


def read_text(path: Path) -> str:
    """The file's text, or RecordError for size, encoding and indentation problems."""
    name = str(path)
    try:
        data = read_bytes_bounded(path, MAX_BYTES)
    except FileTooLarge as exc:
        data, size = b"", exc.size
    except OSError as exc:
        raise RecordError([Problem(name, 1, read_problem(exc, path))]) from None
    else:
        size = len(data)
    too_large = _size_problem(name, size)
    if too_large is not None:  # checked here too, to name the size of a file that was not read
        raise RecordError([too_large])
    return decode_text(data, name)


def decode_text(data: bytes, name: str) -> str:
    """The text of a record file's bytes, or RecordError for size, encoding, a byte-order mark
    or no content."""
    too_large = _size_problem(name, len(data))
    if too_large is not None:
        raise RecordError([too_large])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecordError(
            [
                Problem(
                    name,
                    line,
                    f"byte 0x{data[exc.start]:02x} at column {column} is not valid UTF-8; "
                    "save the file as UTF-8",
                )
            ]
        ) from None
    if text.startswith("\ufeff"):
        raise RecordError(
            [Problem(name, 1, "file starts with a byte-order mark; save it as UTF-8 without BOM")]
        )
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        raise RecordError(
            [
                Problem(
                    name,
                    1,
                    "file is empty; a record is a mapping of fields (see schema/template.yaml)",
                )
            ]
        )
    return text


def _tab_problems(text: str, name: str) -> list[Problem]:
    if "\t" not in text:
        return []
    found = (_tab_problem(name, n, line) for n, line in enumerate(text.split("\n"), 1))
    return [problem for problem in found if problem is not None]


def _tab_problem(name: str, number: int, line: str) -> Problem | None:
    body = line.lstrip(" \t")
    if "\t" in line[: len(line) - len(body)]:
        return Problem(name, number, "tab used for indentation; indent with spaces")
    # No field's value may hold a tab, and after a ':' or '-' libyaml reads a tab as a space
    # where PyYAML refuses it: refused here, a record reads the same with either. A comment
    # line may hold one.
    if "\t" in body and not body.startswith("#"):
        column = line.index("\t") + 1
        return Problem(name, number, f"tab at column {column}; use a space instead")
    return None


def check_record_text(text: str, path: Path) -> Paper:
    """The record `text` would be once written to `path`, checked exactly as `kb validate` will
    check the file (size, encoding, YAML, schema); RecordError otherwise. Every writer of records
    (import, new, enrich, fmt) calls this before writing, so nothing writes a file that
    validation then rejects."""
    name = str(path)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON '\\ud800' escape
        line = text.count("\n", 0, exc.start) + 1
        code = ord(text[exc.start])
        raise RecordError(
            [Problem(name, line, f"character U+{code:04X} cannot be written as UTF-8; remove it")]
        ) from None
    return parse_record(decode_text(data, name), name, stem=path.stem)[0]


def parse_yaml(text: str, name: str) -> ParsedYaml:
    """Parse one YAML document strictly; RecordError lists every structural problem."""
    problems: list[Problem] = []
    lines: dict[Loc, int] = {}
    raw: dict[Loc, str] = {}
    # A frame is [container, loc, pending key]; a mapping frame waits for a key, then a value.
    stack: list[list[Any]] = []
    root: Any = None
    documents = 0
    scalar_event, mapping_start, sequence_start = _SCALAR, _MAPPING_START, _SEQUENCE_START
    # Both YAML readers refuse these characters with a two-line error at a byte or character
    # offset (and libyaml's C reader raises UnicodeEncodeError on a lone surrogate), and they
    # disagree on tabs: name each one here, on its own line, before either reader sees the text.
    bad = _unreadable_characters(text, name) + _tab_problems(text, name)
    if bad:
        raise RecordError(sorted(bad))
    loader = _Loader(text)
    get_event = loader.get_event
    try:
        while True:
            try:
                event = get_event()
            except yaml.MarkedYAMLError as exc:
                mark = exc.problem_mark or exc.context_mark
                line = mark.line + 1 if mark is not None else 1
                what = exc.problem or exc.context or "malformed YAML"
                if exc.context and exc.problem:
                    what = f"{exc.context}, {exc.problem}"
                problems.append(Problem(name, line, f"invalid YAML: {_one_line(what)}"))
                break
            except yaml.YAMLError as exc:
                problems.append(Problem(name, 1, f"invalid YAML: {_one_line(str(exc))}"))
                break
            kind = type(event)
            # Node events (scalar, mapping or sequence start, alias) build values; the others
            # close containers or delimit documents.
            if kind is scalar_event:
                if event.implicit[0]:
                    try:
                        value: Any = _scalar(loader, event)
                    except _BadScalar as exc:
                        problems.append(Problem(name, event.start_mark.line + 1, str(exc)))
                        value = event.value
                else:
                    value = event.value
            elif kind is mapping_start:
                value = {}
            elif kind is sequence_start:
                value = []
            elif kind is _ALIAS:
                value = None
            elif kind is _MAPPING_END or kind is _SEQUENCE_END:
                stack.pop()
                continue
            elif kind is _DOCUMENT_START:
                documents += 1
                if documents > 1:
                    problems.append(
                        Problem(
                            name,
                            event.start_mark.line + 1,
                            "a record file holds one YAML document; remove this '---' and "
                            "what follows, or move it to a file of its own",
                        )
                    )
                    break
                continue
            elif kind is _STREAM_END:
                break
            else:
                continue
            line = event.start_mark.line + 1
            if event.anchor is not None:
                if kind is _ALIAS:
                    message = f"alias '*{event.anchor}' is not allowed; write the value out"
                else:
                    message = f"anchor '&{event.anchor}' is not allowed; remove it"
                problems.append(Problem(name, line, message))
            # '!' too: the parsers disagree on what it makes of an empty value.
            if kind is not _ALIAS and event.tag is not None:
                tag = str(event.tag).replace("tag:yaml.org,2002:", "!!")
                problems.append(Problem(name, line, f"tag {tag!r} is not allowed; remove it"))
            is_container = kind is mapping_start or kind is sequence_start
            if not stack:
                if kind is not mapping_start:
                    shape = "a list" if kind is sequence_start else "a single value"
                    problems.append(
                        Problem(
                            name,
                            line,
                            f"a record is a mapping of 'field: value' lines, not {shape}",
                        )
                    )
                    break
                root = value
                lines[()] = line
                stack.append([value, (), _NOKEY])
                continue
            frame = stack[-1]
            container, loc, key = frame
            if key is _NOKEY:  # only mapping frames wait for a key
                if kind is scalar_event and event.implicit[0] and event.value == "<<":
                    problems.append(
                        Problem(
                            name,
                            line,
                            "merge key '<<' is not allowed; write the fields out in this mapping",
                        )
                    )
                    frame[2] = _DROP
                elif kind is not scalar_event or not isinstance(value, str):
                    if kind is scalar_event:
                        what = f"key {event.value!r} is not text"
                    else:
                        what = "a list or mapping cannot be a key"
                    problems.append(Problem(name, line, f"{what}; keys are field names"))
                    frame[2] = _DROP
                elif value in container:
                    problems.append(
                        Problem(
                            name,
                            line,
                            f"duplicate key {value!r} (first at line {lines[(*loc, value)]}); "
                            "YAML readers keep only one of them, so merge them into one",
                        )
                    )
                    frame[2] = _DROP
                else:
                    frame[2] = value
                    lines[(*loc, value)] = line
                if is_container:
                    # Deep keys too: `a: {{{{...` kept both parsers busy for seconds.
                    if len(stack) >= MAX_DEPTH:
                        problems.append(
                            Problem(name, line, f"nested more than {MAX_DEPTH} levels deep")
                        )
                        break
                    stack.append([value, (*loc, "?"), _NOKEY if kind is mapping_start else None])
                continue
            if key is None:  # a sequence frame
                child: Loc = (*loc, len(container))
                container.append(value)
                lines[child] = line
            else:
                child = (*loc, key)
                if key is not _DROP:
                    container[key] = value
                frame[2] = _NOKEY
            if kind is scalar_event and not isinstance(value, str) and event.value:
                raw[child] = event.value
            if is_container:
                if len(stack) >= MAX_DEPTH:
                    problems.append(
                        Problem(name, line, f"nested more than {MAX_DEPTH} levels deep")
                    )
                    break
                stack.append([value, child, _NOKEY if kind is mapping_start else None])
    finally:
        loader.dispose()
    if problems:
        raise RecordError(problems)
    if root is None:
        raise RecordError(
            [
                Problem(
                    name,
                    1,
                    "file is empty; a record is a mapping of fields (see schema/template.yaml)",
                )
            ]
        )
    return ParsedYaml(root, lines, raw)


_SCALAR, _ALIAS = yaml.ScalarEvent, yaml.AliasEvent
_MAPPING_START, _MAPPING_END = yaml.MappingStartEvent, yaml.MappingEndEvent
_SEQUENCE_START, _SEQUENCE_END = yaml.SequenceStartEvent, yaml.SequenceEndEvent
_DOCUMENT_START, _STREAM_END = yaml.DocumentStartEvent, yaml.StreamEndEvent


# Plain scalars whose first character starts no implicit YAML type (int, float, bool, null,
# timestamp, ...) are text; the resolver's table is keyed by that first character.
_IMPLICIT_FIRST = frozenset(k for k in yaml.SafeLoader.yaml_implicit_resolvers if k is not None)
_TAGS: dict[str, str] = {}  # short plain scalar text -> resolved tag; field names and values repeat
_TAG = "tag:yaml.org,2002:"
_INT, _FLOAT, _TIMESTAMP = _TAG + "int", _TAG + "float", _TAG + "timestamp"
# The implicit types a record's values can have. YAML 1.1's other implicit types have no use in
# a record and no safe constructor: '=' (value) and '<<' (merge, refused as a key) are text.
_CONSTRUCTED = frozenset({_TAG + "null", _TAG + "bool", _INT, _FLOAT, _TIMESTAMP})
# No field takes a number this long; a longer one would only make int() slow or refuse it
# (Python limits decimal conversions to 4300 digits) and fill messages with digits.
MAX_NUMBER_CHARS = 100


class _BadScalar(Exception):
    """A plain scalar that YAML reads as a number or date but that is not a valid one."""


def _scalar(loader: Any, event: Any) -> Any:
    """The value of a plain scalar (quoted and block scalars are always text)."""
    value = event.value
    if value and value[0] not in _IMPLICIT_FIRST:
        return value
    tag = _TAGS.get(value)
    if tag is None:
        tag = loader.resolve(yaml.ScalarNode, value, (True, False))
        if len(value) <= 64 and len(_TAGS) < 50_000:
            _TAGS[value] = tag
    if tag not in _CONSTRUCTED:
        return value
    what = "date" if tag == _TIMESTAMP else "number"
    if tag != _TIMESTAMP and len(value) > MAX_NUMBER_CHARS:
        raise _BadScalar(
            f"number {value[:12]}... is {len(value)} characters long; no field takes a number "
            f"over {MAX_NUMBER_CHARS} characters (quote it if it is text)"
        )
    try:
        return loader.yaml_constructors[tag](loader, yaml.ScalarNode(tag, value))
    except Exception:  # PyYAML's constructors on hostile text: any failure means "not valid"
        raise _BadScalar(
            f"{value!r} is read as a {what} but is not a valid {what}; quote it if it is text"
        ) from None


_UNREADABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]"
)
_LINE_BREAKS = {"\x85": "next line", "\u2028": "line separator", "\u2029": "paragraph separator"}


def _unreadable_characters(text: str, name: str) -> list[Problem]:
    """The first character on each line that YAML refuses, reads as a hidden line break, or
    reads differently with libyaml and with PyYAML."""
    problems: list[Problem] = []
    line, counted, last_line = 1, 0, 0
    for match in _UNREADABLE.finditer(text):
        start = match.start()
        line += text.count("\n", counted, start)  # counted on from the last match: linear
        counted = start
        if line == last_line:
            continue
        last_line = line
        column = start - (text.rfind("\n", 0, start) + 1) + 1
        char = match.group()
        code = f"U+{ord(char):04X}"
        if char in _LINE_BREAKS:
            message = (
                f"character {code} ({_LINE_BREAKS[char]}) at column {column} is read as a line "
                "break by YAML; delete it, or use an ordinary line break"
            )
        elif char == "\ufeff":  # libyaml skips it at the start of a line, PyYAML keeps it
            message = (
                f"character {code} (byte-order mark) at column {column} is read differently by "
                "YAML readers; delete it"
            )
        elif "\ud800" <= char <= "\udfff":
            message = f"character {code} (a lone surrogate) at column {column}; delete it"
        else:
            message = (
                f"control character {code} at column {column} is not allowed in a record; delete it"
            )
        problems.append(Problem(name, line, message))
    return problems


def _one_line(text: str) -> str:
    """`text` with each run of whitespace (line breaks included) as one space."""
    return " ".join(text.split())


# --- pydantic errors to lines -----------------------------------------------------------------


def _label(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_YAML_TYPES = {bool: "true/false", int: "a number", float: "a number", type(None): "nothing"}


def _describe_input(value: Any, raw: str | None) -> str:
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "an empty value"
    shown = raw if raw is not None else str(value)
    return f"{_YAML_TYPES.get(type(value), type(value).__name__)} {shown}"


def _message(error: Mapping[str, Any], parsed: ParsedYaml) -> str:
    loc: tuple[Any, ...] = error["loc"]
    kind = error["type"]
    value = error.get("input")
    label = _label(loc)
    raw = parsed.raw.get(loc)
    fields = list(Source.model_fields if len(loc) > 1 and loc[0] == "sources" else FIELD_NAMES)
    if kind == "missing":
        where = f"{_label(loc[:-1])}: " if len(loc) > 1 else ""
        return f"{where}missing required field {loc[-1]!r}"
    if kind == "extra_forbidden":
        where = f"{_label(loc[:-1])}: " if len(loc) > 1 else ""
        return f"{where}unknown field {loc[-1]!r}{did_you_mean(str(loc[-1]), fields)}"
    if kind == "enum":
        values = [member.value for member in ENUM_FIELDS[str(loc[0])]]
        return f"{loc[0]} {value!r} is not one of {', '.join(values)}{did_you_mean(value, values)}"
    if kind == "string_type":
        hint = f"; quote it: '{raw}'" if raw is not None and value is not None else ""
        return f"{label}: expected text, got {_describe_input(value, raw)}{hint}"
    if kind in ("int_type", "int_parsing"):
        return f"{label}: expected a whole number such as 2023, got {_describe_input(value, raw)}"
    if kind == "bool_type":
        return f"{label}: expected true or false, got {_describe_input(value, raw)}"
    if kind == "list_type":
        # The value itself makes the example, unless it is long or would break the line.
        short = isinstance(value, str) and len(value) <= 60 and value.isprintable()
        example = value if short else "value"
        return (
            f"{label}: expected a list, got {_describe_input(value, raw)}; write each item on "
            f"its own line as '- {example}'"
        )
    if kind in ("model_type", "dict_type"):
        return f"{label}: expected a mapping of 'field: value', got {_describe_input(value, raw)}"
    if kind == "too_short":
        return f"{label}: give at least one value"
    if kind in ("string_too_long", "too_long") and isinstance(value, str):
        limit = error.get("ctx", {}).get("max_length")
        return (
            f"{label}: is {len(value)} characters; keep it to {limit} or fewer "
            "(one to three sentences)"
        )
    if kind == "greater_than_equal":
        return f"{label}: must be {error['ctx']['ge']} or more, got {value!r}"
    # Our own field types (model._typed) raise complete messages.
    return f"{label}: {error['msg']}" if label else str(error["msg"])


def problems_from_validation(exc: ValidationError, name: str, parsed: ParsedYaml) -> list[Problem]:
    """One Problem per pydantic error, each at the line of the field it is about."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        if error["type"] == "record_rules":
            for loc, message in error["ctx"]["problems"]:
                problems.append(Problem(name, parsed.line(loc), message))
            continue
        problems.append(Problem(name, parsed.line(error["loc"]), _message(error, parsed)))
    return sorted(problems)


# --- records ----------------------------------------------------------------------------------


def parse_record(text: str, name: str, stem: str | None = None) -> tuple[Paper, ParsedYaml]:
    """Validate YAML text as a record; `stem` (the file name's) must equal the id when given."""
    parsed = parse_yaml(text, name)
    try:
        paper = Paper.model_validate(parsed.data, context={"stem": stem})
    except ValidationError as exc:
        raise RecordError(problems_from_validation(exc, name, parsed)) from None
    return paper, parsed


def load_record(path: Path) -> Paper:
    """The record in `path`, or RecordError with every problem found."""
    return parse_record(read_text(path), str(path), stem=path.stem)[0]


def dump_record(paper: Paper) -> str:
    """The canonical text of a record: schema comment, then fields in model order."""
    data = paper.model_dump(mode="json", exclude_defaults=True)
    if "sources" in data:
        for source in data["sources"]:
            if "fields" in source:
                source["fields"] = _FlowList(source["fields"])
    body = yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=YAML_WIDTH,
        indent=2,
    )
    return SCHEMA_COMMENT + body


def write_record(paper: Paper, directory: Path) -> Path:
    """Write a record to `<directory>/<id>.yaml` atomically; returns the path."""
    path = directory / f"{paper.id}.yaml"
    write_text_atomic(path, dump_record(paper))
    return path


class _FlowList(list[Any]):
    """A list written inline (`[a, b]`), for short lists of names."""


class _Dumper(yaml.SafeDumper):
    """The pure-Python dumper: its output is the same whether or not libyaml is present."""


_Dumper.add_representer(
    _FlowList,
    lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True),
)


def record_paths(directory: Path) -> list[Path]:
    """The record files of a papers directory, sorted by name; RecordError when it cannot be
    listed. Entries are not checked to be files here: reading one that is not reports it."""
    return [directory / e.name for e in directory_entries(directory) if is_record_name(e.name)]


def misnamed_files(directory: Path) -> Iterator[Problem]:
    """Files in a papers directory that look like records but would be ignored."""
    for entry in directory_entries(directory):
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                continue
        except OSError:  # unreadable or gone: no file to rename either way
            continue
        path = Path(entry.path)
        if path.suffix in (".yml", ".YAML", ".YML"):
            yield Problem(
                str(path), 1, f"records use the .yaml extension; rename to {path.stem + '.yaml'!r}"
            )
        elif path.suffix != ".yaml" and re.match(r"^[a-z0-9-]+$", path.stem):
            yield Problem(
                str(path), 1, "not a record (records are <id>.yaml); move it out of papers/"
            )
