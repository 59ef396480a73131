"""The `atlas` command. `atlas build`'s flags are derived from `BuildConfig`'s fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from pathlib import Path

from atlas.config import BuildConfig, config_fields
from atlas.errors import AtlasError

log = logging.getLogger("atlas")


def _parse_tuple(item: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(item(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                              f"{item.__name__}, got {text!r}") from None
    return parse


def _flag_options(hint) -> dict:
    """argparse keyword arguments for a dataclass field's type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return _flag_options(inner)
    if origin is tuple:
        return {"type": _parse_tuple(args[0]), "metavar": f"{args[0].__name__.upper()},..."}
    if origin is typing.Literal:
        return {"choices": list(args)}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": hint}


def add_config_flags(parser: argparse.ArgumentParser, cls: type = BuildConfig) -> None:
    """One flag per config field, with the field's docstring as help."""
    hints = typing.get_type_hints(cls)
    for name, default, doc in config_fields(cls):
        opts = _flag_options(hints[name])
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=default,
                            help=f"{doc} (default: {shown})", **opts)


def config_from_args(args: argparse.Namespace, cls: type = BuildConfig):
    """Build the config dataclass from parsed arguments."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas", description="Feature Atlas: SAE features "
                                     "of a language model in DuckDB.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="harvest a model's SAE features into the atlas")
    add_config_flags(p)
    p.add_argument("--prefect", action="store_true",
                   help="run as the Prefect flow (flows/build.py) instead of in-process")

    p = sub.add_parser("info", help="what the atlas holds: model, layers, SAEs, quality, counts")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("sql", help="run one read-only SQL query against the atlas")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("query", help="one SELECT statement")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows")
    return parser


def cmd_build(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.prefect:
        from flows.build import build_flow

        result = build_flow(config)
    else:
        from atlas.builder import build

        result = build(config)
    print(f"built {result.db}: {result.model_id}, {len(result.sae_ids)} SAEs, "
          f"{result.n_tokens:,} tokens in {result.seconds:.0f}s")
    print(f"next: atlas info --db {result.db}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from atlas.info import atlas_info, format_info

    info = atlas_info(args.db)
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from atlas.readonly import open_readonly, run_query

    con = open_readonly(args.db)
    try:
        table = run_query(con, args.query, limit=args.limit)
    finally:
        con.close()
    frame = table.to_pandas()
    if args.format == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(frame.to_json(orient="records", default_handler=str))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.width", 200,
                               "display.max_colwidth", 60):
            print(frame.to_string(index=False) if len(frame) else "(no rows)")
    return 0


COMMANDS = {"build": cmd_build, "info": cmd_info, "sql": cmd_sql}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except AtlasError as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
