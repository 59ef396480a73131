-- Public query surface over the harvest tables.

-- One row per SAE: its layer, quality and harvest size.
CREATE OR REPLACE VIEW sae_overview AS
SELECT s.sae_id, s.model_id, s.layer, s.hook, s.hook_out, s.architecture, s.d_in, s.d_sae, s.k,
       s.l0, s.explained_variance, s.dead_fraction, s.release, s.release_sae_id,
       s.neuronpedia_id,
       h.n_tokens, h.n_blocks, h.threshold,
       (SELECT count(*) FROM features f WHERE f.sae_id = s.sae_id AND f.firing_count > 0)
           AS live_features,
       h.created_at
FROM saes s LEFT JOIN harvests h USING (sae_id)
ORDER BY s.model_id, s.layer, s.sae_id;

-- Features with their firing density and label, and their Neuronpedia page when the SAE is
-- a published one that Neuronpedia hosts.
CREATE OR REPLACE VIEW feature_cards AS
SELECT f.sae_id, s.layer, f.feature, f.label, f.firing_count,
       f.firing_count / h.n_tokens::DOUBLE AS firing_rate,
       f.block_count, f.block_count / h.n_blocks::DOUBLE AS block_rate,
       f.mean_act, f.max_act, f.top_tokens,
       'https://www.neuronpedia.org/' || s.neuronpedia_id || '/' || f.feature AS neuronpedia_url
FROM features f JOIN saes s USING (sae_id) JOIN harvests h USING (sae_id);

-- Share of each feature's firing blocks that are code, from block_firings and blocks: over
-- every block where it fires, or over its best blocks where the harvest kept only those
-- (harvests.block_firings_kept; `blocks` says how many).
CREATE OR REPLACE VIEW feature_sources AS
SELECT bf.sae_id, bf.feature,
       count(*) AS blocks,
       avg(CASE WHEN b.source = 'code' THEN 1.0 ELSE 0.0 END) AS code_share
FROM block_firings bf
JOIN harvests h USING (sae_id)
JOIN blocks b ON b.corpus_id = h.corpus AND b.block_id = bf.block_id
GROUP BY ALL;
