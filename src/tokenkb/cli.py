"""The `kb` command line: parse arguments, call one library function, print, return an exit code.

Exit codes: 0 success, 1 problems found (invalid records, stale files), 2 usage errors.
Imports of the heavier modules happen inside the commands, so `kb query` on a warm cache never
loads pydantic.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .problems import Problem
    from .sources.arxiv import ArxivClient

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def find_papers(start: Path | None = None) -> Path:
    """`$TOKENKB_PAPERS`, else the nearest `papers/` directory at or above the working directory."""
    if os.environ.get("TOKENKB_PAPERS"):
        return Path(os.environ["TOKENKB_PAPERS"])
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "papers").is_dir():
            return directory / "papers"
    return Path("papers")


def _papers(args: argparse.Namespace) -> Path:
    """The papers directory, after finishing whatever an interrupted writer left in it."""
    from .outputs import recover

    papers = Path(args.papers) if args.papers else find_papers()
    if os.path.isdir(papers):  # never raises, unlike Path.is_dir on an unreadable parent
        for line in recover(papers):
            print(f"kb: {line}", file=sys.stderr)
    return papers


def _print_problems(problems: Sequence[Problem], files: int, stream: Any = None) -> None:
    from .outputs import fault

    out = stream or sys.stdout
    for problem in problems:
        print(problem, file=out)
        fault("print:problem")  # test hook: hold here to interrupt a command mid-output
    paths = len({p.path for p in problems})
    print(
        f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {paths} of {files} "
        f"file{'s' if files != 1 else ''}",
        file=sys.stderr,
    )


# --- commands ---------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate

    paths = [Path(p) for p in args.paths] or [_papers(args)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"kb validate: no such file or directory: {missing[0]}", file=sys.stderr)
        return EXIT_USAGE
    report = validate(paths, jobs=args.jobs)
    if report.problems:
        _print_problems(report.problems, report.files)
        return EXIT_PROBLEMS
    print(f"{report.files} record{'s' if report.files != 1 else ''} valid", file=sys.stderr)
    return EXIT_OK


def cmd_fmt(args: argparse.Namespace) -> int:
    from .canonical import format_paths

    paths = [Path(p) for p in args.paths] or [_papers(args)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"kb fmt: no such file or directory: {missing[0]}", file=sys.stderr)
        return EXIT_USAGE
    result = format_paths(paths, check=args.check)
    for problem in result.problems:
        print(problem)
    for path in result.changed if not args.check else []:
        print(f"reformatted {path}", file=sys.stderr)
    verb = "would reformat" if args.check else "reformatted"
    print(
        f"{result.files} files: {len(result.changed)} {verb}, {len(result.invalid)} invalid",
        file=sys.stderr,
    )
    if result.invalid or (args.check and result.changed):
        return EXIT_PROBLEMS
    return EXIT_OK


def cmd_query(args: argparse.Namespace) -> int:
    from .cache import load_records
    from .formats import RENDERERS, to_table
    from .problems import RecordError
    from .query import FilterError, Filters, check_filters, select

    training_free = True if args.training_free else False if args.needs_training else None
    filters = Filters(
        modality=args.modality or (),
        family=args.family or (),
        kind=args.kind or (),
        training_free=training_free,
        year=args.year or (),
        since=args.since,
        venue=args.venue or (),
        has_code=args.has_code,
        has_impl=args.has_impl,
        search=args.search,
    )
    try:
        check_filters(filters)
    except FilterError as exc:
        print(f"kb query: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        records = load_records(_papers(args), use_cache=not args.no_cache)
    except RecordError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("kb query: fix the records above first (kb validate shows them all)", file=sys.stderr)
        return EXIT_PROBLEMS
    selected = select(records, filters)
    if args.format == "table":
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        sys.stdout.write(to_table(selected, width))
    else:
        sys.stdout.write(RENDERERS[args.format](selected))
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from . import importer
    from .outputs import LockTimeout, locked, write_transaction

    papers = _papers(args)
    try:
        results = [importer.read_source(Path(p), args.as_format) for p in args.paths]
        excluded = importer.load_excluded(papers.parent / "curation" / "excluded.yaml")
    except importer.ImportError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        plan = importer.plan_import(results, papers, excluded)
        return _report_import(plan, args.format, "dry run: nothing written")
    # Plan and write under one lock: a concurrent import plans against what this one wrote.
    try:
        with locked(papers):
            plan = importer.plan_import(results, papers, excluded)
            if plan.invalid:
                return _report_import(plan, args.format, None)
            written = write_transaction(papers, plan.files)
    except LockTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except OSError as exc:
        where = exc.filename or papers
        print(
            f"error: {where}: cannot write: {exc.strerror or exc}; nothing was changed",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    return _report_import(plan, args.format, f"wrote {len(written)}")


def _report_import(plan: Any, output: str, outcome: str | None) -> int:
    """Print an import plan; `outcome` is None when the plan is refused (invalid records)."""
    import json

    if output == "json":
        report = {
            "entries": [p.as_json() for p in plan.planned],
            "unparsed": [
                {"source": s, "line": u.line, "text": u.text, "reason": u.reason}
                for s, u in plan.unparsed
            ],
            "skipped": [
                {"source": s, "line": u.line, "text": u.text, "reason": u.reason}
                for s, u in plan.skipped
            ],
            "conflicts": [
                {"kind": c.kind, "between": list(c.keys), "message": c.message}
                for c in plan.conflicts
            ],
            "invalid": [str(p) for p in plan.invalid],
        }
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for source, u in plan.unparsed:
            print(f"{source}:{u.line}: not imported: {u.reason}")
        for c in plan.conflicts:
            print(f"conflict: {c.message}")
        for planned in plan.planned:
            for problem in [*planned.entry.problems, *planned.problems]:
                print(f"{planned.entry.source}:{planned.entry.line}: {problem}")
    counts = plan.counts()
    summary = (
        f"{sum(counts.values())} entries: {counts.get('new', 0)} new, {counts.get('merge', 0)} "
        f"merged, {counts.get('skip', 0)} skipped; {len(plan.unparsed)} lines unparsed; "
        f"{len(plan.conflicts)} conflicts; {len(plan.files)} files to write"
    )
    if outcome is None or plan.invalid:
        for invalid in plan.invalid:
            print(invalid, file=sys.stderr)
        print(f"{summary}\nnothing written: the plan would leave invalid records", file=sys.stderr)
        return EXIT_PROBLEMS
    separator = " " if outcome.startswith("dry") else "; "
    shown = f"({outcome})" if outcome.startswith("dry") else outcome
    print(f"{summary}{separator}{shown}", file=sys.stderr)
    return EXIT_OK


def cmd_dedupe(args: argparse.Namespace) -> int:
    import json

    from .dedupe import ID_KINDS, Item, find_duplicates
    from .validate import validate

    report = validate([_papers(args)], keep_records=True)
    if report.problems:
        _print_problems(report.problems, report.files)
        return 1
    records = sorted(report.records, key=lambda r: str(r["id"]))
    items = [
        Item(r["id"], r["title"], {k: r[k] for k in ID_KINDS if r.get(k)}, r.get("aliases", []))
        for r in records
    ]
    groups = find_duplicates(items)
    duplicates = [
        {
            "ids": [records[i]["id"] for i in group],
            "evidence": [
                why for (a, b), why in groups.evidence.items() if a in group and b in group
            ],
        }
        for group in groups.groups
        if len(group) > 1
    ]
    conflicts = [
        {"kind": c.kind, "between": list(c.keys), "message": c.message} for c in groups.conflicts
    ]
    if args.format == "json":
        print(json.dumps({"duplicates": duplicates, "conflicts": conflicts}, indent=2))
    else:
        for dup in duplicates:
            print(f"duplicates: {', '.join(dup['ids'])} ({'; '.join(dup['evidence'])})")
        for conflict in conflicts:
            print(f"conflict: {conflict['message']}")
    print(
        f"{len(records)} records: {len(duplicates)} likely duplicates, {len(conflicts)} conflicts",
        file=sys.stderr,
    )
    return 1 if duplicates or conflicts else 0


def cmd_render(args: argparse.Namespace) -> int:
    from .outputs import LockTimeout
    from .problems import RecordError
    from .render import check_generated, write_generated

    root = _papers(args).resolve().parent
    try:
        if args.check:
            diffs = check_generated(root)
            for diff in diffs:
                sys.stdout.write(diff)
            if diffs:
                print(f"{len(diffs)} generated file(s) stale; run 'kb render'", file=sys.stderr)
                return EXIT_PROBLEMS
            print("generated files are up to date", file=sys.stderr)
            return EXIT_OK
        written = write_generated(root)
    except RecordError as exc:
        _print_problems(exc.problems, len({p.path for p in exc.problems}))
        return EXIT_PROBLEMS
    except LockTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except OSError as exc:
        print(f"error: {exc.filename or root}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    import time

    from .outputs import LockTimeout
    from .render import BuildError, build_site, write_generated
    from .summary import summarize
    from .validate import validate

    papers = _papers(args)
    root = papers.resolve().parent
    start = time.perf_counter()
    steps = 2 if args.no_site else 5

    def progress(step: int, message: str) -> None:
        print(f"[{step}/{steps}] {message} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)

    progress(1, f"validating {papers}")
    report = validate([papers], keep_records=True, jobs=args.jobs)
    if report.problems:
        _print_problems(report.problems, report.files)
        return EXIT_PROBLEMS
    records = sorted(report.records, key=lambda r: str(r["id"]))
    progress(2, "rendering generated files (schema, awesome/)")
    names = iter(range(3, 6))
    try:
        for path in write_generated(root, records):
            print(f"      wrote {path}", file=sys.stderr)
        if not args.no_site:
            site = build_site(root, records, lambda message: progress(next(names), message))
            print(f"      site in {site} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    except (BuildError, LockTimeout) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except OSError as exc:
        print(f"error: {exc.filename or root}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    sys.stdout.write(summarize(records))
    return EXIT_OK


def cmd_impls(args: argparse.Namespace) -> int:
    import json

    try:
        from reference_impls.registry import discover
    except ImportError as exc:
        print(
            f"kb impls: the reference implementations need torch ({exc.name} is missing): "
            "pip install torch==2.13.0",
            file=sys.stderr,
        )
        return EXIT_USAGE
    impls = discover()
    rows = [
        {
            "name": impl.name,
            "module": impl.module,
            "papers": list(impl.papers),
            "family": impl.family,
            "training_free": impl.training_free,
            "arxiv": impl.arxiv,
            "test_file": impl.test_file,
            "title": impl.title,
            "simplified": impl.simplified,
        }
        for impl in impls
    ]
    if args.format == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    header = ("NAME", "FAMILY", "TF", "PAPERS", "MODULE")
    table = [
        (i.name, i.family, "yes" if i.training_free else "no", ",".join(i.papers) or "-", i.module)
        for i in impls
    ]
    widths = [max([len(h)] + [len(row[n]) for row in table]) for n, h in enumerate(header)]
    for row in [header, *table]:
        print("  ".join(cell.ljust(widths[n]) for n, cell in enumerate(row)).rstrip())
    print(f"{len(rows)} implementations")
    return EXIT_OK


def cmd_vocab(args: argparse.Namespace) -> int:
    import json

    from .taxonomy import MEANINGS, VENUES

    vocabularies = {enum.__name__.lower(): meanings for enum, meanings in MEANINGS.items()}
    if args.format == "json":
        print(json.dumps({**vocabularies, "venue": list(VENUES)}, indent=2))
        return EXIT_OK
    for name, meanings in vocabularies.items():
        print(f"{name}:")
        width = max(len(v) for v in meanings)
        for value, meaning in meanings.items():
            print(f"  {value:<{width}}  {meaning}")
    print("venue: '<NAME> <YEAR>' (+ ' Workshop' / ' Findings') or 'arXiv', NAME one of:")
    print("  " + ", ".join(VENUES))
    return EXIT_OK


def _arxiv_client() -> ArxivClient:
    """The real arXiv API client (network); tests replace this to replay recorded responses."""
    from .sources.arxiv import ArxivClient

    return ArxivClient()


def cmd_new(args: argparse.Namespace) -> int:
    from .scaffold import ScaffoldError, create_record, find_arxiv, new_record
    from .sources.arxiv import ArxivError, InvalidArxivId, parse_arxiv_id

    try:
        arxiv_id = parse_arxiv_id(args.arxiv)
    except InvalidArxivId as exc:
        print(f"kb new: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    papers = _papers(args)
    if not papers.is_dir():
        print(
            f"kb new: no papers directory at {papers}; run inside the repository or pass "
            "--papers DIR",
            file=sys.stderr,
        )
        return EXIT_USAGE
    existing = find_arxiv(papers, arxiv_id)  # before any request: no needless network call
    if existing is not None:
        print(f"kb new: {existing} already has arXiv {arxiv_id}; edit that record", file=sys.stderr)
        return EXIT_PROBLEMS
    try:
        meta = _arxiv_client().fetch(arxiv_id)
    except ArxivError as exc:
        print(f"kb new: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.dry_run:
            path, text = new_record(meta, papers, modality=args.modality, kind=args.kind)
            sys.stdout.write(text)
            print(f"would write {path}", file=sys.stderr)
            return EXIT_OK
        # Planned again under the lock: a concurrent kb new or import may have taken the id.
        path = create_record(meta, papers, modality=args.modality, kind=args.kind)
    except ScaffoldError as exc:
        print(f"kb new: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(path)
    print(
        "arXiv cannot say the rest: add family, training_free (methods), summary and code "
        "where you can verify them (kb vocab lists the values), then run kb validate",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_enrich(args: argparse.Namespace) -> int:
    from .problems import RecordError
    from .scaffold import apply_changes, enrich, load_stored
    from .sources.arxiv import ArxivError
    from .validate import collect_paths

    paths = [Path(p) for p in args.paths] or [_papers(args)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"kb enrich: no such file or directory: {missing[0]}", file=sys.stderr)
        return EXIT_USAGE
    files, problems = collect_paths(paths)
    records = []
    for path in files:
        try:
            records.append(load_stored(path))
        except RecordError as exc:
            problems.extend(exc.problems)
    if problems:
        for problem in sorted(problems):
            print(problem)
        print(
            "kb enrich: fix the records above first (kb validate shows them all)", file=sys.stderr
        )
        return EXIT_PROBLEMS
    try:
        plan = enrich(records, _arxiv_client())
    except ArxivError as exc:
        print(f"kb enrich: {exc}", file=sys.stderr)
        return EXIT_USAGE
    changes, problems, error = plan.changes, plan.problems, None
    if not args.dry_run:
        applied = apply_changes(plan.changes)  # under the lock, each file read again first
        changes, error = applied.written, applied.error
        problems = sorted(problems + applied.skipped)
    verb = "would fill" if args.dry_run else "filled"
    for change in changes:
        print(f"{change.path}: {verb} {', '.join(change.fields)} from arXiv {change.arxiv_id}")
        if args.dry_run:
            sys.stdout.write(change.diff())
    for problem in problems:
        print(problem)
    count = len(problems)
    print(
        f"{plan.asked} record{'s' if plan.asked != 1 else ''} with an arXiv id: "
        f"{len(changes)} {verb}, {count} problem{'s' if count != 1 else ''}",
        file=sys.stderr,
    )
    if error is not None:
        print(f"kb enrich: {error}", file=sys.stderr)
    return EXIT_PROBLEMS if problems or error is not None else EXIT_OK


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kb",
        description="tokenkb: the knowledge base of token-reduction research.",
    )
    parser.add_argument(
        "--papers",
        metavar="DIR",
        help="records directory (default: $TOKENKB_PAPERS, else the nearest papers/ above here)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    jobs_help = "worker processes for large sets (default: one per core)"

    sub = add("validate", cmd_validate, "Check records; print 'path:line: message' per problem.")
    sub.add_argument(
        "paths", nargs="*", metavar="PATH", help="files or directories (default: papers/)"
    )
    sub.add_argument("--jobs", type=int, metavar="N", help=jobs_help)

    sub = add("fmt", cmd_fmt, "Rewrite records in canonical form (or check that they are).")
    sub.add_argument(
        "paths", nargs="*", metavar="PATH", help="files or directories (default: papers/)"
    )
    sub.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file would change"
    )

    sub = add("query", cmd_query, "Select records by field and print them.")
    sub.add_argument(
        "--modality",
        action="append",
        metavar="M",
        help="vision, video, language, vlm, ... (repeatable: any of)",
    )
    sub.add_argument(
        "--family",
        action="append",
        metavar="F",
        help="pruning, merging, kv-eviction, ... (repeatable: any of)",
    )
    sub.add_argument(
        "--kind",
        action="append",
        metavar="K",
        help="method, survey, benchmark, ... (repeatable: any of)",
    )
    free = sub.add_mutually_exclusive_group()
    free.add_argument(
        "--training-free", action="store_true", help="methods usable without any training"
    )
    free.add_argument(
        "--needs-training", action="store_true", help="methods that need training or fine-tuning"
    )
    years = sub.add_mutually_exclusive_group()
    years.add_argument(
        "--year", type=int, action="append", metavar="Y", help="first public in year Y (repeatable)"
    )
    years.add_argument("--since", type=int, metavar="Y", help="first public in year Y or later")
    sub.add_argument(
        "--venue", action="append", metavar="V", help="'ICLR' or 'ICLR 2023' (repeatable: any of)"
    )
    sub.add_argument(
        "--has-code", action="store_true", help="only works with an official code link"
    )
    sub.add_argument(
        "--has-impl", action="store_true", help="only works with a reference implementation"
    )
    sub.add_argument(
        "--search",
        metavar="TEXT",
        help="words that must all occur in title, aliases, authors, summary or id",
    )
    sub.add_argument(
        "--format",
        choices=("table", "json", "yaml", "bibtex", "md"),
        default="table",
        help="output format (default: table)",
    )
    sub.add_argument(
        "--no-cache",
        action="store_true",
        help="re-read every file instead of using the record cache",
    )

    sub = add(
        "import", cmd_import, "Import a source list: match entries, write new/merged records."
    )
    sub.add_argument("paths", nargs="+", metavar="PATH", help="source files (.md, .txt, .bib)")
    sub.add_argument(
        "--as", dest="as_format", choices=["awesome", "structured", "citations", "bibtex"],
        help="the format, when it cannot be detected",
    )  # fmt: skip
    sub.add_argument("--dry-run", action="store_true", help="change nothing; print the plan")
    sub.add_argument("--format", choices=["text", "json"], default="text", help="report format")

    sub = add("dedupe", cmd_dedupe, "Report likely duplicate records, with the evidence.")
    sub.add_argument("--format", choices=["text", "json"], default="text", help="report format")

    sub = add("render", cmd_render, "Regenerate generated files (the JSON Schema, ...).")
    sub.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 with a diff if anything is stale",
    )

    sub = add(
        "build",
        cmd_build,
        "The main job: validate, regenerate awesome/, build the site into site/, summarise.",
    )
    sub.add_argument("--jobs", type=int, metavar="N", help=jobs_help)
    sub.add_argument(
        "--no-site", action="store_true", help="stop after the committed generated files"
    )

    sub = add("impls", cmd_impls, "List the reference implementations (reference_impls/).")
    sub.add_argument("--format", choices=("table", "json"), default="table", help="output format")

    sub = add(
        "vocab", cmd_vocab, "List the controlled vocabularies with the meaning of each value."
    )
    sub.add_argument("--format", choices=("table", "json"), default="table", help="output format")

    from .taxonomy import Kind, Modality

    sub = add("new", cmd_new, "Scaffold a record from an arXiv paper's metadata (network).")
    sub.add_argument(
        "--arxiv",
        required=True,
        metavar="ID",
        help="arXiv id: '2210.09461', 'arXiv:2210.09461v2' or an abs/pdf URL",
    )
    sub.add_argument(
        "--modality",
        action="append",
        required=True,
        choices=[m.value for m in Modality],
        metavar="M",
        help="what the work applies to (arXiv cannot say; repeatable): "
        + ", ".join(m.value for m in Modality),
    )
    sub.add_argument(
        "--kind",
        choices=[k.value for k in Kind],
        default=Kind.METHOD.value,
        metavar="K",
        help="method (default), survey, benchmark, analysis, system, thesis or blog",
    )
    sub.add_argument(
        "--dry-run", action="store_true", help="write nothing; print the record's YAML"
    )

    sub = add(
        "enrich",
        cmd_enrich,
        "Fill empty fields (authors, doi, paper) of records with an arXiv id from arXiv "
        "(network); report where records disagree with arXiv.",
    )
    sub.add_argument(
        "paths", nargs="*", metavar="PATH", help="files or directories (default: papers/)"
    )
    sub.add_argument(
        "--dry-run", action="store_true", help="write nothing; print the plan and a diff"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .stdio import tolerate_closed_pipes

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # `kb validate | head -1`: once the reader has gone, output is dropped and the command
        # still returns the exit code it computed (1 when it found problems).
        with tolerate_closed_pipes():
            return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
