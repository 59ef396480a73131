-- Explanations of features (atlas/analyses/explanations, `atlas explain`).
--   explanations: one per (feature, explainer, template). `explainer` names the LLM that wrote it
--     ('hf:<model>', 'openai:<url>#<model>') or 'top-tokens' (the tokens the feature fires on
--     most, no LLM: the baseline explainer); `template` the prompt and its version; `examples`
--     the (block_id, position) of the examples shown.
--   explanation_scores: Delphi's scores of an explanation, by a scorer LLM given only the
--     explanation. 'delphi-detection': of each held-out text (activating examples from the
--     feature's deciles, and corpus texts on which the feature is zero), does the feature fire
--     on it? 'delphi-fuzzing': of the same texts with a token marked (the firing token; a
--     random token of a zero text), is the marked token one it fires on? `balanced_accuracy` =
--     (TPR + TNR) / 2 over the parsed answers (Delphi reports it as 'accuracy'); the
--     `baseline_*` columns score the same explanation on another feature's held-out texts
--     (`baseline_feature`), so a score means something.
--   explanation_terms: the words of each explanation (lower case, [a-z0-9]+) with their counts,
--     what `search_explanations` ranks by (BM25).
CREATE TABLE explanations (
    sae_id      VARCHAR NOT NULL,
    feature     INTEGER NOT NULL,
    explainer   VARCHAR NOT NULL,
    template    VARCHAR NOT NULL,
    explanation VARCHAR NOT NULL,
    examples    STRUCT(block_id INTEGER, "position" INTEGER)[] NOT NULL,
    seconds     DOUBLE NOT NULL,             -- time the explainer took
    created_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (sae_id, feature, explainer, template)
);

CREATE TABLE explanation_scores (
    sae_id                     VARCHAR NOT NULL,
    feature                    INTEGER NOT NULL,
    explainer                  VARCHAR NOT NULL,
    template                   VARCHAR NOT NULL,
    scorer                     VARCHAR NOT NULL,
    method                     VARCHAR NOT NULL,  -- 'delphi-detection' or 'delphi-fuzzing'
    n_activating               INTEGER NOT NULL,
    n_non_activating           INTEGER NOT NULL,
    n_failed                   INTEGER NOT NULL,  -- answers that did not parse (left out)
    accuracy                   DOUBLE,
    balanced_accuracy          DOUBLE,
    baseline_feature           INTEGER,
    baseline_accuracy          DOUBLE,
    baseline_balanced_accuracy DOUBLE,
    seconds                    DOUBLE NOT NULL,
    created_at                 TIMESTAMP NOT NULL,
    PRIMARY KEY (sae_id, feature, explainer, template, scorer, method)
);

CREATE TABLE explanation_terms (
    sae_id    VARCHAR NOT NULL,
    feature   INTEGER NOT NULL,
    explainer VARCHAR NOT NULL,
    template  VARCHAR NOT NULL,
    term      VARCHAR NOT NULL,
    tf        INTEGER NOT NULL,
    n_terms   INTEGER NOT NULL              -- the explanation's length in terms
);

-- explanation_embeddings: each explanation embedded by a text model (`atlas explain --embedder`:
-- mean-pooled last hidden states, unit length), for `atlas explain --search` by meaning (FAISS,
-- inner product).
CREATE TABLE explanation_embeddings (
    sae_id    VARCHAR NOT NULL,
    feature   INTEGER NOT NULL,
    explainer VARCHAR NOT NULL,
    template  VARCHAR NOT NULL,
    embedder  VARCHAR NOT NULL,
    vector    FLOAT[] NOT NULL,
    PRIMARY KEY (sae_id, feature, explainer, template, embedder)
);
