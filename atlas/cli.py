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

    p = sub.add_parser("neighbors",
                       help="features whose decoder directions are nearest a feature's")
    _query_args(p)
    p.add_argument("feature", type=int)
    p.add_argument("--in", dest="target", help="search this SAE instead (e.g. another layer)")

    p = sub.add_parser("analogy", help="b - a + c over feature ids, or over words (--words)")
    _query_args(p, sae_required=False)
    p.add_argument("terms", nargs=3, metavar="A B C", help="feature ids, or words with --words")
    p.add_argument("--words", action="store_true", help="A B C are words, read at --layer")
    p.add_argument("--layer", type=int, help="layer whose residual stream the words are read at")

    p = sub.add_parser("features", help="the SAE features active on each token of a text")
    _query_args(p)
    p.add_argument("text")

    p = sub.add_parser("analyze", help="galaxy, lobes and crystals analyses on a built atlas")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--what", type=_parse_tuple(str), default=("galaxy", "lobes", "crystals"),
                   help="comma-separated: galaxy, lobes, crystals")
    p.add_argument("--ks", type=_parse_tuple(int), default=(2, 4, 8),
                   help="numbers of lobes / clusters")
    p.add_argument("--metrics", type=_parse_tuple(str), default=("phi",),
                   help="co-occurrence affinities: phi, jaccard, dice, overlap, smc")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("compare", help="universality: match two SAEs' features on the same "
                       "tokens, score SVCCA and RSA against shuffled pairings")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--a", help="first SAE (id, unique part, or L<layer>)")
    p.add_argument("--b", help="second SAE")
    p.add_argument("--all-pairs", action="store_true", help="every pair of SAEs in the atlas")
    p.add_argument("--blocks", type=int, default=64, help="blocks whose tokens are compared")
    p.add_argument("--one-to-one", action="store_true", help="Hungarian matching, not max")
    p.add_argument("--permutations", type=int, default=100)

    p = sub.add_parser("absorption", help="feature absorption on the first-letter task: "
                       "letter probes, main latents by k-sparse probing, absorption rates")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--sae", type=_parse_tuple(str), default=(),
                   help="comma-separated SAEs (id, unique part, or L<layer>); default: all")
    p.add_argument("--words", type=int, default=6000,
                   help="whole-word vocabulary tokens to use (0: all of them)")
    p.add_argument("--max-k", type=int, default=10, help="k-sparse probes for k = 1..K")
    p.add_argument("--f1-jump", type=float, default=0.03,
                   help="F1 rise that makes an added latent a split")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("app", help="open the Streamlit app on the atlas (read-only)")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--port", type=int, default=8501)

    p = sub.add_parser("index", help="build (or refresh) the FAISS index of every SAE")
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--kind", choices=["auto", "flat", "hnsw", "ivf"], default="auto")
    p.add_argument("--json", action="store_true")
    return parser


def _query_args(p: argparse.ArgumentParser, *, sae_required: bool = True) -> None:
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--sae", required=sae_required,
                   help="SAE id, a unique part of it, or L<layer>")
    p.add_argument("-k", "--k", type=int, default=10, help="how many results")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_build(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.prefect:
        from flows.build import run_build_flow

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


def _print_hits(hits, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps([dataclasses.asdict(h) for h in hits], indent=1))
        return
    print(title)
    print(f"{'feature':>8} {'cosine':>7}  label")
    for h in hits:
        print(f"{h.feature:>8} {h.cosine:>7.3f}  {h.label}")


def cmd_neighbors(args: argparse.Namespace) -> int:
    from atlas import query
    from atlas.readonly import open_readonly

    con = open_readonly(args.db)
    try:
        sae_id = query.resolve_sae(con, args.sae)
        index = query.open_index(con, args.db, sae_id)
        target = (query.open_index(con, args.db, query.resolve_sae(con, args.target))
                  if args.target else None)
        hits = query.neighbors(con, index, args.feature, args.k, target=target)
    finally:
        con.close()
    where = target.meta.sae_id if target else sae_id
    _print_hits(hits, args.json, f"nearest to {sae_id} #{args.feature} in {where}:")
    return 0


def cmd_analogy(args: argparse.Namespace) -> int:
    from atlas import query
    from atlas.readonly import open_readonly

    if args.words:
        return _word_analogy(args)
    if not args.sae:
        raise AtlasError("give --sae for an analogy over features, or --words --layer L")
    try:
        a, b, c = (int(t) for t in args.terms)
    except ValueError:
        raise AtlasError(f"{args.terms} are not feature ids; add --words --layer L to use "
                         "words") from None
    con = open_readonly(args.db)
    try:
        sae_id = query.resolve_sae(con, args.sae)
        hits = query.analogy(con, query.open_index(con, args.db, sae_id), a, b, c, args.k)
    finally:
        con.close()
    _print_hits(hits, args.json, f"#{b} - #{a} + #{c} in {sae_id}:")
    return 0


def _word_analogy(args: argparse.Namespace) -> int:
    from atlas import query
    from atlas.models import load_model
    from atlas.readonly import open_readonly

    if args.layer is None:
        raise AtlasError("word analogies need --layer L (the residual stream they are read at)")
    con = open_readonly(args.db)
    try:
        sae_ids = [r[0] for r in con.execute("SELECT sae_id FROM saes WHERE layer = ? "
                                             "ORDER BY sae_id", [args.layer]).fetchall()]
        sae_id = query.resolve_sae(con, args.sae) if args.sae else (sae_ids or [None])[0]
        model = _model_of(con, [sae_id] if sae_id else None)
        index = query.open_index(con, args.db, sae_id) if sae_id else None
        lm = load_model(model[1] if model and model[1] else "smollm2-135m", device="auto")
        a, b, c = args.terms
        result = query.word_analogy(lm, args.layer, a, b, c, k=args.k, con=con, index=index)
    finally:
        con.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=1))
        return 0
    for note in result.notes:
        print(f"note: {note}")
    print(f"{b} - {a} + {c} at layer {args.layer}, nearest words:")
    for word, cos in result.words:
        print(f"  {word:20} {cos:.3f}")
    if result.features:
        _print_hits(result.features, False, f"nearest features of {result.features[0].sae_id}:")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from atlas import query
    from atlas.models import load_model
    from atlas.readonly import open_readonly
    from atlas.saes import load_recorded

    con = open_readonly(args.db)
    try:
        sae_id = query.resolve_sae(con, args.sae)
        where = con.execute("SELECT path, release, release_sae_id FROM saes WHERE sae_id = ?",
                            [sae_id]).fetchone()
        spec = _loadable_model(con, [sae_id])[1]
        labels = dict(con.execute("SELECT feature, label FROM features WHERE sae_id = ?",
                                  [sae_id]).fetchall())
    finally:
        con.close()
    lm = load_model(spec, device="auto")
    sae = load_recorded(*where, device=str(lm.device))
    tokens = query.features_of(lm, sae, args.text, top=args.k)
    if args.json:
        print(json.dumps([dataclasses.asdict(t) for t in tokens], indent=1))
        return 0
    for t in tokens:
        feats = "  ".join(f"#{f} {a:.2f} ({labels.get(f, '')})" for f, a in t.features[:4])
        print(f"{t.position:>4} {t.token!r:16} {feats}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from atlas import store
    from atlas.analyses import AnalysisSettings, run_all
    from atlas.geometry.lobes import METRICS

    bad = set(args.metrics) - set(METRICS)
    if bad:
        raise AtlasError(f"unknown --metrics {sorted(bad)}; choose from {', '.join(METRICS)}")
    if not args.db.exists():
        raise AtlasError(f"{args.db} does not exist; build an atlas first with "
                         f"`atlas build --db {args.db}`")
    con = store.connect(args.db)
    try:
        lm, saes = (_model_and_saes(con) if "crystals" in args.what else (None, {}))
        settings = AnalysisSettings(ks=args.ks, metrics=args.metrics, seed=args.seed)
        run_all(con, args.what, settings=settings, lm=lm, saes=saes)
    finally:
        con.close()
    print(f"analyses {','.join(args.what)} stored in {args.db}; see the views layer_spectra, "
          "clustering_entropy, cosine_tails, lobes, lobe_modularity, crystal_quality")
    return 0


def _model_of(con, sae_ids: list[str] | None = None) -> tuple[str, str | None] | None:
    """(model_id, spec) of the model the given SAEs read (they must share one; default: the
    atlas's first model), or None when the atlas records none."""
    if not sae_ids:
        return con.execute("SELECT model_id, spec FROM models ORDER BY model_id LIMIT 1").fetchone()
    models = {r[0] for r in con.execute(
        "SELECT DISTINCT model_id FROM saes WHERE sae_id IN (SELECT unnest(?))",
        [list(sae_ids)]).fetchall()}
    if len(models) > 1:
        raise AtlasError(f"the SAEs belong to different models ({', '.join(sorted(models))}); "
                         "choose SAEs of one model")
    return con.execute("SELECT model_id, spec FROM models WHERE model_id = ?",
                       [models.pop()]).fetchone() if models else None


def _loadable_model(con, sae_ids: list[str] | None = None) -> tuple[str, str]:
    """`_model_of`, with a clear error when there is no spec to load the model from."""
    row = _model_of(con, sae_ids)
    if not row or not row[1]:
        raise AtlasError("the atlas records no loadable model; rebuild it with `atlas build`")
    return row


_LOADABLE = "(path IS NOT NULL OR release IS NOT NULL)"


def _model_and_saes(con, sae_ids: list[str] | None = None):
    """The model the given SAEs read (see `_model_of`) and those SAEs (default: every SAE of
    that model the atlas can load, from its folder or its release)."""
    from atlas.models import load_model
    from atlas.saes import load_recorded

    row = _loadable_model(con, sae_ids)
    lm = load_model(row[1], device="auto")
    rows = con.execute(f"SELECT sae_id, path, release, release_sae_id FROM saes WHERE "
                       f"model_id = ? AND {_LOADABLE} AND (? OR sae_id IN (SELECT unnest(?)))",
                       [row[0], not sae_ids, list(sae_ids or [])]).fetchall()
    return lm, {r[0]: load_recorded(*r[1:], device=str(lm.device)) for r in rows}


def cmd_compare(args: argparse.Namespace) -> int:
    from itertools import combinations

    from atlas import store
    from atlas.compare import compare
    from atlas.query import resolve_sae

    if not args.db.exists():
        raise AtlasError(f"{args.db} does not exist; build an atlas first")
    con = store.connect(args.db)
    try:
        if args.all_pairs:
            ids = [r[0] for r in con.execute("SELECT sae_id FROM saes ORDER BY layer, sae_id")
                   .fetchall()]
            pairs = list(combinations(ids, 2))
        elif args.a and args.b:
            pairs = [(resolve_sae(con, args.a), resolve_sae(con, args.b))]
        else:
            raise AtlasError("give --a and --b, or --all-pairs")
        lm, saes = _model_and_saes(con, sorted({x for pair in pairs for x in pair}))
        for a, b in pairs:
            row = compare(con, lm, saes, a, b, n_blocks=args.blocks, one_to_one=args.one_to_one,
                          n_permutations=args.permutations)
            print(f"{a} vs {b}: {row['n_pairs']} pairs, mean corr {row['mean_corr']:.3f}, "
                  f"SVCCA {row['svcca']:.3f} (null {row['svcca_null']:.3f}, "
                  f"p {row['svcca_p']:.3f}),"
                  f" RSA {row['rsa']:.3f} (null {row['rsa_null']:.3f}, p {row['rsa_p']:.3f})")
    finally:
        con.close()
    return 0


def cmd_absorption(args: argparse.Namespace) -> int:
    from atlas import store
    from atlas.absorption import absorption
    from atlas.geometry.absorption import AbsorptionSettings
    from atlas.query import resolve_sae

    if not args.db.exists():
        raise AtlasError(f"{args.db} does not exist; build an atlas first")
    if args.words < 0 or args.max_k < 1:
        raise AtlasError("--words must be >= 0 and --max-k >= 1")
    con = store.connect(args.db)
    try:
        ids = ([resolve_sae(con, s) for s in args.sae] if args.sae else
               [r[0] for r in con.execute(f"SELECT sae_id FROM saes WHERE {_LOADABLE} "
                                          "ORDER BY layer, sae_id").fetchall()])
        if not ids:
            raise AtlasError("the atlas has no SAEs it can load; build one with atlas build")
        lm, saes = _model_and_saes(con, ids)
        settings = AbsorptionSettings(max_k=args.max_k, f1_jump=args.f1_jump, seed=args.seed)
        rows = absorption(con, lm, saes, ids, n_words=args.words or None, settings=settings)
    finally:
        con.close()
    for r in rows:
        rate = "-" if r["mean_absorption_rate"] is None else f"{r['mean_absorption_rate']:.3f}"
        full = ("-" if r["mean_full_absorption_rate"] is None
                else f"{r['mean_full_absorption_rate']:.3f}")
        print(f"{r['sae_id']}: {r['letters_scored']} letters scored, mean probe F1 "
              f"{r['mean_probe_f1']:.3f}, absorption {rate}, full absorption {full}, "
              f"splits {r['mean_n_split']:.2f} per letter ({r['seconds']:.1f}s)")
    print("see the views absorption, absorption_by_sae and absorbed_examples")
    return 0


def app_file() -> Path:
    """The Streamlit entry point (app/ beside the package in a checkout)."""
    path = Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py"
    if not path.exists():
        raise AtlasError(f"the app is not at {path}; run `atlas app` from a checkout of the "
                         "project (pip install -e .)")
    return path


def cmd_app(args: argparse.Namespace) -> int:
    import subprocess

    from atlas.readonly import open_readonly

    open_readonly(args.db).close()  # a clear error now rather than in the browser
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file()), "--server.headless",
           "true", "--server.port", str(args.port), "--browser.gatherUsageStats", "false",
           "--", "--db", str(args.db.resolve())]
    print(f"Feature Atlas on http://localhost:{args.port}  (Ctrl+C stops it)")
    return subprocess.call(cmd)


def cmd_index(args: argparse.Namespace) -> int:
    from atlas import query
    from atlas.readonly import open_readonly

    con = open_readonly(args.db)
    try:
        ids = [r[0] for r in con.execute("SELECT sae_id FROM saes ORDER BY layer").fetchall()]
        metas = [dataclasses.asdict(query.build_index(con, args.db, i, kind=args.kind).meta)
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


COMMANDS = {"build": cmd_build, "info": cmd_info, "sql": cmd_sql, "neighbors": cmd_neighbors,
            "analogy": cmd_analogy, "features": cmd_features, "index": cmd_index,
            "analyze": cmd_analyze, "app": cmd_app, "compare": cmd_compare,
            "absorption": cmd_absorption}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except AtlasError as exc:
        print(f"atlas: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
