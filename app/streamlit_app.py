"""The Feature Atlas app: `atlas app --db atlas.duckdb` (or ATLAS_DB=... streamlit run this).

Pages render only: every number comes from an `atlas.dashboard` query whose SQL is shown
beside it. The database is opened read-only with external access locked off.
"""

from __future__ import annotations

import html
import os
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from atlas import dashboard as q
from atlas.errors import AtlasError
from atlas.readonly import run_query

PAGES = ("Overview", "Feature", "Analogy", "Lobes", "Crystals", "Galaxy", "Universality",
         "Absorption", "SQL")


def db_path() -> Path:
    """--db after `--` on the streamlit command line, else $ATLAS_DB, else atlas.duckdb."""
    args = sys.argv[1:]
    if "--db" in args and args.index("--db") + 1 < len(args):
        return Path(args[args.index("--db") + 1])
    return Path(os.environ.get("ATLAS_DB", "atlas.duckdb"))


# This run's connections. Streamlit runs the script afresh on every interaction and the run
# closes them at its end, so the app never holds the file while a build wants to write it.
# (A bare string here would be rendered on the page by Streamlit's magic.)
_OPEN: dict[str, object] = {}


def sql_limits():
    """Limits of the SQL page's queries (ATLAS_SQL_TIMEOUT etc.; 5 s and 10,000 rows unless
    set), so one person's query cannot hold the app."""
    from atlas.readonly import Limits

    return Limits.from_env(timeout_s=5.0, how_to_raise="the app's ATLAS_SQL_TIMEOUT, "
                           "ATLAS_SQL_MAX_ROWS, ATLAS_SQL_MEMORY variables, or `atlas sql`")


def connection(path: str):
    from atlas.readonly import open_readonly

    if path not in _OPEN:
        _OPEN[path] = open_readonly(path, sql_limits())
    return _OPEN[path]


def version(path: str) -> int:
    """Changes when the atlas is written (the file or its write-ahead log)."""
    p = Path(path)
    wal = p.with_name(p.name + ".wal")
    return max(p.stat().st_mtime_ns, wal.stat().st_mtime_ns if wal.exists() else 0)


@st.cache_resource(max_entries=32)
def _index(path: str, stamp: int, sae_id: str):
    from atlas.index import open_index

    return open_index(connection(path), Path(path), sae_id)


def feature_index(path: str, sae_id: str):
    return _index(path, version(path), sae_id)


@st.cache_data(show_spinner=False, max_entries=1024)
def _cached(path: str, stamp: int, name: str, *args) -> q.Shown:
    return getattr(q, name)(connection(path), *args)


def cached(path: str, name: str, *args) -> q.Shown:
    """A dashboard query's result, cached until the atlas changes."""
    return _cached(path, version(path), name, *args)


def show_sql(shown: q.Shown) -> None:
    with st.expander("SQL"):
        st.code(shown.sql, language="sql")


def show_table(shown: q.Shown, title: str | None = None) -> None:
    """A titled table of a query's result, with its SQL."""
    if title:
        st.subheader(title)
    st.dataframe(shown.frame, hide_index=True)
    show_sql(shown)


def analysis_page(db: str, title: str, table: str, what: str, how: str) -> bool:
    """Header of a page that needs an analysis; whether its results exist (if not, says how
    to compute them)."""
    st.header(title)
    if not q.has_rows(connection(db), table):
        missing(what, how)
        return False
    found = q.definitions(connection(db), table)
    st.caption(f"definition: {', '.join(found)} (`analysis_runs.definition`; `atlas` = the "
               "atlas's own variant, described in the README)")
    return True


def missing(what: str, how: str) -> None:
    st.info(f"This atlas has no {what} yet. Run `{how}` to compute it.")


def page_overview(db: str) -> None:
    st.header("Overview")
    parts = cached(db, "overview")
    models, corpora, saes = parts["models"].frame, parts["corpora"].frame, parts["saes"].frame
    cols = st.columns(4)
    cols[0].metric("model", models["model_id"].iloc[0] if len(models) else "-")
    cols[1].metric("SAEs", len(saes))
    cols[2].metric("tokens", f"{int(corpora['n_tokens'].sum()):,}" if len(corpora) else "-")
    cols[3].metric("blocks", f"{int(corpora['n_blocks'].sum()):,}" if len(corpora) else "-")
    st.subheader("SAEs and their quality")
    st.dataframe(saes, hide_index=True)
    show_sql(parts["saes"])
    st.subheader("Model and corpus")
    st.dataframe(models, hide_index=True)
    st.dataframe(corpora, hide_index=True)
    st.dataframe(parts["sources"].frame, hide_index=True)
    show_sql(parts["corpora"])
    if len(parts["config"].frame):
        with st.expander("Build parameters"):
            st.json(parts["config"].frame["config"].iloc[0])
    if not len(saes):
        return
    st.subheader("Features of an SAE")
    sae = choose_sae(db, "overview_sae")
    left, right = st.columns([2, 3])
    with left:
        density_chart(db, sae, None, "Density histogram")
    with right:
        order = st.radio("order by", ["firing_count", "max_act", "feature"], horizontal=True)
        listed = cached(db, "feature_list", sae, order)
        st.dataframe(listed.frame, hide_index=True, column_config={
            "page": st.column_config.LinkColumn("page", display_text="open")})
        st.caption("Each feature's page has its own address (?page=Feature&sae=…&feature=…), "
                   "to share.")
        show_sql(listed)


def choose_sae(db: str, key: str) -> str:
    ids = q.sae_ids(connection(db))
    wanted = st.query_params.get("sae")
    return st.selectbox("SAE", ids, key=key, index=ids.index(wanted) if wanted in ids else 0)


def density_chart(db: str, sae: str, mark: float | None, title: str) -> None:
    """The SAE's features by log10 density, with a rule at `mark` (one feature's)."""
    shown = cached(db, "density_histogram", sae)
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
    show_sql(shown)


def highlight(context: str, start: int, token: str) -> str:
    before, after = context[:start], context[start + len(token):]
    return (f"{html.escape(before)}<mark><b>{html.escape(token)}</b></mark>"
            f"{html.escape(after)}").replace("\n", "⏎ ")


def page_feature(db: str) -> None:
    st.header("Feature")
    sae = choose_sae(db, "feature_sae")
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
            found = cached(db, "find_by_logit", sae, needle)
        else:
            found = cached(db, "find_features", sae, *((needle, None) if how == "top token"
                                                        else (None, needle)))
        show_table(found)
        if not len(found.frame):
            st.warning("No feature matches; try another token or text.")
            return
        feature = int(st.selectbox("feature", found.frame["feature"].tolist()))
    card = cached(db, "feature_card", sae, feature)
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
    show_sql(card)
    feature_effects(db, sae, feature, float(row["max_act"]))
    ex = cached(db, "examples", sae, feature)
    st.subheader("Top examples")
    st.markdown("<br>".join(f"<code>{r.act:.2f}</code> [{r.source}] "
                            f"{highlight(r.context, r.token_start, r.token)}"
                            for r in ex.frame.itertuples()), unsafe_allow_html=True)
    show_sql(ex)
    deciles = cached(db, "decile_examples", sae, feature)
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
    show_sql(deciles)
    left, right = st.columns(2)
    with left:
        st.subheader("Nearest features")
        target = st.selectbox("in SAE", q.sae_ids(connection(db)),
                              index=q.sae_ids(connection(db)).index(sae), key="nn_target")
        from atlas import query

        hits = query.neighbors(connection(db), feature_index(db, sae), feature, 10,
                               target=feature_index(db, target))
        st.dataframe(pd.DataFrame([h.__dict__ for h in hits]).drop(columns="sae_id"),
                     hide_index=True)
        st.caption("Cosine of unit decoder directions, from the FAISS index of the SAE.")
    with right:
        st.subheader("Co-occurring features")
        metric = st.selectbox("affinity", ["phi", "jaccard", "dice", "overlap", "smc"])
        co = cached(db, "cooccurring", sae, feature, metric)
        show_table(co)
    lobes = cached(db, "feature_lobes", sae, feature)
    st.subheader("Its lobes")
    if len(lobes.frame):
        show_table(lobes)
    else:
        missing("lobes", "atlas analyze --analyses lobes")


def feature_effects(db: str, sae: str, feature: int, max_act: float) -> None:
    """Logit lens, activation histogram and density of one feature."""
    logits = cached(db, "feature_logits", sae, feature)
    st.subheader("Logit lens")
    if not len(logits.frame):
        missing("logit lens or activation histogram for this SAE (it was harvested before "
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
    show_sql(logits)
    left, right = st.columns(2)
    with left:
        hist = cached(db, "activation_histogram", sae, feature)
        st.markdown("**Activation histogram** (positive activations, log-spaced bins)")
        threshold = float(cached(db, "overview")["saes"].frame.set_index("sae_id")
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
        show_sql(hist)
    with right:
        density = cached(db, "feature_density", sae, feature)
        mark = density.frame["log10_density"].iloc[0] if len(density.frame) else None
        density_chart(db, sae, None if pd.isna(mark) else float(mark),
                      f"Density: 10^{mark:.2f} of tokens (red) among the SAE's features"
                      if mark is not None and not pd.isna(mark)
                      else "Density: never active")
        show_sql(density)


def page_analogy(db: str) -> None:
    st.header("Analogy: b − a + c")
    if st.radio("over", ["features", "words"], horizontal=True) == "words":
        word_analogy_page(db)
        return
    sae = choose_sae(db, "analogy_sae")
    cols = st.columns(3)
    a = int(cols[0].number_input("a (feature)", min_value=0, value=0))
    b = int(cols[1].number_input("b (feature)", min_value=0, value=1))
    c = int(cols[2].number_input("c (feature)", min_value=0, value=2))
    k = st.slider("results", 5, 30, 10)
    from atlas import query

    try:
        hits = query.analogy(connection(db), feature_index(db, sae), a, b, c, k)
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
    from atlas import words

    tables = words.stored_tables(Path(db))
    if not tables:
        missing("word table", f"atlas analogy --db {db} --words --layer L man woman king")
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
    ids = [s for s, hook in q.sae_hooks(connection(db)).items() if hook == chosen["hook"]]
    index = feature_index(db, ids[0]) if ids else None
    try:
        if mode == "analogy":
            cols = st.columns(3)
            a, b, c = (col.text_input(n, value=v).strip() for col, n, v in
                       zip(cols, ("a", "b", "c"), ("man", "woman", "king")))
            result = words.table_analogy(table, a, b, c, k=k, con=connection(db), index=index)
        else:
            word = st.text_input("word", value="king").strip()
            result = words.table_neighbors(table, word, k=k, con=connection(db), index=index)
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
    from atlas import words

    return words.load_table(Path(path), model_id, hook, representation)


def word_table(path: str, model_id: str, hook: str, representation: str):
    """A stored word table, read once per change of its file."""
    from atlas.artifacts import word_table_path

    file = word_table_path(Path(path), model_id, hook, representation).with_suffix(".json")
    return _word_table(path, model_id, hook, representation, file.stat().st_mtime_ns)


def page_lobes(db: str) -> None:
    if not analysis_page(db, "Lobes", "clusters", "lobes", "atlas analyze --analyses lobes"):
        return
    sae = choose_sae(db, "lobes_sae")
    choices = cached(db, "lobe_choices", sae).frame
    if not len(choices):
        missing(f"lobes for {sae}", "atlas analyze --analyses lobes")
        return
    cols = st.columns(3)
    metric = cols[0].selectbox("affinity", sorted(choices["metric"].unique()))
    ks = sorted(choices[choices.metric == metric]["k"].unique())
    k = int(cols[1].selectbox("k", ks, index=len(ks) - 1))
    colour = cols[2].radio("colour by", ["co-occurrence lobe", "geometric cluster"])
    method, by = (("cooccurrence", metric) if colour == "co-occurrence lobe"
                  else ("geometry", "angular"))
    points = cached(db, "lobe_map", sae, method, by, k)
    if len(points.frame):
        st.altair_chart(alt.Chart(points.frame).mark_circle(size=18, opacity=0.7).encode(
            x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None),
            color=alt.Color("cluster:N"), tooltip=["feature", "label", "cluster"]
        ).properties(height=480).interactive())
        show_sql(points)
    else:
        missing("2-D map", "atlas analyze --analyses lobes")
    tests = cached(db, "lobe_tests", sae, metric, k).frame
    if len(tests):
        t = tests.iloc[0]
        cols = st.columns(3)
        cols[0].metric("AMI lobes vs geometry", f"{t['ami']:.3f}",
                       f"z = {t['ami_z']:.1f} vs {int(t['n_permutations'])} shuffles")
        cols[1].metric("lobe from decoder (accuracy)", f"{t['logreg_accuracy']:.2f}",
                       f"z = {t['logreg_z']:.1f} vs {int(t['logreg_draws'])} random draws "
                       f"({t['logreg_random_accuracy']:.2f} ± {t['logreg_random_std']:.2f})")
        cols[2].metric("largest lobe's share", f"{t['chance']:.2f}")
        show_sql(cached(db, "lobe_tests", sae, metric, k))
    table = cached(db, "lobe_table", sae, metric, k)
    show_table(table, "Composition")


def page_crystals(db: str) -> None:
    if not analysis_page(db, "Crystals", "crystal_tasks", "crystals",
                         "atlas analyze --analyses crystals"):
        return
    layers = cached(db, "crystal_layers").frame
    cols = st.columns(2)
    hook = cols[0].selectbox("residual point", list(dict.fromkeys(layers["hook"])),
                             help="blocks.L.hook_resid_post: block L's output "
                             "(hidden_states[L+1]); blocks.L.hook_resid_pre: its input "
                             "(hidden_states[L])")
    space = cols[1].selectbox("space", layers[layers.hook == hook]["space"].tolist())

    st.subheader("Pair differences, one class per task (li2024)")
    st.caption("The geometry paper's experiment: object minus subject for every pair, words fed "
               "after BOS; silhouette of the tasks raw (0 components) and after LDA. With fewer "
               "pairs than dimensions the in-sample LDA separates any labelling; the held-out "
               "column tests the geometry.")
    sep = cached(db, "crystal_separation", hook)
    diffs = cached(db, "crystal_differences", hook)
    if len(diffs.frame):
        charts = []
        for kind, title in (("pca", "PCA of differences"), ("lda", "first two LDA components")):
            frame = diffs.frame.rename(columns={f"x_{kind}": "x", f"y_{kind}": "y"})
            charts.append(alt.Chart(frame).mark_circle(size=30).encode(
                x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None), color="task:N",
                tooltip=["task", "subject", "object", "heldout"]).properties(
                title=title, width=300, height=300))
        st.altair_chart(alt.hconcat(*charts))
    show_table(sep)

    st.subheader("Word representations")
    st.caption("Held-out analogies b - a + c in a closed vocabulary, mean-centred cosine; "
               "'chosen' is the one used below.")
    show_table(cached(db, "word_representations", hook))

    quality = cached(db, "crystal_quality", hook, space)
    show_table(quality, "Tasks before and after distractor removal")
    task = st.selectbox("task", quality.frame["task"].tolist())
    pts = cached(db, "crystal_points", hook, space, task)
    if len(pts.frame):
        charts = []
        for when in ("before", "after"):
            frame = pts.frame.rename(columns={f"x_{when}": "x", f"y_{when}": "y"})
            base = alt.Chart(frame).encode(x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None))
            lines = base.mark_line(opacity=0.4).encode(detail="pair:N")
            dots = base.mark_circle(size=50).encode(color="side:N", tooltip=["word", "pair"])
            text = base.mark_text(dy=-8, fontSize=9).encode(text="word")
            charts.append((lines + dots + text).properties(
                title=f"{when} distractor removal", width=340, height=340))
        st.altair_chart(alt.hconcat(*charts))
        show_sql(pts)
    show_table(cached(db, "crystal_search", hook, space),
               "Crystal search: quadruples that are two pairs of one relation")
    show_table(cached(db, "found_crystals", hook, space),
               "Crystals found (after distractor removal, held-out words)")


def page_galaxy(db: str) -> None:
    if not analysis_page(db, "Galaxy", "spectra", "galaxy analysis",
                         "atlas analyze --analyses galaxy"):
        return
    spectra = cached(db, "spectra")
    fits = cached(db, "layer_spectra")
    chart = alt.Chart(spectra.frame).mark_line().encode(
        x=alt.X("rank:Q", scale=alt.Scale(type="log")),
        y=alt.Y("eigenvalue:Q", scale=alt.Scale(type="log")),
        color="layer:N", strokeDash="cloud:N", tooltip=["layer", "cloud", "rank", "eigenvalue"])
    st.subheader("Eigenvalue spectra (log-log), decoders vs a Gaussian cloud of equal size")
    st.altair_chart(chart.properties(height=360).interactive())
    show_sql(spectra)
    cols = st.columns(3)
    with cols[0]:
        st.subheader("Power-law slope")
        long = fits.frame.melt(id_vars="layer", value_vars=["slope", "gaussian_slope"])
        st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
            x="layer:O", y="value:Q", color="variable:N"))
        show_sql(fits)
    with cols[1]:
        st.subheader("Clustering entropy")
        definition = st.radio("estimator", ["li2024", "atlas-kl5"], horizontal=True,
                              help="li2024: the geometry paper's (100 components, nearest "
                              "neighbour, 30 bootstraps, 95% interval); atlas-kl5: "
                              "Kozachenko-Leonenko k = 5 in 10 components (bootstrap std)")
        ent = cached(db, "entropy", definition)
        base = alt.Chart(ent.frame).encode(x="layer:O")
        st.altair_chart(base.mark_line(point=True).encode(y="entropy_gap:Q") +
                        base.mark_errorbar().encode(
                            y=alt.Y("lo:Q", title="H_gauss - H_kNN (nats)"), y2="hi:Q"
                        ).transform_calculate(lo="datum.entropy_gap - datum.error",
                                              hi="datum.entropy_gap + datum.error"))
        show_sql(ent)
    with cols[2]:
        st.subheader("Cosine tail mass")
        tails = cached(db, "tails")
        long = tails.frame.melt(id_vars="layer", value_vars=["tail_mass", "random_tail_mass"])
        st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
            x="layer:O", y="value:Q", color="variable:N"))
        show_sql(tails)
    st.dataframe(fits.frame, hide_index=True)


def pick_definition(frame: pd.DataFrame, help: str) -> str:
    """The definition to show, when the runs hold more than one (published first)."""
    found = sorted(frame["definition"].unique(), key=lambda d: (d == "atlas", d))
    if len(found) == 1:
        st.caption(f"definition: {found[0]} — {help}")
        return found[0]
    return st.radio("definition", found, horizontal=True, help=help)


def page_universality(db: str) -> None:
    if not analysis_page(db, "Universality", "universality_scores", "comparison of SAEs",
                         "atlas compare --pairs all"):
        return
    runs = cached(db, "universality")
    frame = runs.frame
    definition = pick_definition(frame, "lan2024 is Lan et al. 2024's definition; atlas marks "
                                 "runs whose settings depart from it")
    frame = frame[frame.definition == definition]
    score = st.radio("score", ["svcca", "rsa", "mean_corr"], horizontal=True)
    both = pd.concat([frame, frame.rename(columns={"layer_a": "layer_b", "layer_b": "layer_a"})])
    st.altair_chart(alt.Chart(both).mark_rect().encode(
        x="layer_a:O", y="layer_b:O", color=alt.Color(f"{score}:Q"),
        tooltip=["layer_a", "layer_b", score, "n_pairs"]).properties(width=360, height=360))
    st.dataframe(frame, hide_index=True)
    show_sql(runs)
    pair = st.selectbox("pair", [f"{a} | {b}" for a, b in zip(frame.sae_a, frame.sae_b)])
    a, b = pair.split(" | ")
    pairs = cached(db, "matched_pairs", a, b)
    st.subheader("Best matched features (kept pairs)")
    st.dataframe(pairs.frame[pairs.frame.definition == definition], hide_index=True)
    show_sql(pairs)


def page_absorption(db: str) -> None:
    if not analysis_page(db, "Absorption", "absorption_letters", "absorption analysis",
                         "atlas absorption"):
        return
    summary = cached(db, "absorption_summary")
    show_table(summary, "Per SAE (means over the scored letters)")
    sae_id = st.selectbox("SAE", summary.frame["sae_id"].unique().tolist())
    letters = cached(db, "absorption_letters", sae_id)
    frame = letters.frame
    definition = pick_definition(frame, "saebench is SAEBench's metric; atlas the atlas "
                                 "variant (decoder-row shares from b_dec)")
    frame = frame[frame.definition == definition]
    long = frame[frame.scored].melt(id_vars="letter", value_vars=["absorption_rate",
                                                                  "full_absorption_rate"])
    st.subheader("Absorption per letter")
    st.altair_chart(alt.Chart(long).mark_bar().encode(
        x="letter:N", xOffset="variable:N", y=alt.Y("value:Q", title="rate"),
        color="variable:N", tooltip=["letter", "variable", "value"]).properties(height=300))
    st.dataframe(frame, hide_index=True)
    show_sql(letters)
    scored = frame[frame.scored]["letter"].tolist()
    if not scored:
        st.info("No letter of this SAE was scored (its probes are too weak or too few words).")
        return
    letter = st.selectbox("letter", scored)
    examples = cached(db, "absorbed_examples", sae_id, letter)
    st.subheader(f"Absorbed words starting with '{letter}', with the latent that fires instead")
    st.dataframe(examples.frame[examples.frame.definition == definition], hide_index=True)
    show_sql(examples)


def page_sql(db: str) -> None:
    st.header("SQL")
    con = connection(db)
    st.caption("Read-only: one SELECT at a time; files, ATTACH and extensions are refused. "
               "The same queries run with `atlas sql --db ... \"SELECT ...\"`.")
    with st.expander("Views"):
        st.write(", ".join(q.view_names(con)))
    example = st.selectbox("example", list(q.EXAMPLE_QUERIES))
    # ?page=SQL&sql=... opens the page with a query (a link to share one).
    shared = st.query_params.get("sql")
    sql = st.text_area("query", value=shared or q.EXAMPLE_QUERIES[example], height=120)
    limits = sql_limits()
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
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf)
    st.download_button("Parquet", buf.getvalue(), "atlas.parquet")


RENDER = {"Overview": page_overview, "Feature": page_feature, "Analogy": page_analogy,
          "Lobes": page_lobes, "Crystals": page_crystals, "Galaxy": page_galaxy,
          "Universality": page_universality, "Absorption": page_absorption, "SQL": page_sql}


def main() -> None:
    st.set_page_config(page_title="Feature Atlas", layout="wide")
    path = db_path()
    try:
        connection(str(path))
    except AtlasError as exc:
        st.error(str(exc))
        return
    wanted = st.query_params.get("page", "Overview")
    page = st.sidebar.radio("Feature Atlas", PAGES,
                            index=PAGES.index(wanted) if wanted in PAGES else 0)
    st.sidebar.caption(f"{path}")
    try:
        RENDER[page](str(path))
    finally:
        for con in _OPEN.values():
            con.close()
        _OPEN.clear()


main()
