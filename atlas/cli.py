"""The `atlas` command. `atlas build`'s flags are derived from `BuildConfig`'s fields."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from atlas import allocator, analyses
from atlas.config import BuildConfig, config_fields
from atlas.errors import AtlasError, from_io_error

log = logging.getLogger("atlas")


def _parse_tuple(item: type):
    """Parser of a comma-separated list; integer lists also take ranges ('0-25')."""
    def one(x: str) -> list:
        if item is int and "-" in x.strip()[1:]:
            lo, hi = x.split("-", 1)
            return list(range(int(lo), int(hi) + 1))
        return [item(x)]

    def parse(text: str) -> tuple:
        try:
            return tuple(v for x in text.split(",") if x.strip() for v in one(x.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                              f"{item.__name__}, got {text!r}") from None
    return parse


class _Extend(argparse.Action):
    """A list flag that may be repeated: each use adds its items; the first replaces the
    default."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = f"_{self.dest}_given"
        current = getattr(namespace, self.dest) if getattr(namespace, given, False) else ()
        setattr(namespace, self.dest, tuple(current) + tuple(values))
        setattr(namespace, given, True)


def _flag_options(hint) -> dict:
    """argparse keyword arguments for a dataclass field's type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return _flag_options(inner)
    if origin is tuple:
        return {"type": _parse_tuple(args[0]), "metavar": f"{args[0].__name__.upper()},...",
                "action": _Extend}
    if origin is typing.Literal:
        return {"choices": list(args)}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": hint}


def add_config_flags(parser: argparse.ArgumentParser, cls: type = BuildConfig, *,
                     prefix: str = "") -> None:
    """One flag per config field (`--{prefix}{field}`), with the field's docstring as help."""
    hints = typing.get_type_hints(cls)
    for name, default, doc in config_fields(cls):
        opts = _flag_options(hints[name])
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        # argparse %-formats help text: a docstring's '99%' must reach it as '99%%'
        text = f"{doc} (default: {shown})".replace("%", "%%")
        parser.add_argument("--" + (prefix + name).replace("_", "-"), dest=prefix + name,
                            default=default, help=text, **opts)


def config_from_args(args: argparse.Namespace, cls: type = BuildConfig, *, prefix: str = ""):
    """Build the config dataclass from parsed arguments."""
    return cls(**{f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)})


SHORTCUTS = analyses.commands()
"""Commands that run one analysis (its folder's COMMAND), with its settings as unprefixed
flags."""
OWN_COMMANDS = analyses.own_commands()
"""Commands of the analyses outside the runner (their folder's `command.py`)."""
ANALYSIS_COMMANDS = {"analyze", *SHORTCUTS, *OWN_COMMANDS}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `atlas` parser; analysis settings become flags only for the command that runs
    them (`command`), so other commands start without importing the analyses."""
    parser = argparse.ArgumentParser(prog="atlas", allow_abbrev=False,
                                     description="Feature Atlas: SAE features "
                                     "of a language model in DuckDB.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # No abbreviated flags: `--b` must not silently mean `--blocks`.
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(  # type: ignore[call-overload]
                                    argparse.ArgumentParser, allow_abbrev=False))

    p = sub.add_parser("build", help="harvest a model's SAE features into the atlas")
    add_config_flags(p)
    p.add_argument("--prefect", action="store_true",
                   help="run as the Prefect flow (atlas.flows.build) instead of in-process")

    p = sub.add_parser("info", help="what the atlas holds: model, layers, SAEs, quality, counts")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("sql", help="run one read-only SQL query against the atlas")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("query", help="one SELECT statement")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--limit", "--max-rows", dest="limit", type=int, default=10_000,
                   help="at most this many rows (default 10000; 0: all); a cut result says so "
                   "on stderr")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="stop the query after this many seconds (default 30; 0: no limit)")
    p.add_argument("--memory-limit", default="2GB",
                   help="DuckDB memory limit for the query (default 2GB)")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")

    p = sub.add_parser("neighbors", help="features whose decoder directions are nearest a "
                       "feature's, or words nearest a word (--words)")
    _query_args(p, sae_required=False)
    p.add_argument("feature", help="feature id, or a word with --words")
    p.add_argument("--in", dest="target", help="search this SAE instead (e.g. another layer)")
    _word_args(p)

    p = sub.add_parser("analogy", help="b - a + c over feature ids, or over words (--words)")
    _query_args(p, sae_required=False)
    p.add_argument("terms", nargs=3, metavar="A B C", help="feature ids, or words with --words")
    _word_args(p)

    p = sub.add_parser("export", help="write an SAE's features in Neuronpedia's batch JSON "
                       "layout, or any table or view as Parquet")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--format", choices=["neuronpedia", "parquet"], default=None,
                   help="neuronpedia (needs --sae) or parquet (needs --table; the default "
                   "then)")
    p.add_argument("--sae", help="SAE to export (id, unique part, or L<layer>)")
    p.add_argument("--table", help="table or view to export as Parquet")
    p.add_argument("--out", type=Path, required=True,
                   help="Parquet file, or the folder for Neuronpedia's batch-<n>.json files")
    p.add_argument("--batch-size", type=int, default=128,
                   help="features per Neuronpedia batch file (default 128)")

    p = sub.add_parser("features", help="the SAE features active on each token of a text")
    _query_args(p)
    p.add_argument("text")

    p = sub.add_parser("analyze", help="run the analyses on a built atlas (default: all); "
                       "each analysis's settings are flags prefixed by its name")
    _analysis_args(p)
    p.add_argument("--analyses", type=_parse_tuple(str), default=None,
                   help="comma-separated analyses to run (default: all of them)")
    p.add_argument("--seed", type=int, default=None, help="seed of every analysis (default: "
                   "each analysis's --<name>-seed)")
    if command == "analyze":
        for m in analyses.modules():
            add_config_flags(p.add_argument_group(f"{m.NAME} (definition '{m.DEFINITION}')"),
                             m.Settings, prefix=m.NAME + "_")

    for name, analysis in SHORTCUTS.items():
        p = sub.add_parser(name, help=f"run the {analysis} analysis (atlas analyze --analyses "
                           f"{analysis}; settings as flags)")
        _analysis_args(p)
        if command == name:
            add_config_flags(p, analyses.module(analysis).Settings)

    for name, analysis in OWN_COMMANDS.items():
        p = sub.add_parser(name, help=analyses.about(analysis).HELP)
        if command == name:
            analyses.command(analysis).add_arguments(p)

    p = sub.add_parser("app", help="open the Streamlit app on the atlas (read-only)")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="localhost",
                   help="interface to listen on (0.0.0.0: every interface, as in a container)")

    p = sub.add_parser("index", help="build (or refresh) the FAISS index of every SAE")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--kind", choices=["auto", "flat", "hnsw", "ivf"], default="auto")
    p.add_argument("--json", action="store_true")
    return parser


def _analysis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--sae", type=_parse_tuple(str), default=(), action=_Extend,
                   help="SAEs to analyse (id, unique part, or L<layer>; comma-separated or "
                   "repeated); default: all")


def _word_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--words", action="store_true",
                   help="the terms are words, read at --layer from the word table beside the "
                   "atlas (computed with the model on first use)")
    p.add_argument("--layer", type=int, help="layer whose residual stream the words are read at")
    p.add_argument("--representation", default="bare",
                   choices=("bare", "bos", "eos", "li2024"),
                   help="how each word is fed: alone (bare, the default), after BOS, after the "
                   "end-of-text token, or as the geometry paper's crystal inputs (li2024)")


def _query_args(p: argparse.ArgumentParser, *, sae_required: bool = True) -> None:
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--sae", required=sae_required,
                   help="SAE id, a unique part of it, or L<layer>")
    p.add_argument("-k", "--k", type=int, default=10, help="how many results")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_build(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.prefect:
        from atlas.flows.build import run_build_flow

        result = run_build_flow(config)
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
    from atlas.readonly import Limits, open_readonly, run_query

    limits = Limits(timeout_s=args.timeout or None, max_rows=args.limit or None,
                    memory_limit=args.memory_limit, threads=args.threads,
                    how_to_raise="--timeout SECONDS, --limit N, --memory-limit SIZE")
    con = open_readonly(args.db, limits)
    try:
        result = run_query(con, args.query, limits=limits)
    finally:
        con.close()
    if result.truncated:
        print(result.note(), file=sys.stderr)
    frame = result.table.to_pandas()
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


def _print_hits(hits, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps([dataclasses.asdict(h) for h in hits], indent=1))
        return
    print(title)
    print(f"{'feature':>8} {'cosine':>7}  label")
    for h in hits:
        print(f"{h.feature:>8} {h.cosine:>7.3f}  {h.label}")


def cmd_neighbors(args: argparse.Namespace) -> int:
    from atlas import catalog, query
    from atlas.index import open_index
    from atlas.readonly import open_readonly

    if args.words:
        return _word_query(args, [args.feature])
    if not args.sae:
        raise AtlasError("give --sae for neighbours of a feature, or --words --layer L WORD")
    try:
        feature = int(args.feature)
    except ValueError:
        raise AtlasError(f"'{args.feature}' is not a feature id; add --words --layer L to "
                         "find the words nearest a word") from None
    con = open_readonly(args.db)
    try:
        sae_id = catalog.resolve_sae(con, args.sae)
        index = open_index(con, args.db, sae_id)
        target = (open_index(con, args.db, catalog.resolve_sae(con, args.target))
                  if args.target else None)
        hits = query.neighbors(con, index, feature, args.k, target=target)
    finally:
        con.close()
    where = target.meta.sae_id if target else sae_id
    _print_hits(hits, args.json, f"nearest to {sae_id} #{feature} in {where}:")
    return 0


def cmd_analogy(args: argparse.Namespace) -> int:
    from atlas import catalog, query
    from atlas.index import open_index
    from atlas.readonly import open_readonly

    if args.words:
        return _word_query(args, list(args.terms))
    if not args.sae:
        raise AtlasError("give --sae for an analogy over features, or --words --layer L")
    try:
        a, b, c = (int(t) for t in args.terms)
    except ValueError:
        raise AtlasError(f"{args.terms} are not feature ids; add --words --layer L to use "
                         "words") from None
    con = open_readonly(args.db)
    try:
        sae_id = catalog.resolve_sae(con, args.sae)
        hits = query.analogy(con, open_index(con, args.db, sae_id), a, b, c, args.k)
    finally:
        con.close()
    _print_hits(hits, args.json, f"#{b} - #{a} + #{c} in {sae_id}:")
    return 0


def _word_query(args: argparse.Namespace, terms: list[str]) -> int:
    """Word analogy (three terms) or word neighbours (one) from the word table beside the
    atlas; the model is loaded only when the table lacks a word (or does not exist yet)."""
    from atlas import catalog
    from atlas.index import open_index
    from atlas.artifacts import EMBEDDED_MODEL as EMBEDDED
    from atlas.hooks import HookPoint
    from atlas.readonly import open_readonly
    from atlas.words import table_analogy, table_neighbors, word_table

    def load_model(spec: str, device: str):
        from atlas.models import load_model

        return load_model(spec, device=device)

    if args.layer is None:
        raise AtlasError("words are read at a layer: add --layer L (the residual stream after "
                         "block L)")
    con = open_readonly(args.db)
    try:
        sae_ids = [r[0] for r in con.execute("SELECT sae_id FROM saes WHERE layer = ? "
                                             "ORDER BY sae_id", [args.layer]).fetchall()]
        sae_id = catalog.resolve_sae(con, args.sae) if args.sae else (sae_ids or [None])[0]
        model = catalog.model_of(con, [sae_id] if sae_id else None)
        model_id, spec = (model[0], model[1] or EMBEDDED) if model else (EMBEDDED, EMBEDDED)
        table = word_table(args.db, model_id, HookPoint(args.layer), terms,
                           representation=args.representation,
                           load_lm=lambda: load_model(spec, device="auto"))
        index = open_index(con, args.db, sae_id) if sae_id else None
        if len(terms) == 3:
            result = table_analogy(table, *terms, k=args.k, con=con, index=index)
        else:
            result = table_neighbors(table, terms[0], k=args.k, con=con, index=index)
    finally:
        con.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=1))
        return 0
    for note in result.notes:
        print(f"note: {note}")
    what = f"{terms[1]} - {terms[0]} + {terms[2]}" if len(terms) == 3 else terms[0]
    print(f"{what} at layer {args.layer}, nearest words:")
    for word, cos in result.words:
        print(f"  {word:20} {cos:.3f}")
    if result.features:
        _print_hits(result.features, False, f"nearest features of {result.features[0].sae_id}:")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from atlas import export

    fmt = args.format or ("parquet" if args.table else None)
    if fmt == "neuronpedia":
        if not args.sae:
            raise AtlasError("--format neuronpedia exports one SAE: add --sae ID")
        files = export.neuronpedia(args.db, args.sae, args.out, batch_size=args.batch_size)
        print(f"wrote {len(files)} batch files to {args.out}")
    elif fmt == "parquet":
        if not args.table:
            raise AtlasError("--format parquet exports a table or view: add --table NAME "
                             "(`atlas sql \"SELECT table_name FROM information_schema.tables\"` "
                             "lists them)")
        rows = export.parquet(args.db, args.table, args.out)
        print(f"wrote {rows:,} rows of {args.table} to {args.out}")
    else:
        raise AtlasError("say what to export: --format neuronpedia --sae ID, or --table NAME")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from atlas import catalog
    from atlas.harvest import features_of
    from atlas.models import load_model
    from atlas.readonly import open_readonly

    con = open_readonly(args.db)
    try:
        sae_id = catalog.resolve_sae(con, args.sae)
        spec = catalog.loadable_model(con, [sae_id])[1]
        labels = dict(con.execute("SELECT feature, label FROM features WHERE sae_id = ?",
                                  [sae_id]).fetchall())
        lm = load_model(spec, device="auto")
        sae = catalog.load_sae(con, sae_id, device=str(lm.device))
    finally:
        con.close()
    tokens = features_of(lm, sae, args.text, top=args.k)
    if args.json:
        print(json.dumps([dataclasses.asdict(t) for t in tokens], indent=1))
        return 0
    for t in tokens:
        feats = "  ".join(f"#{f} {a:.2f} ({labels.get(f, '')})" for f, a in t.features[:4])
        print(f"{t.position:>4} {t.token!r:16} {feats}")
    return 0


def _run_analyses(args: argparse.Namespace, settings: dict[str, object]) -> dict:
    """Run the analyses `settings` names on the SAEs `--sae` chooses; print one line per run."""
    from atlas import access, catalog
    from atlas.analyses import runner

    if not args.db.exists():
        raise AtlasError(f"{args.db} does not exist; build an atlas first with "
                         f"`atlas build --db {args.db}`")
    modules = [analyses.module(n) for n in settings]
    # The atlas is open only per step (read-only while computing, writable per stored run), so
    # the app and `atlas sql` keep answering from it meanwhile (atlas.access).
    with access.writing(args.db):
        pass  # brings the schema up to date, and fails now on a file that holds no atlas
    with access.reading(args.db) as con:
        needs_model = any(m.NEEDS_MODEL for m in modules)
        ids = tuple(catalog.sae_ids(con, args.sae, loadable=needs_model and not args.sae))
    if not ids:
        raise AtlasError("the atlas has no SAEs to analyse; build one with atlas build")
    inputs = runner.Inputs(args.db, ids,
                           loader=lambda chosen: catalog.model_and_saes(inputs.con, chosen),
                           models_loader=lambda chosen: catalog.models_and_saes(inputs.con,
                                                                                chosen))
    results = runner.run_many(inputs, list(settings), settings)
    for name, rows in results.items():
        module = analyses.module(name)
        for r in rows:
            print(f"{name} {r['subject']}: {module.describe(r)} ({r['seconds']:.1f}s)")
        defs = ", ".join(sorted({r["definition"] for r in rows})) or module.DEFINITION
        print(f"{name} ({defs}): stored in {', '.join(module.TABLES)}")
    return results


def cmd_analyze(args: argparse.Namespace) -> int:
    from atlas.analyses.runner import with_seed

    names = args.analyses if args.analyses is not None else analyses.names()
    settings = {n: with_seed(config_from_args(args, analyses.module(n).Settings,
                                              prefix=n + "_"), args.seed) for n in names}
    _run_analyses(args, settings)
    return 0


def cmd_shortcut(args: argparse.Namespace) -> int:
    name = SHORTCUTS[args.command]
    _run_analyses(args, {name: config_from_args(args, analyses.module(name).Settings)})
    return 0


@contextmanager
def app_file() -> Iterator[Path]:
    """The Streamlit entry point, `streamlit_app.py` of the `atlas.app` package, as a file."""
    from importlib import resources

    with resources.as_file(resources.files("atlas.app") / "streamlit_app.py") as path:
        yield path


def cmd_app(args: argparse.Namespace) -> int:
    from atlas.readonly import open_readonly

    open_readonly(args.db).close()  # a clear error now rather than in the browser
    with app_file() as script:
        cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless",
               "true", "--server.port", str(args.port), "--server.address", args.address,
               "--browser.gatherUsageStats", "false", "--", "--db", str(args.db.resolve())]
        print(f"Feature Atlas on http://{args.address}:{args.port}  (Ctrl+C stops it)",
              flush=True)
        return run_forwarding_signals(cmd)


def run_forwarding_signals(cmd: list[str]) -> int:
    """Run `cmd` as a child and wait for it, passing SIGTERM, SIGINT and SIGHUP on to it, so a
    supervisor that stops this process stops the server too (no orphan holding the port);
    if this process leaves for any other reason, the child is terminated."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd)

    def forward(signum, _frame) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    caught = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = {sig: signal.signal(sig, forward) for sig in caught}
    try:
        return proc.wait()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def cmd_index(args: argparse.Namespace) -> int:
    from atlas.index import build_index
    from atlas.readonly import open_readonly

    con = open_readonly(args.db)
    try:
        ids = [r[0] for r in con.execute("SELECT sae_id FROM saes ORDER BY layer").fetchall()]
        metas = [dataclasses.asdict(build_index(con, args.db, i, kind=args.kind).meta)
                 for i in ids]
    finally:
        con.close()
    if args.json:
        print(json.dumps(metas, indent=1))
        return 0
    for m in metas:
        recall = "exact" if m["recall_at_10"] is None else f"recall@10 {m['recall_at_10']:.3f}"
        print(f"{m['sae_id']:44} {m['kind']:5} {m['n']:>8} x {m['d']:<5} {recall} "
              f"({m['built_seconds']:.1f}s)")
    return 0


def cmd_own(args: argparse.Namespace) -> int:
    """A command of an analysis outside the runner (`atlas explain`)."""
    return int(analyses.command(OWN_COMMANDS[args.command]).run(args))


COMMANDS = {"build": cmd_build, "info": cmd_info, "sql": cmd_sql, "neighbors": cmd_neighbors,
            "analogy": cmd_analogy, "features": cmd_features, "index": cmd_index,
            "export": cmd_export,
            "analyze": cmd_analyze, "app": cmd_app,
            **dict.fromkeys(SHORTCUTS, cmd_shortcut), **dict.fromkeys(OWN_COMMANDS, cmd_own)}


def reference() -> str:
    """The CLI reference in Markdown, from the parser itself: every command, and every flag
    with its default and help (the README's "Command reference" is this text)."""
    out = []
    for name in COMMANDS:
        parser = _parser(name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[name]
        about = next((c.help for c in sub._choices_actions if c.dest == name), "") or ""
        out += [f"**`atlas {name}`**: {about.replace('%%', '%')}", "",
                "| flag | default | what |", "|---|---|---|"]
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = ", ".join(action.option_strings)
            if action.nargs != 0:
                flag += f" {action.metavar or action.dest.upper()}" if not action.choices else (
                    " {" + ",".join(map(str, action.choices)) + "}")
            default = action.default
            shown = ("" if default in (None, False, argparse.SUPPRESS, [], ()) else
                     ",".join(map(str, default)) if isinstance(default, (list, tuple))
                     else str(default))
            text = " ".join((action.help or "").replace("%%", "%").split())
            text = re.sub(r"\s*\(default: [^()]*\)$", "", text).replace("|", "\\|")
            out.append(f"| `{flag}` | {shown and f'`{shown}`'} | {text} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = _parser(command if command in ANALYSIS_COMMANDS else None).parse_args(argv)
    except AtlasError as exc:  # a settings check while parsing
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    allocator.tune()
    try:
        return COMMANDS[args.command](args)
    except AtlasError as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        error = from_io_error(exc)
        if error is None:
            raise
        print(f"atlas: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
