"""Interactive latency: word analogies from the stored word table, and the Feature page.

    python benchmarks/feature_page.py --db atlas.duckdb
    python benchmarks/feature_page.py --db atlas.duckdb --layer 11 --words man woman king

Word analogies, through the `atlas` command as a person runs it (a fresh process per call):
the first call on an atlas without a word table (the model loads and reads the vocabulary),
the second call (the table is read), and the command's start-up alone (`atlas info`) as the
baseline the second call should stay near; then the in-process answer from the stored table.
The atlas is reached through a scratch folder of links, so its own word tables stay as they are.

The Feature page, rendered by Streamlit's AppTest for a few features (each a fresh run of the
script, its queries cached per feature as in the app), against the Overview page in the same
run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("benchmark")
APP = Path(__file__).parent.parent / "app" / "streamlit_app.py"


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def scratch_atlas(db: Path, folder: Path) -> Path:
    """`db` and its FAISS indexes linked into `folder`, without its word tables."""
    link = folder / db.name
    link.symlink_to(db.resolve())
    index = db.with_name(db.name + ".index")
    if index.exists():
        (folder / index.name).symlink_to(index.resolve())
    return link


def word_latency(db: Path, layer: int, words: list[str]) -> None:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    atlas = [sys.executable, "-m", "atlas.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        link = scratch_atlas(db, Path(tmp))
        ask = [*atlas, "analogy", "--db", str(link), "--words", "--layer", str(layer), *words]
        first = timed(ask, env)
        second = [timed(ask, env) for _ in range(3)]
        startup = [timed([*atlas, "info", "--db", str(link)], env) for _ in range(3)]
        from atlas import catalog
        from atlas.index import open_index
        from atlas.models import HookPoint
        from atlas.readonly import open_readonly
        from atlas.words import table_analogy, word_table

        con = open_readonly(link)
        model_id = catalog.model_of(con)[0]
        sae_id = next((r[0] for r in con.execute(
            "SELECT sae_id FROM saes WHERE hook = ?", [HookPoint(layer).name]).fetchall()), None)
        index = open_index(con, link, sae_id) if sae_id else None
        t0 = time.perf_counter()
        table = word_table(link, model_id, HookPoint(layer), words)
        table_analogy(table, *words, con=con, index=index)
        inside = time.perf_counter() - t0
        con.close()
    s, u = statistics.median(second), statistics.median(startup)
    print(f"word analogy {' '.join(words)} at layer {layer} ({len(table.words):,} words):")
    print(f"  first call {first:.2f}s (model + table), second call {s:.2f}s; "
          f"second/first ratio {s / first:.3f}x")
    print(f"  CLI start-up alone (atlas info) {u:.2f}s; second call / start-up ratio "
          f"{s / u:.2f}x; in-process from the table {inside * 1000:.0f} ms")


def page_latency(db: Path, features: int) -> None:
    import duckdb
    from streamlit.testing.v1 import AppTest

    os.environ["ATLAS_DB"] = str(db)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("streamlit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    with duckdb.connect(str(db), read_only=True) as con:
        sae = con.execute("SELECT sae_id FROM saes ORDER BY layer DESC LIMIT 1").fetchone()[0]
        ids = [r[0] for r in con.execute(
            "SELECT feature FROM features WHERE sae_id = ? AND firing_count > 0 "
            "ORDER BY hash(feature) LIMIT ?", [sae, features]).fetchall()]

    def render(**params) -> float:
        at = AppTest.from_file(str(APP), default_timeout=300)
        for k, v in params.items():
            at.query_params[k] = v
        t0 = time.perf_counter()
        at.run()
        took = time.perf_counter() - t0
        if at.exception:
            raise SystemExit(f"the page failed: {[e.value for e in at.exception]}")
        return took

    render(page="Overview")  # imports, first connection
    overview = statistics.median(render(page="Overview") for _ in range(3))
    feature = [render(page="Feature", sae=sae, feature=str(f)) for f in ids]
    p = statistics.median(feature)
    print(f"Feature page ({sae}, {len(ids)} features, each a first render): median {p:.2f}s, "
          f"max {max(feature):.2f}s; Overview {overview:.2f}s; feature/overview ratio "
          f"{p / overview:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--layer", type=int, default=None,
                        help="layer of the word analogy (default: the first SAE's)")
    parser.add_argument("--words", nargs=3, default=["man", "woman", "king"])
    parser.add_argument("--features", type=int, default=5, help="Feature pages to render")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import duckdb

    with duckdb.connect(str(args.db), read_only=True) as con:
        layer = args.layer if args.layer is not None else con.execute(
            "SELECT layer FROM saes ORDER BY layer LIMIT 1").fetchone()[0]
    word_latency(args.db, layer, args.words)
    page_latency(args.db, args.features)


if __name__ == "__main__":
    main()
