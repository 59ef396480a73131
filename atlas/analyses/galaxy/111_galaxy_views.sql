-- The galaxy analysis's views.

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
