-- Explanations of features (atlas/analyses/explanations, `atlas explain`).
--   explanations: one per (feature, explainer, template). `explainer` names the LLM that wrote it
--     ('hf:<model>', 'openai:<url>#<model>') or 'top-tokens' (the tokens the feature fires on
--     most, no LLM: the baseline explainer); `template` the prompt and its version; `examples`
--     the (block_id, position) of the examples shown.
--   explanation_scores: Delphi's detection score of an explanation: a scorer LLM, given only the
--     explanation, says of each held-out text (activating examples from the feature's deciles,
--     and texts of the corpus on which the feature is zero) whether the feature fires on it.
--     `balanced_accuracy` = (TPR + TNR) / 2 over the parsed answers (Delphi reports it as
--     'accuracy'); the `baseline_*` columns score the same explanation on another feature's
--     held-out texts (`baseline_feature`), so a score means something.
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
    method                     VARCHAR NOT NULL,  -- 'delphi-detection'
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
