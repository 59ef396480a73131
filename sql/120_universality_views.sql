-- Universality per SAE pair (latest run of each ordered pair), with the layers for a heat map
-- and the definition its run computed.
CREATE OR REPLACE VIEW universality AS
SELECT u.sae_a, u.sae_b, sa.layer AS layer_a, sb.layer AS layer_b, u.n_pairs, u.mean_corr,
       u.svcca, u.svcca_null, u.svcca_null_std, u.svcca_p,
       u.rsa, u.rsa_null, u.rsa_null_std, u.rsa_p, u.n_tokens, u.one_to_one, u.svcca_dims,
       r.definition, u.run_id
FROM universality_scores u
JOIN analysis_runs r USING (run_id)
JOIN saes sa ON sa.sae_id = u.sae_a
JOIN saes sb ON sb.sae_id = u.sae_b
ORDER BY layer_a, layer_b;
