"""The Lobes page of the app."""

from __future__ import annotations

import altair as alt
import streamlit as st

from atlas.analyses.lobes import queries
from atlas import ui

TITLE = "Lobes"


def render(db: str) -> None:
    if not ui.analysis_page(db, "Lobes", "clusters", "lobes", "atlas analyze --analyses lobes"):
        return
    sae = ui.choose_sae(db, "lobes_sae")
    choices = ui.cached(db, queries.lobe_choices, sae).frame
    if not len(choices):
        ui.missing(f"lobes for {sae}", "atlas analyze --analyses lobes")
        return
    cols = st.columns(3)
    metric = cols[0].selectbox("affinity", sorted(choices["metric"].unique()))
    ks = sorted(choices[choices.metric == metric]["k"].unique())
    k = int(cols[1].selectbox("k", ks, index=len(ks) - 1))
    colour = cols[2].radio("colour by", ["co-occurrence lobe", "geometric cluster"])
    method, by = (("cooccurrence", metric) if colour == "co-occurrence lobe"
                  else ("geometry", "angular"))
    points = ui.cached(db, queries.lobe_map, sae, method, by, k)
    if len(points.frame):
        st.altair_chart(alt.Chart(points.frame).mark_circle(size=18, opacity=0.7).encode(
            x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None),
            color=alt.Color("cluster:N"), tooltip=["feature", "label", "cluster"]
        ).properties(height=480).interactive())
        ui.show_sql(points)
    else:
        ui.missing("2-D map", "atlas analyze --analyses lobes")
    tests = ui.cached(db, queries.lobe_tests, sae, metric, k).frame
    if len(tests):
        t = tests.iloc[0]
        cols = st.columns(3)
        cols[0].metric("AMI lobes vs geometry", f"{t['ami']:.3f}",
                       f"z = {t['ami_z']:.1f} vs {int(t['n_permutations'])} shuffles")
        cols[1].metric("lobe from decoder (accuracy)", f"{t['logreg_accuracy']:.2f}",
                       f"z = {t['logreg_z']:.1f} vs {int(t['logreg_draws'])} random draws "
                       f"({t['logreg_random_accuracy']:.2f} ± {t['logreg_random_std']:.2f})")
        cols[2].metric("largest lobe's share", f"{t['chance']:.2f}")
        ui.show_sql(ui.cached(db, queries.lobe_tests, sae, metric, k))
    table = ui.cached(db, queries.lobe_table, sae, metric, k)
    named = ui.feature_names(db, sae)
    if named:  # each lobe named by its most-firing explained features (`atlas explain`)
        members = ui.cached(db, queries.lobe_map, sae, "cooccurrence", metric, k).frame
        frame = members.sort_values("firing_count", ascending=False)
        table.frame["explained as"] = table.frame["cluster"].map(
            lambda c: " | ".join([named[f] for f in frame[frame.cluster == c]["feature"]
                                  if f in named][:3]))
    ui.show_table(table, "Composition")


def feature_section(db: str, sae: str, feature: int) -> None:
    """A feature's lobes, on its Feature page."""
    lobes = ui.cached(db, queries.feature_lobes, sae, feature)
    st.subheader("Its lobes")
    if len(lobes.frame):
        ui.show_table(lobes)
    else:
        ui.missing("lobes", "atlas analyze --analyses lobes")
