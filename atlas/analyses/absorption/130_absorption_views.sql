-- Absorption per SAE, definition and letter, with the main latents' labels.
CREATE OR REPLACE VIEW absorption AS
SELECT a.sae_id, s.layer, r.definition, a.letter, a.probe_f1, a.n_split,
       len(a.main_latents) AS n_main, a.absorption_rate, a.full_absorption_rate,
       a.n_true_positives, a.n_full, a.scored, a.main_latents,
       coalesce(m.main_labels, []) AS main_labels, a.main_cos, a.f1_by_k, a.n_test, a.run_id
FROM absorption_letters a
JOIN analysis_runs r USING (run_id)
JOIN saes s USING (sae_id)
LEFT JOIN (
    SELECT l.run_id, l.letter, list(coalesce(f.label, '') ORDER BY u.pos) AS main_labels
    FROM absorption_letters l, unnest(l.main_latents) WITH ORDINALITY AS u(feature, pos)
    LEFT JOIN features f ON f.sae_id = l.sae_id AND f.feature = u.feature
    GROUP BY l.run_id, l.letter
) m ON m.run_id = a.run_id AND m.letter = a.letter
ORDER BY s.layer, a.sae_id, r.definition, a.letter;

-- One row per SAE and definition: the means over its scored letters. An SAE with fewer scored
-- letters than its run's min_letters (SAEBench: 20) is not evaluated: its means are NULL.
-- mean_split_features counts the main latent too (SAEBench's mean_num_split_features);
-- mean_n_split counts the splits beyond it.
CREATE OR REPLACE VIEW absorption_by_sae AS
WITH per AS (
    SELECT a.run_id, a.sae_id, count(*) FILTER (WHERE a.scored) AS letters_scored,
           avg(a.probe_f1) AS mean_probe_f1,
           avg(a.absorption_rate) FILTER (WHERE a.scored) AS mean_absorption_rate,
           avg(a.full_absorption_rate) FILTER (WHERE a.scored) AS mean_full_absorption_rate,
           avg(len(a.main_latents)) FILTER (WHERE a.scored) AS mean_split_features,
           avg(a.n_split) AS mean_n_split
    FROM absorption_letters a
    GROUP BY a.run_id, a.sae_id
)
SELECT p.sae_id, s.layer, r.definition, p.letters_scored,
       p.letters_scored >= coalesce(t.min_letters, 1) AS evaluated, p.mean_probe_f1,
       CASE WHEN p.letters_scored >= coalesce(t.min_letters, 1) THEN p.mean_absorption_rate END
           AS mean_absorption_rate,
       CASE WHEN p.letters_scored >= coalesce(t.min_letters, 1)
           THEN p.mean_full_absorption_rate END AS mean_full_absorption_rate,
       CASE WHEN p.letters_scored >= coalesce(t.min_letters, 1) THEN p.mean_split_features END
           AS mean_split_features,
       p.mean_n_split,
       -- which vocabulary the run measured: every token (SAEBench) or a random draw, and
       -- whether words shared their prompts' in-context examples (`atlas build`'s choice)
       CASE WHEN coalesce(TRY_CAST(r.params->>'words' AS INTEGER), 0) = 0 THEN 'all'
            ELSE (r.params->>'words') || ' drawn' END
         || CASE WHEN coalesce(TRY_CAST(r.params->>'shared_examples' AS INTEGER), 1) > 1
                 THEN ', examples shared by ' || (r.params->>'shared_examples')
                 ELSE '' END AS vocabulary,
       p.run_id
FROM per p
JOIN analysis_runs r USING (run_id)
JOIN saes s USING (sae_id)
LEFT JOIN absorption_tasks t ON t.run_id = p.run_id
ORDER BY s.layer, p.sae_id, r.definition;

-- Absorbed words (absorption fraction > 0 or full) with the absorbing latent's label.
CREATE OR REPLACE VIEW absorbed_examples AS
SELECT w.sae_id, r.definition, w.letter, w.word, w.absorber, f.label AS absorber_label,
       w.absorber_cos, w.absorber_share, w.absorption_fraction, w."full", w.main_activation,
       w.probe_projection
FROM absorbed_words w
JOIN analysis_runs r USING (run_id)
LEFT JOIN features f ON f.sae_id = w.sae_id AND f.feature = w.absorber
WHERE w.absorption_fraction > 0 OR w."full"
ORDER BY w.sae_id, r.definition, w.letter, w.absorption_fraction DESC;
