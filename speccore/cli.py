"""The `speccore` command: models (pull, list); sql, report and advise over run outputs.

Jobs themselves run through the Prefect flow: `python -m flows.generate [hydra overrides]`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def _print_table(table, out=sys.stdout, max_width: int = 60) -> None:
    cols = table.column_names
    rows = [["" if v is None else str(v) for v in r.values()] for r in table.to_pylist()]
    cut = lambda s: s if len(s) <= max_width else s[: max_width - 1] + "…"  # noqa: E731
    rows = [[cut(v.replace("\n", "\\n")) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)), file=out)
    print(f"({len(rows)} rows)", file=out)


def cmd_models(args) -> int:
    from . import models

    if args.action == "pull":
        for name in args.names:
            path = models.pull(name, cache=args.cache, dtype=args.dtype, force=args.force)
            print(path)
        return 0
    for m in models.list_models(cache=args.cache):
        size = m.get("size") or 0
        print(f"{m['name']:<32} {m['state']:<10} {size / 2**20:>9.1f} MiB  {m.get('path') or ''}")
    return 0


def cmd_sql(args) -> int:
    from . import analytics

    if args.list:
        for name, sql in sorted(analytics.named_queries().items()):
            first = next((ln[2:].strip() for ln in sql.splitlines() if ln.startswith("--")), "")
            print(f"{name:<28} {first}")
        return 0
    if not args.query:
        print("speccore sql: give a query or a named query (see --list)", file=sys.stderr)
        return 2
    params = dict(p.split("=", 1) for p in args.param)
    table = analytics.query(args.query, args.data, params)
    if args.csv:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, args.csv)
    elif args.parquet:
        import pyarrow.parquet as pq

        pq.write_table(table, args.parquet)
    else:
        _print_table(table)
    return 0


def cmd_report(args) -> int:
    from . import report

    try:
        path = report.write_report(args.data, args.run_ids, args.out)
    except ValueError as e:
        print(f"speccore report: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_advise(args) -> int:
    from . import advise

    print(advise.render(advise.rankings(args.data, args.dataset), args.data, args.dataset))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="speccore", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="pull or list catalog models")
    m.add_argument("action", choices=["pull", "list"])
    m.add_argument("names", nargs="*")
    m.add_argument("--cache", default=None, help="model cache dir (default: $SPECCORE_CACHE or ~/.cache/speccore)")
    m.add_argument("--dtype", default="float32")
    m.add_argument("--force", action="store_true", help="rebuild even when the cache looks valid")
    m.set_defaults(func=cmd_models)
    q = sub.add_parser("sql", help="SQL over run outputs (views: generations, steps, runs)")
    q.add_argument("query", nargs="?", help="SQL text, or the name of a shipped query")
    q.add_argument("--data", default="data", help="output dir of the runs (default: data)")
    q.add_argument("--param", action="append", default=[], help="name=value for $name in a query")
    q.add_argument("--csv", help="write the result as CSV here")
    q.add_argument("--parquet", help="write the result as Parquet here")
    q.add_argument("--list", action="store_true", help="list the shipped named queries")
    q.set_defaults(func=cmd_sql)
    r = sub.add_parser("report", help="one self-contained HTML report (inline SVG plots) comparing runs")
    r.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    r.add_argument("--data", default="data", help="output dir of the runs (default: data)")
    r.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    r.set_defaults(func=cmd_report)
    a = sub.add_parser("advise", help="rank (drafter, algorithm, lookahead) by cost per 1M output tokens")
    a.add_argument("--data", default="data", help="output dir of the runs (default: data)")
    a.add_argument("--dataset", help="only this dataset (a label such as humaneval or file:x.jsonl, or a kind)")
    a.set_defaults(func=cmd_advise)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `speccore sql ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
