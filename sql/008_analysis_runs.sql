-- One run record for every analysis (atlas.analyses.runner): `analysis_runs` names the analysis
-- and the definition it computed; universality's and absorption's own run tables become result
-- tables keyed by run_id like every other analysis's. Earlier runs are carried over.

CREATE TABLE analysis_runs_v2 (
    run_id      VARCHAR PRIMARY KEY,
    analysis    VARCHAR NOT NULL,          -- galaxy, lobes, crystals, universality, absorption
    subject     VARCHAR NOT NULL,          -- sae_id, model_id/L<layer>, or 'sae_a ~ sae_b'
    definition  VARCHAR NOT NULL,          -- whose definition the run computed ('atlas': ours)
    params      JSON NOT NULL,             -- the analysis's settings
    seconds     DOUBLE,
    created_at  TIMESTAMP NOT NULL
);
INSERT INTO analysis_runs_v2
SELECT run_id, what, subject, 'atlas', params, seconds, created_at FROM analysis_runs;
INSERT INTO analysis_runs_v2
SELECT run_id, 'universality', sae_a || ' ~ ' || sae_b, 'atlas', coalesce(params, '{}'), NULL,
       created_at
FROM universality_runs;
INSERT INTO analysis_runs_v2
SELECT run_id, 'absorption', sae_id, 'atlas', coalesce(params, '{}'), seconds, created_at
FROM absorption_runs;
DROP TABLE analysis_runs;
ALTER TABLE analysis_runs_v2 RENAME TO analysis_runs;

CREATE TABLE universality_scores (
    run_id          VARCHAR NOT NULL,
    sae_a           VARCHAR NOT NULL,
    sae_b           VARCHAR NOT NULL,
    n_tokens        BIGINT NOT NULL,      -- tokens whose activations were correlated
    one_to_one      BOOLEAN NOT NULL,
    n_pairs         INTEGER NOT NULL,     -- matched pairs kept (both features concept-like)
    mean_corr       DOUBLE,               -- mean activation correlation of the kept pairs
    svcca           DOUBLE,
    svcca_null      DOUBLE,               -- mean over shuffled pairings
    svcca_null_std  DOUBLE,
    svcca_p         DOUBLE,
    svcca_dims      INTEGER,              -- canonical directions kept
    rsa             DOUBLE,
    rsa_null        DOUBLE,
    rsa_null_std    DOUBLE,
    rsa_p           DOUBLE,
    n_permutations  INTEGER NOT NULL
);
INSERT INTO universality_scores
SELECT run_id, sae_a, sae_b, n_tokens, one_to_one, n_pairs, mean_corr, svcca, svcca_null,
       svcca_null_std, svcca_p, TRY_CAST(json_extract(params, '$.svcca_max_dims') AS INTEGER),
       rsa, rsa_null, rsa_null_std, rsa_p, n_permutations
FROM universality_runs;
DROP TABLE universality_runs;

CREATE TABLE absorption_tasks (
    run_id         VARCHAR NOT NULL,
    sae_id         VARCHAR NOT NULL,
    n_words        INTEGER NOT NULL,     -- whole-word alphabetic vocabulary tokens used
    n_train        INTEGER NOT NULL,
    n_test         INTEGER NOT NULL,     -- held-out words (probe F1, k-sparse F1, absorption)
    prompt         VARCHAR NOT NULL,     -- in-context examples; the word is read at its token
    setup_seconds  DOUBLE                -- vocabulary and residuals, shared by the run's SAEs
);
INSERT INTO absorption_tasks
SELECT run_id, sae_id, n_words, n_train, n_test, prompt, setup_seconds FROM absorption_runs;
DROP TABLE absorption_runs;
