-- The explanations' views and search (atlas/analyses/explanations).

-- Every explanation with its scores (one row per scoring method and scorer; NULL when not
-- scored) and the baseline's (the same explanation judged on another feature's texts).
CREATE OR REPLACE VIEW explained_features AS
SELECT e.sae_id, s2.layer, e.feature, e.explainer, e.template, e.explanation, sc.method,
       sc.scorer,
       sc.balanced_accuracy, sc.baseline_balanced_accuracy, sc.accuracy, sc.n_failed,
       f.label, f.firing_count
FROM explanations e
JOIN saes s2 USING (sae_id)
LEFT JOIN explanation_scores sc USING (sae_id, feature, explainer, template)
LEFT JOIN features f USING (sae_id, feature);

-- Per SAE, explainer and scorer: how well the explanations predict where their features fire,
-- against the same explanations on other features' texts.
CREATE OR REPLACE VIEW explanation_quality AS
SELECT sae_id, explainer, template, scorer, method, count(*) AS n_features,
       avg(balanced_accuracy) AS balanced_accuracy,
       avg(baseline_balanced_accuracy) AS baseline_balanced_accuracy,
       avg(balanced_accuracy - baseline_balanced_accuracy) AS margin,
       sum(n_failed) AS n_failed
FROM explanation_scores GROUP BY ALL;

-- Search by meaning, offline: BM25 (k1 = 1.2, b = 0.75, Lucene's idf
-- ln(1 + (N - df + 0.5) / (df + 0.5))) of the query's terms over the explanations' terms
-- (lower-case runs of letters and digits), every explainer's explanations, the top-token ones
-- among them. SELECT * FROM search_explanations('chemistry molecules') LIMIT 10
CREATE OR REPLACE MACRO search_explanations(query) AS TABLE
WITH q AS (SELECT DISTINCT unnest(regexp_extract_all(lower(query), '[a-z0-9]+')) AS term),
docs AS (SELECT DISTINCT sae_id, feature, explainer, template, n_terms FROM explanation_terms),
stats AS (SELECT count(*) AS n, avg(n_terms) AS avgdl FROM docs),
df AS (SELECT term, count(*) AS df FROM explanation_terms JOIN q USING (term) GROUP BY term),
scored AS (
    SELECT t.sae_id, t.feature, t.explainer, t.template,
           sum(ln(1 + (stats.n - df.df + 0.5) / (df.df + 0.5))
               * t.tf * 2.2 / (t.tf + 1.2 * (0.25 + 0.75 * t.n_terms / stats.avgdl))) AS score
    FROM explanation_terms t JOIN df USING (term), stats
    GROUP BY ALL)
SELECT s.score, s.sae_id, s.feature, s.explainer, e.explanation, f.label
FROM scored s
JOIN explanations e USING (sae_id, feature, explainer, template)
LEFT JOIN features f USING (sae_id, feature)
ORDER BY s.score DESC, s.sae_id, s.feature, s.explainer;
