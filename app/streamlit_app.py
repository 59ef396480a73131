"""The Feature Atlas app: `atlas app --db atlas.duckdb` (or ATLAS_DB=... streamlit run this).

Pages render only: every number comes from a query (`atlas.dashboard`, or an analysis's
`queries`) whose SQL is shown beside it. The database is opened read-only with external access
locked off. This file holds the core pages (Overview, Feature, Analogy, SQL); each analysis's
page is in its folder (`atlas/analyses/<name>/page.py`), shared widgets in `ui.py`.
"""

from __future__ import annotations

import html
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from atlas import analyses, query, ui, words
from atlas import dashboard as q
from atlas.artifacts import word_table_path
from atlas.errors import AtlasError
from atlas.readonly import run_query


def db_path() -> Path:
    """--db after `--` on the streamlit command line, else $ATLAS_DB, else atlas.duckdb."""
    args = sys.argv[1:]
    if "--db" in args and args.index("--db") + 1 < len(args):
        return Path(args[args.index("--db") + 1])
    return Path(os.environ.get("ATLAS_DB", "atlas.duckdb"))


def page_overview(db: str) -> None:
    st.header("Overview")
    parts = ui.cached(db, q.overview)
    models, corpora, saes = parts["models"].frame, parts["corpora"].frame, parts["saes"].frame
    cols = st.columns(4)
    cols[0].metric("model", models["model_id"].iloc[0] if len(models) else "-")
    cols[1].metric("SAEs", len(saes))
    cols[2].metric("tokens", f"{int(corpora['n_tokens'].sum()):,}" if len(corpora) else "-")
    cols[3].metric("blocks", f"{int(corpora['n_blocks'].sum()):,}" if len(corpora) else "-")
    st.subheader("SAEs and their quality")
    st.dataframe(saes, hide_index=True)
    ui.show_sql(parts["saes"])
    st.subheader("Model and corpus")
    st.dataframe(models, hide_index=True)
    st.dataframe(corpora, hide_index=True)
    st.dataframe(parts["sources"].frame, hide_index=True)
    ui.show_sql(parts["corpora"])
    if len(parts["config"].frame):
        with st.expander("Build parameters"):
            st.json(parts["config"].frame["config"].iloc[0])
    if not len(saes):
        return
    st.subheader("Features of an SAE")
    sae = ui.choose_sae(db, "overview_sae")
    left, right = st.columns([2, 3])
    with left:
        density_chart(db, sae, None, "Density histogram")
    with right:
        order = st.radio("order by", ["firing_count", "max_act", "feature"], horizontal=True)
        listed = ui.cached(db, q.feature_list, sae, order)
        st.dataframe(listed.frame, hide_index=True, column_config={
            "page": st.column_config.LinkColumn("page", display_text="open")})
        st.caption("Each feature's page has its own address (?page=Feature&sae=…&feature=…), "
                   "to share.")
        ui.show_sql(listed)


def density_chart(db: str, sae: str, mark: float | None, title: str) -> None:
    """The SAE's features by log10 density, with a rule at `mark` (one feature's)."""
    shown = ui.cached(db, q.density_histogram, sae)
    st.markdown(f"**{title}**")
    frame = shown.frame.dropna(subset=["log10_lo"])
    dead = shown.frame[shown.frame.log10_lo.isna()]["n_features"].sum()
    chart = alt.Chart(frame).mark_bar().encode(
        x=alt.X("log10_lo:Q", bin="binned", title="log10 density (share of tokens with a "
                "positive activation)"), x2="log10_hi:Q",
        y=alt.Y("n_features:Q", title="features"),
        tooltip=["log10_lo", "log10_hi", "n_features"])
    if mark is not None:
        chart = chart + alt.Chart(pd.DataFrame({"x": [mark]})).mark_rule(
            color="red", strokeWidth=2).encode(x="x:Q")
    st.altair_chart(chart.properties(height=220))
    st.caption(f"{int(dead):,} features never active." if dead else "Every feature is active.")
    ui.show_sql(shown)


def highlight(context: str, start: int, token: str) -> str:
    before, after = context[:start], context[start + len(token):]
    return (f"{html.escape(before)}<mark><b>{html.escape(token)}</b></mark>"
            f"{html.escape(after)}").replace("\n", "⏎ ")


def page_feature(db: str) -> None:
    st.header("Feature")
    sae = ui.choose_sae(db, "feature_sae")
    how = st.radio("find by", ["id", "top token", "promoted token", "text in examples"],
                   horizontal=True)
    if how == "id":
        shared = st.query_params.get("feature", "0")
        start = int(shared) if shared.isdigit() else 0
        feature = int(st.number_input("feature id", min_value=0, value=start, step=1))
    else:
        needle = st.text_input(how if how != "text in examples" else "text",
                               value=" the" if how == "promoted token" else "the")
        if how == "promoted token":
            found = ui.cached(db, q.find_by_logit, sae, needle)
        else:
            found = ui.cached(db, q.find_features, sae, *((needle, None) if how == "top token"
                                                        else (None, needle)))
        ui.show_table(found)
        if not len(found.frame):
            st.warning("No feature matches; try another token or text.")
            return
        feature = int(st.selectbox("feature", found.frame["feature"].tolist()))
    card = ui.cached(db, q.feature_card, sae, feature)
    if not len(card.frame):
        st.warning(f"Feature {feature} does not exist in {sae}.")
        return
    row = card.frame.iloc[0]
    st.subheader(f"#{feature} · {row['label']}")
    cols = st.columns(4)
    cols[0].metric("fires on tokens", f"{int(row['firing_count']):,}")
    cols[1].metric("firing rate", f"{row['firing_rate']:.4f}")
    cols[2].metric("blocks", f"{int(row['block_count']):,}")
    cols[3].metric("code share", "-" if pd.isna(row["code_share"]) else f"{row['code_share']:.2f}")
    if isinstance(row["neuronpedia_url"], str):
        st.link_button("Open on Neuronpedia", row["neuronpedia_url"])
    ui.show_sql(card)
    ui.spaces(db, sae)
    feature_effects(db, sae, feature, float(row["max_act"]))
    ex = ui.cached(db, q.examples, sae, feature)
    st.subheader("Top examples")
    st.markdown("<br>".join(f"<code>{r.act:.2f}</code> [{r.source}] "
                            f"{highlight(r.context, r.token_start, r.token)}"
                            for r in ex.frame.itertuples()), unsafe_allow_html=True)
    ui.show_sql(ex)
    deciles = ui.cached(db, q.decile_examples, sae, feature)
    st.subheader("Examples across the activation range")
    st.caption("A uniform sample of each decile of the feature's positive activations (chosen "
               "by a hash of feature and token position); a range that a single histogram bin "
               "spans may hold several deciles.")
    for (lo, hi, share), group in deciles.frame.groupby(["act_lo", "act_hi", "share"],
                                                        sort=False):
        st.markdown(f"**{lo:.3g} – {hi:.3g}** · {share:.1%} of activations<br>"
                    + "<br>".join(f"<code>{r.act:.2f}</code> [{r.source}] "
                                  f"{highlight(r.context, r.token_start, r.token)}"
                                  for r in group.itertuples()), unsafe_allow_html=True)
    ui.show_sql(deciles)
    left, right = st.columns(2)
    with left:
        st.subheader("Nearest features")
        target = st.selectbox("in SAE", q.sae_ids(ui.connection(db)),
                              index=q.sae_ids(ui.connection(db)).index(sae), key="nn_target")
        hits = query.neighbors(ui.connection(db), ui.feature_index(db, sae), feature, 10,
                               target=ui.feature_index(db, target))
        st.dataframe(pd.DataFrame([h.__dict__ for h in hits]).drop(columns="sae_id"),
                     hide_index=True)
        st.caption("Cosine of unit decoder directions, from the FAISS index of the SAE.")
    with right:
        st.subheader("Co-occurring features")
        metric = st.selectbox("affinity", ["phi", "jaccard", "dice", "overlap", "smc"])
        co = ui.cached(db, q.cooccurring, sae, feature, metric)
        ui.show_table(co)
    for page in analyses.pages():  # what each analysis adds to a feature's page
        section = getattr(page, "feature_section", None)
        if section:
            section(db, sae, feature)


def feature_effects(db: str, sae: str, feature: int, max_act: float) -> None:
    """Logit lens, activation histogram and density of one feature."""
    logits = ui.cached(db, q.feature_logits, sae, feature)
    st.subheader("Logit lens")
    if not len(logits.frame):
        ui.missing("logit lens or activation histogram for this SAE (it was harvested before "
                "the atlas stored them)", "atlas build")
        return
    st.caption("W_dec · W_U through the final norm's scale, centred over the vocabulary (as "
               "sae_vis and Neuronpedia show it): the logits one unit of activation adds.")
    frame = logits.frame
    left, right = st.columns(2)
    for col, direction, title in ((left, "top", "Promoted tokens"),
                                  (right, "bottom", "Suppressed tokens")):
        col.markdown(f"**{title}**")
        col.dataframe(frame[frame.direction == direction][["token", "value"]].assign(
            token=lambda f: f.token.map(repr)), hide_index=True)
    ui.show_sql(logits)
    left, right = st.columns(2)
    with left:
        hist = ui.cached(db, q.activation_histogram, sae, feature)
        st.markdown("**Activation histogram** (positive activations, log-spaced bins)")
        threshold = float(ui.cached(db, q.overview)["saes"].frame.set_index("sae_id")
                          .loc[sae, "threshold"])
        chart = alt.Chart(hist.frame.assign(act_lo=lambda f: f.act_lo.clip(lower=1e-4))
                          ).mark_bar().encode(
            x=alt.X("act_lo:Q", scale=alt.Scale(type="log"), bin="binned",
                    title="activation"), x2="act_hi:Q",
            y=alt.Y("count:Q", title="tokens"), tooltip=["act_lo", "act_hi", "count"])
        rule = alt.Chart(pd.DataFrame({"x": [threshold]})).mark_rule(
            color="grey", strokeDash=[4, 4]).encode(x="x:Q")
        st.altair_chart((chart + rule).properties(height=220))
        st.caption(f"Dashed: the harvest threshold ({threshold:g}); firing counts are above it. "
                   f"Maximum {max_act:.3g}.")
        ui.show_sql(hist)
    with right:
        density = ui.cached(db, q.feature_density, sae, feature)
        mark = density.frame["log10_density"].iloc[0] if len(density.frame) else None
        density_chart(db, sae, None if pd.isna(mark) else float(mark),
                      f"Density: 10^{mark:.2f} of tokens (red) among the SAE's features"
                      if mark is not None and not pd.isna(mark)
                      else "Density: never active")
        ui.show_sql(density)


def page_analogy(db: str) -> None:
    st.header("Analogy: b − a + c")
    if st.radio("over", ["features", "words"], horizontal=True) == "words":
        word_analogy_page(db)
        return
    sae = ui.choose_sae(db, "analogy_sae")
    cols = st.columns(3)
    a = int(cols[0].number_input("a (feature)", min_value=0, value=0))
    b = int(cols[1].number_input("b (feature)", min_value=0, value=1))
    c = int(cols[2].number_input("c (feature)", min_value=0, value=2))
    k = st.slider("results", 5, 30, 10)
    try:
        hits = query.analogy(ui.connection(db), ui.feature_index(db, sae), a, b, c, k)
    except AtlasError as exc:
        st.error(str(exc))
        return
    frame = pd.DataFrame([h.__dict__ for h in hits]).drop(columns="sae_id")
    st.dataframe(frame, hide_index=True)
    st.altair_chart(alt.Chart(frame).mark_bar().encode(
        x=alt.X("cosine:Q"), y=alt.Y("feature:N", sort="-x"), tooltip=["feature", "label",
                                                                       "cosine"]))
    st.caption("Nearest unit decoder directions to vec(b) − vec(a) + vec(c), inputs excluded. "
               "Word analogies: `atlas analogy --layer L --words man woman king`.")


def word_analogy_page(db: str) -> None:
    tables = words.stored_tables(Path(db))
    if not tables:
        ui.missing("word table", f"atlas analogy --db {db} --words --layer L man woman king")
        return
    labels = [f"{t['hook']} · {t['representation']} · {t['model_id']}" for t in tables]
    chosen = tables[labels.index(st.selectbox("word table", labels))]
    table = word_table(db, chosen["model_id"], chosen["hook"], chosen["representation"])
    if table is None:
        st.error("This word table does not match its checksum; `atlas analogy --words` "
                 "computes it again.")
        return
    mode = st.radio("ask", ["analogy", "neighbours"], horizontal=True)
    k = st.slider("results", 5, 30, 10, key="word_k")
    ids = [s for s, hook in q.sae_hooks(ui.connection(db)).items() if hook == chosen["hook"]]
    index = ui.feature_index(db, ids[0]) if ids else None
    try:
        if mode == "analogy":
            cols = st.columns(3)
            a, b, c = (col.text_input(n, value=v).strip() for col, n, v in
                       zip(cols, ("a", "b", "c"), ("man", "woman", "king")))
            result = words.table_analogy(table, a, b, c, k=k, con=ui.connection(db), index=index)
        else:
            word = st.text_input("word", value="king").strip()
            result = words.table_neighbors(table, word, k=k, con=ui.connection(db), index=index)
    except AtlasError as exc:
        st.error(str(exc))
        return
    for note in result.notes:
        st.caption(note)
    left, right = st.columns(2)
    left.markdown("**Nearest words** (cosine, centred on the vocabulary's mean)")
    left.dataframe(pd.DataFrame(result.words, columns=["word", "cosine"]), hide_index=True)
    if result.features:
        right.markdown(f"**Nearest features of {result.features[0].sae_id}**")
        right.dataframe(pd.DataFrame([h.__dict__ for h in result.features])
                        .drop(columns="sae_id"), hide_index=True)
    st.caption(f"From the word table beside the atlas ({len(table.words):,} words); "
               "`atlas analogy --words` adds words it lacks.")


@st.cache_resource(max_entries=8)
def _word_table(path: str, model_id: str, hook: str, representation: str, stamp: int):
    return words.load_table(Path(path), model_id, hook, representation)


def word_table(path: str, model_id: str, hook: str, representation: str):
    """A stored word table, read once per change of its file."""
    file = word_table_path(Path(path), model_id, hook, representation).with_suffix(".json")
    return _word_table(path, model_id, hook, representation, file.stat().st_mtime_ns)


def page_sql(db: str) -> None:
    st.header("SQL")
    con = ui.connection(db)
    st.caption("Read-only: one SELECT at a time; files, ATTACH and extensions are refused. "
               "The same queries run with `atlas sql --db ... \"SELECT ...\"`.")
    with st.expander("Views"):
        st.write(", ".join(q.view_names(con)))
    examples = {**q.EXAMPLE_QUERIES,
                **{k: v for n in analyses.all_names() for k, v in analyses.queries(n).EXAMPLES.items()}}
    example = st.selectbox("example", list(examples))
    # ?page=SQL&sql=... opens the page with a query (a link to share one).
    shared = st.query_params.get("sql")
    sql = st.text_area("query", value=shared or examples[example], height=120)
    limits = ui.sql_limits()
    try:
        result = run_query(con, sql, limits=limits)
    except AtlasError as exc:
        st.error(str(exc))
        return
    frame = result.table.to_pandas()
    if result.truncated:
        st.info(result.note())
    st.caption(f"{len(frame):,} rows in {result.seconds:.2f} s (time limit "
               f"{limits.timeout_s or 0:g} s)")
    st.dataframe(frame, hide_index=True)
    st.download_button("CSV", frame.to_csv(index=False), "atlas.csv", "text/csv")
    buf = io.BytesIO()
    frame.to_parquet(buf)
    st.download_button("Parquet", buf.getvalue(), "atlas.parquet")


# The core pages; each analysis's page follows them (`atlas.analyses.pages`), then SQL. (A bare
# string here would be rendered on the page by Streamlit's magic.)
CORE = {"Overview": page_overview, "Feature": page_feature, "Analogy": page_analogy}


def pages() -> dict[str, Callable[[str], None]]:
    """Every page by title, in the sidebar's order."""
    return {**CORE, **{p.TITLE: p.render for p in analyses.pages()}, "SQL": page_sql}


def main() -> None:
    st.set_page_config(page_title="Feature Atlas", layout="wide")
    path = db_path()
    try:
        ui.connection(str(path))
    except AtlasError as exc:
        st.error(str(exc))
        return
    render = pages()
    titles = list(render)
    wanted = st.query_params.get("page", "Overview")
    page = st.sidebar.radio("Feature Atlas", titles,
                            index=titles.index(wanted) if wanted in titles else 0)
    st.sidebar.caption(f"{path}")
    try:
        render[page](str(path))
    finally:
        ui.close_all()


main()
