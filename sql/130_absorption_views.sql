-- Absorption per SAE and letter, with the main latents' labels.
CREATE OR REPLACE VIEW absorption AS
SELECT a.sae_id, s.layer, a.letter, a.probe_f1, a.n_split, a.absorption_rate,
       a.full_absorption_rate, a.n_true_positives, a.n_full, a.scored, a.main_latents,
       coalesce(m.main_labels, []) AS main_labels, a.main_cos, a.f1_by_k, a.n_test, a.run_id
FROM absorption_letters a
JOIN saes s USING (sae_id)
LEFT JOIN (
    SELECT l.sae_id, l.letter, list(coalesce(f.label, '') ORDER BY u.pos) AS main_labels
    FROM absorption_letters l, unnest(l.main_latents) WITH ORDINALITY AS u(feature, pos)
    LEFT JOIN features f ON f.sae_id = l.sae_id AND f.feature = u.feature
    GROUP BY l.sae_id, l.letter
) m ON m.sae_id = a.sae_id AND m.letter = a.letter
ORDER BY s.layer, a.sae_id, a.letter;

-- One row per SAE: the means over its scored letters.
CREATE OR REPLACE VIEW absorption_by_sae AS
SELECT a.sae_id, s.layer, count(*) FILTER (WHERE a.scored) AS letters_scored,
       avg(a.probe_f1) AS mean_probe_f1,
       avg(a.absorption_rate) FILTER (WHERE a.scored) AS mean_absorption_rate,
       avg(a.full_absorption_rate) FILTER (WHERE a.scored) AS mean_full_absorption_rate,
       avg(a.n_split) AS mean_n_split
FROM absorption_letters a
JOIN saes s USING (sae_id)
GROUP BY a.sae_id, s.layer
ORDER BY s.layer, a.sae_id;

-- Absorbed words (absorption fraction > 0 or full) with the absorbing latent's label.
CREATE OR REPLACE VIEW absorbed_examples AS
SELECT w.sae_id, w.letter, w.word, w.absorber, f.label AS absorber_label, w.absorber_cos,
       w.absorber_share, w.absorption_fraction, w."full", w.main_activation, w.probe_projection
FROM absorbed_words w
LEFT JOIN features f ON f.sae_id = w.sae_id AND f.feature = w.absorber
WHERE w.absorption_fraction > 0 OR w."full"
ORDER BY w.sae_id, w.letter, w.absorption_fraction DESC;
