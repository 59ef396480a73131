"""`atlas info`: a summary of what an atlas holds, read through the read-only connection."""

from __future__ import annotations

from pathlib import Path

from atlas.readonly import open_readonly, sqlalchemy_url


def atlas_info(db: Path) -> dict:
    """Models, corpora, SAEs (with quality and harvest counts) and analysis runs of the atlas at
    `db`."""
    con = open_readonly(db)
    try:
        def rows(sql: str) -> list[dict]:
            cur = con.execute(sql)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

        return {
            "db": str(db), "sqlalchemy_url": sqlalchemy_url(db),
            "models": rows("SELECT * FROM models ORDER BY model_id"),
            "corpora": rows("SELECT c.*, (SELECT count(*) FROM documents d WHERE "
                            "d.corpus_id = c.corpus_id) AS n_documents FROM corpora c"),
            "sources": rows("SELECT corpus_id, source, count(*) AS blocks FROM blocks "
                            "GROUP BY ALL ORDER BY ALL"),
            "saes": rows("SELECT o.*, (SELECT count(*) FROM cooccurrence c WHERE c.sae_id = "
                         "o.sae_id) AS cooccurring_pairs FROM sae_overview o"),
            "analyses": rows("SELECT analysis, definition, count(*) AS runs, "
                             "round(sum(seconds), 1) AS seconds, max(created_at) AS last_run "
                             "FROM analysis_runs GROUP BY ALL ORDER BY analysis"),
        }
    finally:
        con.close()


def format_info(info: dict) -> str:
    """Human-readable text of `atlas_info`."""
    lines = [f"atlas {info['db']}  ({info['sqlalchemy_url']})"]
    for m in info["models"]:
        lines.append(f"model {m['model_id']}: {m['n_layers']} layers, d_model {m['d_model']}"
                     f"  [{m['source']}]")
    for c in info["corpora"]:
        srcs = ", ".join(f"{s['source']} {s['blocks']}" for s in info["sources"]
                         if s["corpus_id"] == c["corpus_id"])
        lines.append(f"corpus {c['corpus_id']} ({c['name']}): {c['n_tokens']:,} tokens in "
                     f"{c['n_blocks']} blocks of {c['block_size']} ({srcs}); "
                     f"{c['n_documents']} documents")
    lines.append("")
    lines.append(f"{'sae_id':44} {'layer':>5} {'d_sae':>6} {'L0':>6} {'EV':>6} {'dead':>6} "
                 f"{'live':>6} {'pairs':>9}")
    for s in info["saes"]:
        lines.append(f"{s['sae_id']:44} {s['layer']:>5} {s['d_sae']:>6} {_num(s['l0'], 1):>6} "
                     f"{_num(s['explained_variance'], 3):>6} "
                     f"{_num(_percent(s['dead_fraction']), 1):>5}% "
                     f"{s['live_features'] or 0:>6} {s['cooccurring_pairs']:>9,}")
    lines.append("")
    runs = [f"{a['analysis']} ({a['definition']}) {a['runs']}" for a in info["analyses"]]
    lines.append("analyses: " + (", ".join(runs) if runs else
                                 "none yet (atlas analyze --db ... runs them)"))
    return "\n".join(lines)


def _percent(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
