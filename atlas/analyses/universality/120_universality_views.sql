-- Universality per SAE pair and definition (latest run of each), with the layers for a heat map
-- and the models (pairs may span two models that share a tokenizer).
CREATE OR REPLACE VIEW universality AS
SELECT u.sae_a, u.sae_b, coalesce(u.model_a, sa.model_id) AS model_a,
       coalesce(u.model_b, sb.model_id) AS model_b, sa.layer AS layer_a, sb.layer AS layer_b,
       r.definition, u.n_pairs, u.mean_corr, u.n_matched, u.mean_corr_matched,
       u.svcca, u.svcca_null, u.svcca_null_std, u.svcca_p, u.svcca_dims, u.svcca_rule,
       u.rsa, u.rsa_null, u.rsa_null_std, u.rsa_p, u.rsa_inner, u.n_tokens, u.one_to_one,
       u.matched_from, u.run_id
FROM universality_scores u
JOIN analysis_runs r USING (run_id)
JOIN saes sa ON sa.sae_id = u.sae_a
JOIN saes sb ON sb.sae_id = u.sae_b
ORDER BY model_a, model_b, layer_a, layer_b, definition;
