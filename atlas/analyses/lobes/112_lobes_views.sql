-- The lobe analysis's views.

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
