"""The Universality page of the app."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from atlas.analyses.universality import queries
from atlas import ui

TITLE = "Universality"


def render(db: str) -> None:
    if not ui.analysis_page(db, "Universality", "universality_scores", "comparison of SAEs",
                         "atlas compare --pairs all"):
        return
    runs = ui.cached(db, queries.universality)
    frame = runs.frame
    definition = ui.pick_definition(frame, "lan2024 is Lan et al. 2024's definition; atlas marks "
                                 "runs whose settings depart from it")
    frame = frame[frame.definition == definition]
    score = st.radio("score", ["svcca", "rsa", "mean_corr"], horizontal=True)
    both = pd.concat([frame, frame.rename(columns={"layer_a": "layer_b", "layer_b": "layer_a"})])
    st.altair_chart(alt.Chart(both).mark_rect().encode(
        x="layer_a:O", y="layer_b:O", color=alt.Color(f"{score}:Q"),
        tooltip=["layer_a", "layer_b", score, "n_pairs"]).properties(width=360, height=360))
    st.dataframe(frame, hide_index=True)
    ui.show_sql(runs)
    pair = st.selectbox("pair", [f"{a} | {b}" for a, b in zip(frame.sae_a, frame.sae_b)])
    a, b = pair.split(" | ")
    pairs = ui.cached(db, queries.matched_pairs, a, b)
    st.subheader("Best matched features (kept pairs)")
    st.dataframe(pairs.frame[pairs.frame.definition == definition], hide_index=True)
    ui.show_sql(pairs)
