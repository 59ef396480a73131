"""The Galaxy page of the app."""

from __future__ import annotations

import altair as alt
import streamlit as st

from atlas.analyses.galaxy import queries
from atlas import ui

TITLE = "Galaxy"


def render(db: str) -> None:
    if not ui.analysis_page(db, "Galaxy", "spectra", "galaxy analysis",
                         "atlas analyze --analyses galaxy"):
        return
    spectra = ui.cached(db, queries.spectra)
    fits = ui.cached(db, queries.layer_spectra)
    chart = alt.Chart(spectra.frame).mark_line().encode(
        x=alt.X("rank:Q", scale=alt.Scale(type="log")),
        y=alt.Y("eigenvalue:Q", scale=alt.Scale(type="log")),
        color="layer:N", strokeDash="cloud:N", tooltip=["layer", "cloud", "rank", "eigenvalue"])
    st.subheader("Eigenvalue spectra (log-log), decoders vs a Gaussian cloud of equal size")
    st.altair_chart(chart.properties(height=360).interactive())
    ui.show_sql(spectra)
    cols = st.columns(3)
    with cols[0]:
        st.subheader("Power-law slope")
        long = fits.frame.melt(id_vars="layer", value_vars=["slope", "gaussian_slope"])
        st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
            x="layer:O", y="value:Q", color="variable:N"))
        ui.show_sql(fits)
    with cols[1]:
        st.subheader("Clustering entropy")
        definition = st.radio("estimator", ["li2024", "atlas-kl5"], horizontal=True,
                              help="li2024: the geometry paper's (100 components, nearest "
                              "neighbour, 30 bootstraps, 95% interval); atlas-kl5: "
                              "Kozachenko-Leonenko k = 5 in 10 components (bootstrap std)")
        ent = ui.cached(db, queries.entropy, definition)
        base = alt.Chart(ent.frame).encode(x="layer:O")
        st.altair_chart(base.mark_line(point=True).encode(y="entropy_gap:Q") +
                        base.mark_errorbar().encode(
                            y=alt.Y("lo:Q", title="H_gauss - H_kNN (nats)"), y2="hi:Q"
                        ).transform_calculate(lo="datum.entropy_gap - datum.error",
                                              hi="datum.entropy_gap + datum.error"))
        ui.show_sql(ent)
    with cols[2]:
        st.subheader("Cosine tail mass")
        tails = ui.cached(db, queries.tails)
        long = tails.frame.melt(id_vars="layer", value_vars=["tail_mass", "random_tail_mass"])
        st.altair_chart(alt.Chart(long).mark_line(point=True).encode(
            x="layer:O", y="value:Q", color="variable:N"))
        ui.show_sql(tails)
    st.dataframe(fits.frame, hide_index=True)
