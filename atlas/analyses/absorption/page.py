"""The Absorption page of the app."""

from __future__ import annotations

import altair as alt
import streamlit as st

from atlas.analyses.absorption import queries
from atlas import ui

TITLE = "Absorption"


def render(db: str) -> None:
    if not ui.analysis_page(db, "Absorption", "absorption_letters", "absorption analysis",
                         "atlas absorption"):
        return
    summary = ui.cached(db, queries.absorption_summary)
    ui.show_table(summary, "Per SAE (means over the scored letters)")
    sae_id = st.selectbox("SAE", summary.frame["sae_id"].unique().tolist())
    letters = ui.cached(db, queries.absorption_letters, sae_id)
    frame = letters.frame
    definition = ui.pick_definition(frame, "saebench is SAEBench's metric; atlas the atlas "
                                 "variant (decoder-row shares from b_dec)")
    frame = frame[frame.definition == definition]
    long = frame[frame.scored].melt(id_vars="letter", value_vars=["absorption_rate",
                                                                  "full_absorption_rate"])
    st.subheader("Absorption per letter")
    st.altair_chart(alt.Chart(long).mark_bar().encode(
        x="letter:N", xOffset="variable:N", y=alt.Y("value:Q", title="rate"),
        color="variable:N", tooltip=["letter", "variable", "value"]).properties(height=300))
    st.dataframe(frame, hide_index=True)
    ui.show_sql(letters)
    scored = frame[frame.scored]["letter"].tolist()
    if not scored:
        st.info("No letter of this SAE was scored (its probes are too weak or too few words).")
        return
    letter = st.selectbox("letter", scored)
    examples = ui.cached(db, queries.absorbed_examples, sae_id, letter)
    st.subheader(f"Absorbed words starting with '{letter}', with the latent that fires instead")
    st.dataframe(examples.frame[examples.frame.definition == definition], hide_index=True)
    ui.show_sql(examples)
