-- Feature pages: density, the SAE's density histogram, the logit lens with labels.

-- Per feature: tokens with a positive activation (the SAELens / Neuronpedia feature density,
-- act > 0) and the firing rate above the harvest threshold (feature_cards.firing_rate).
CREATE OR REPLACE VIEW feature_density AS
SELECT f.sae_id, f.feature,
       coalesce(a.active, 0) AS active_count,
       coalesce(a.active, 0) / h.n_tokens::DOUBLE AS density,
       CASE WHEN a.active > 0 THEN log10(a.active / h.n_tokens::DOUBLE) END AS log10_density,
       f.firing_count / h.n_tokens::DOUBLE AS firing_rate
FROM features f JOIN harvests h USING (sae_id)
LEFT JOIN (SELECT sae_id, feature, sum(count)::BIGINT AS active FROM activation_histograms
           GROUP BY ALL) a USING (sae_id, feature);

-- Per SAE: features by log10 density in bins a quarter decade wide; features never active
-- have NULL bin edges.
CREATE OR REPLACE VIEW density_histogram AS
SELECT sae_id,
       floor(log10_density * 4) / 4 AS log10_lo,
       floor(log10_density * 4) / 4 + 0.25 AS log10_hi,
       count(*) AS n_features
FROM feature_density
GROUP BY ALL ORDER BY sae_id, log10_lo NULLS FIRST;

-- The logit lens with each feature's layer and label: features that promote ' Paris' are
-- SELECT * FROM feature_logit_lens WHERE direction = 'top' AND token = ' Paris'.
CREATE OR REPLACE VIEW feature_logit_lens AS
SELECT l.sae_id, s.layer, l.feature, f.label, l.direction, l.rank, l.token, l.token_id,
       l.value
FROM feature_logits l JOIN saes s USING (sae_id) JOIN features f USING (sae_id, feature);
