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
               "LLM), scored by Delphi's detection and fuzzing scorers")
    text = st.text_input("search explanations (BM25 over their words)", key="explain_q")
    embedders = ui.cached(db, queries.embedders).frame["embedder"].tolist()
    by_meaning = (st.selectbox("and by meaning, embedded by", ["(words only)", *embedders],
                               key="explain_embedder") if embedders else "(words only)")
    if text.strip():
        hits = ui.cached(db, queries.search, text)
        if len(hits.frame):
            ui.show_table(hits, f"Features whose explanations match '{text}'")
        else:
            st.info(f"no explanation has a word of '{text}'")
        if by_meaning != "(words only)":
            from atlas.analyses.explanations.command import search_by_meaning

            with ui.connection(db).cursor() as cur:
                near = search_by_meaning(cur, text, _embedder(by_meaning), 20)
            st.subheader(f"Nearest by meaning ({by_meaning}, cosine through FAISS)")
            st.dataframe(near)
    quality = ui.cached(db, queries.quality)
    if len(quality.frame):
        ui.show_table(quality, "Scores (Delphi's detection and fuzzing, balanced accuracy; "
                      "baseline: the same explanation on another feature's texts)")
    sae = ui.choose_sae(db, "explain_sae")
    ui.show_table(ui.cached(db, queries.best, sae),
                  "Explained features, best scored first (mean over the scoring methods)")


@st.cache_resource(max_entries=2)
def _embedder(name: str):
    from atlas.analyses.explanations.backends import Embedder

    return Embedder(name.removeprefix("hf:"))


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
