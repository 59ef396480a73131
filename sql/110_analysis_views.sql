-- Public query surface of the analyses.

-- Power-law fit of log(eigenvalue) against log(rank) per SAE, beside the same fit for an
-- isotropic Gaussian cloud of equal size, over the stored rank range.
CREATE OR REPLACE VIEW layer_spectra AS
WITH fits AS (
    SELECT sp.sae_id, sp.cloud,
           regr_slope(ln(sp.eigenvalue), ln(sp.rank)) AS slope,
           regr_intercept(ln(sp.eigenvalue), ln(sp.rank)) AS intercept,
           regr_r2(ln(sp.eigenvalue), ln(sp.rank)) AS r2,
           any_value(g.rank_lo) AS rank_lo, any_value(g.rank_hi) AS rank_hi
    FROM spectra sp JOIN galaxy_stats g USING (sae_id)
    WHERE sp.rank BETWEEN g.rank_lo AND g.rank_hi AND sp.eigenvalue > 0
    GROUP BY sp.sae_id, sp.cloud)
SELECT s.model_id, s.layer, d.sae_id, d.slope, d.intercept, d.r2, d.rank_lo, d.rank_hi,
       g.slope AS gaussian_slope, g.r2 AS gaussian_r2
FROM fits d
JOIN fits g ON g.sae_id = d.sae_id AND g.cloud = 'gaussian'
JOIN saes s ON s.sae_id = d.sae_id
WHERE d.cloud = 'decoder'
ORDER BY s.model_id, s.layer;

-- Clustering entropy per layer: H_gauss - H_kNN of the decoder cloud (0 = Gaussian).
-- One row per SAE and definition: 'li2024' (the geometry paper's estimator: 100 components,
-- nearest neighbour with its offset, 30 bootstraps; error = 95% half-width) and 'atlas-kl5'
-- (Kozachenko-Leonenko k = 5 in 10 components; error = bootstrap standard deviation).
CREATE OR REPLACE VIEW clustering_entropy AS
SELECT * FROM (
    SELECT s.model_id, s.layer, g.sae_id, 'li2024' AS definition,
           g.li2024_entropy_gap AS entropy_gap, g.li2024_entropy_ci95 AS error,
           '95% interval' AS error_kind, g.li2024_h_knn AS h_knn, g.li2024_h_gauss AS h_gauss,
           g.li2024_entropy_dims AS entropy_dims
    FROM galaxy_stats g JOIN saes s USING (sae_id)
    WHERE g.li2024_entropy_gap IS NOT NULL
    UNION ALL
    SELECT s.model_id, s.layer, g.sae_id, 'atlas-kl5', g.entropy_gap, g.entropy_stderr,
           'bootstrap std', g.h_knn, g.h_gauss, g.entropy_dims
    FROM galaxy_stats g JOIN saes s USING (sae_id))
ORDER BY model_id, layer, definition DESC;

-- Tail mass of pairwise decoder cosines against as many random unit vectors.
CREATE OR REPLACE VIEW cosine_tails AS
SELECT s.layer, g.tail_mass, g.random_tail_mass, g.tail_mass / g.random_tail_mass AS ratio,
       g.tail_cut, g.sae_id, s.model_id
FROM galaxy_stats g JOIN saes s USING (sae_id)
ORDER BY s.model_id, s.layer;

-- The five co-occurrence affinities from block counts: n_ij (both fire), n_i, n_j, n blocks.
CREATE OR REPLACE MACRO cooc_jaccard(n_ij, n_i, n_j) AS n_ij / (n_i + n_j - n_ij)::DOUBLE;
CREATE OR REPLACE MACRO cooc_dice(n_ij, n_i, n_j) AS 2.0 * n_ij / (n_i + n_j);
CREATE OR REPLACE MACRO cooc_overlap(n_ij, n_i, n_j) AS n_ij / least(n_i, n_j)::DOUBLE;
CREATE OR REPLACE MACRO cooc_smc(n_ij, n_i, n_j, n) AS (n - n_i - n_j + 2 * n_ij) / n::DOUBLE;
CREATE OR REPLACE MACRO cooc_phi(n_ij, n_i, n_j, n) AS
    (n::DOUBLE * n_ij - n_i::DOUBLE * n_j)
      / nullif(sqrt(n_i::DOUBLE * (n - n_i) * n_j * (n - n_j)), 0);

-- Co-occurrence affinities of every pair that fired together in at least one block.
CREATE OR REPLACE VIEW affinity AS
SELECT c.sae_id, c.i, c.j, c.n_ij,
       fi.block_count AS n_i, fj.block_count AS n_j, h.n_blocks AS n,
       cooc_jaccard(c.n_ij, fi.block_count, fj.block_count) AS jaccard,
       cooc_dice(c.n_ij, fi.block_count, fj.block_count) AS dice,
       cooc_overlap(c.n_ij, fi.block_count, fj.block_count) AS overlap,
       cooc_smc(c.n_ij, fi.block_count, fj.block_count, h.n_blocks) AS smc,
       cooc_phi(c.n_ij, fi.block_count, fj.block_count, h.n_blocks) AS phi
FROM cooccurrence c
JOIN harvests h USING (sae_id)
JOIN features fi ON fi.sae_id = c.sae_id AND fi.feature = c.i
JOIN features fj ON fj.sae_id = c.sae_id AND fj.feature = c.j;

-- One feature's co-occurrence partners with all five affinities, whatever the storage form
-- (harvests.cooccurrence_storage): SELECT * FROM partners('sae', 42) ORDER BY phi DESC LIMIT 10.
-- Exact counts for every stored form; under 'matrix' and 'top-<m>' only each affinity's m best
-- partners are here (a 'matrix' harvest keeps every count in its file, atlas.blockgram).
CREATE OR REPLACE MACRO partners(sae, f) AS TABLE
WITH counted AS (
    SELECT CASE WHEN c.i = f THEN c.j ELSE c.i END AS partner, c.n_ij
    FROM cooccurrence c WHERE c.sae_id = sae AND (c.i = f OR c.j = f)
    UNION ALL
    -- partners NULL: every feature in order (the 'rows' form of schema version 1)
    SELECT unnest(coalesce(r.partners::BIGINT[], range(len(r.counts)))) AS partner,
           unnest(r.counts) AS n_ij
    FROM cooccurrence_rows r WHERE r.sae_id = sae AND r.feature = f
)
SELECT c.partner::INTEGER AS partner, fj.label, c.n_ij,
       fi.block_count AS n_i, fj.block_count AS n_j, h.n_blocks AS n,
       cooc_jaccard(c.n_ij, fi.block_count, fj.block_count) AS jaccard,
       cooc_dice(c.n_ij, fi.block_count, fj.block_count) AS dice,
       cooc_overlap(c.n_ij, fi.block_count, fj.block_count) AS overlap,
       cooc_smc(c.n_ij, fi.block_count, fj.block_count, h.n_blocks) AS smc,
       cooc_phi(c.n_ij, fi.block_count, fj.block_count, h.n_blocks) AS phi
FROM counted c
JOIN harvests h ON h.sae_id = sae
JOIN features fi ON fi.sae_id = sae AND fi.feature = f
JOIN features fj ON fj.sae_id = sae AND fj.feature = c.partner
WHERE c.partner <> f AND c.n_ij > 0;

-- Each lobe (co-occurrence cluster) with its size, how code-heavy its blocks are, and the
-- labels of its most frequent features.
CREATE OR REPLACE VIEW lobes AS
SELECT cl.sae_id, s.layer, cl.metric, cl.k, cl.cluster,
       count(*) AS n_features,
       avg(fs.code_share) AS code_share,
       sum(f.firing_count) AS firings,
       list(f.label ORDER BY f.firing_count DESC)[1:6] AS top_labels,
       cl.run_id
FROM clusters cl
JOIN saes s USING (sae_id)
JOIN features f ON f.sae_id = cl.sae_id AND f.feature = cl.feature
LEFT JOIN feature_sources fs ON fs.sae_id = cl.sae_id AND fs.feature = cl.feature
WHERE cl.method = 'cooccurrence'
GROUP BY cl.sae_id, s.layer, cl.metric, cl.k, cl.cluster, cl.run_id
ORDER BY cl.sae_id, cl.metric, cl.k, code_share DESC;

-- Spatial modularity per SAE, metric and k, with the layer.
CREATE OR REPLACE VIEW lobe_modularity AS
SELECT s.layer, t.* EXCLUDE (run_id), t.run_id
FROM lobe_tests t JOIN saes s USING (sae_id)
ORDER BY s.layer, t.metric, t.k;

-- Parallelogram quality and held-out analogy top-1 / top-5 (closed vocabulary, mean-centred
-- cosine) before/after projecting out distractor directions, per task and residual point
-- (`hook`: 'blocks.L.hook_resid_post' is block L's output).
CREATE OR REPLACE VIEW crystal_quality AS
SELECT model_id, layer, hook, space, task, definition, representation, n_pairs, n_queries,
       parallelogram_quality, accuracy_before AS top1_before, accuracy_after AS top1_after,
       top5_before, top5_after, accuracy_after - accuracy_before AS removal_gain, run_id
FROM crystal_tasks
ORDER BY model_id, layer, hook, space, task;

-- Word representations per residual point: held-out top-1/top-5 before and after distractor
-- removal; `chosen` is the one the run used (best top-1 on the fitting pairs unless set).
CREATE OR REPLACE VIEW word_representation_quality AS
SELECT model_id, layer, hook, representation, chosen, fit_top1, top1_before, top5_before,
       distractor_dims, top1_after, top5_after, n_queries, run_id
FROM word_representations
ORDER BY model_id, layer, hook, representation;

-- The paper's crystal experiment (li2024): silhouette of task classes among pair differences,
-- raw (n_components 0) and after LDA, in-sample as the paper and on held-out pairs.
CREATE OR REPLACE VIEW crystal_separation AS
SELECT model_id, layer, hook, hidden_state, definition, n_components, silhouette,
       silhouette_heldout, run_id
FROM crystal_lda
ORDER BY model_id, layer, hook, n_components;

-- Crystal searches: how often the quadruples found are two pairs of one relation, before and
-- after distractor removal, against random quadruples of the same words.
CREATE OR REPLACE VIEW crystal_search AS
SELECT model_id, layer, hook, space, representation, distractor_dims, same_relation_before,
       same_relation_after, same_relation_chance, silhouette_before, silhouette_after,
       length_corr, token_corr, run_id
FROM distractors
ORDER BY model_id, layer, hook, space;
