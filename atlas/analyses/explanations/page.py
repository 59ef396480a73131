"""The Explanations page of the app, and the explanations on every Feature page."""

from __future__ import annotations

import streamlit as st

from atlas import ui
from atlas.analyses.explanations import queries

TITLE = "Explanations"
HOW = "atlas explain --sae <SAE>"


def render(db: str) -> None:
    st.header(TITLE)
    if not ui.has_rows(db, "explanations"):
        ui.missing("explanations", HOW)
        return
    st.caption("Explanations written by an explainer LLM from each feature's top examples and "
               "logit lens (`explanations.explainer`; 'top-tokens': the tokens it fires on, no "
               "LLM), scored by Delphi's detection scorer")
    text = st.text_input("search explanations (BM25 over their words)", key="explain_q")
    if text.strip():
        hits = ui.cached(db, queries.search, text)
        if len(hits.frame):
            ui.show_table(hits, f"Features whose explanations match '{text}'")
        else:
            st.info(f"no explanation has a word of '{text}'")
    quality = ui.cached(db, queries.quality)
    if len(quality.frame):
        ui.show_table(quality, "Scores (Delphi's detection, balanced accuracy; baseline: the "
                      "same explanation on another feature's texts)")
    sae = ui.choose_sae(db, "explain_sae")
    ui.show_table(ui.cached(db, queries.best, sae), "Explained features, best scored first")


def feature_section(db: str, sae: str, feature: int) -> None:
    """A feature's explanations, on its Feature page."""
    st.subheader("Explanations")
    shown = ui.cached(db, queries.feature_explanations, sae, feature)
    if len(shown.frame):
        ui.show_table(shown)
    else:
        ui.missing("explanations", f"atlas explain --sae {sae} --features {feature}")


def feature_names(db: str, sae: str) -> dict[int, str]:
    """The explained features' names (their best LLM explanation), for other pages to name
    features and groups of features by."""
    if not ui.has_rows(db, "explanations"):
        return {}
    frame = ui.cached(db, queries.names, sae).frame
    return dict(zip(frame["feature"].astype(int), frame["explanation"]))
