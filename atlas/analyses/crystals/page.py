"""The Crystals page of the app."""

from __future__ import annotations

import altair as alt
import streamlit as st

from atlas.analyses.crystals import queries
from atlas import ui

TITLE = "Crystals"


def render(db: str) -> None:
    if not ui.analysis_page(db, "Crystals", "crystal_tasks", "crystals",
                         "atlas analyze --analyses crystals"):
        return
    layers = ui.cached(db, queries.crystal_layers).frame
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
    sep = ui.cached(db, queries.crystal_separation, hook)
    diffs = ui.cached(db, queries.crystal_differences, hook)
    if len(diffs.frame):
        charts = []
        for kind, title in (("pca", "PCA of differences"), ("lda", "first two LDA components")):
            frame = diffs.frame.rename(columns={f"x_{kind}": "x", f"y_{kind}": "y"})
            charts.append(alt.Chart(frame).mark_circle(size=30).encode(
                x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None), color="task:N",
                tooltip=["task", "subject", "object", "heldout"]).properties(
                title=title, width=300, height=300))
        st.altair_chart(alt.hconcat(*charts))
    ui.show_table(sep)

    st.subheader("Word representations")
    st.caption("Held-out analogies b - a + c in a closed vocabulary, mean-centred cosine; "
               "'chosen' is the one used below.")
    ui.show_table(ui.cached(db, queries.word_representations, hook))

    quality = ui.cached(db, queries.crystal_quality, hook, space)
    ui.show_table(quality, "Tasks before and after distractor removal")
    task = st.selectbox("task", quality.frame["task"].tolist())
    pts = ui.cached(db, queries.crystal_points, hook, space, task)
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
        ui.show_sql(pts)
    ui.show_table(ui.cached(db, queries.crystal_search, hook, space),
               "Crystal search: quadruples that are two pairs of one relation")
    ui.show_table(ui.cached(db, queries.found_crystals, hook, space),
               "Crystals found (after distractor removal, held-out words)")
