-- Universality (atlas/analyses/universality.py), per pair of SAEs: matched features, and
-- SVCCA / RSA of the kept pairs' decoder rows against shuffled pairings (lan2024 by default).

CREATE TABLE matched_pairs (
    run_id    VARCHAR NOT NULL,
    sae_a     VARCHAR NOT NULL,
    feature_a INTEGER NOT NULL,
    sae_b     VARCHAR NOT NULL,
    feature_b INTEGER NOT NULL,
    corr      DOUBLE NOT NULL,
    kept      BOOLEAN NOT NULL               -- false when either feature's top tokens are not words
);

CREATE TABLE universality_scores (
    run_id            VARCHAR NOT NULL,
    sae_a             VARCHAR NOT NULL,
    sae_b             VARCHAR NOT NULL,
    n_tokens          BIGINT NOT NULL,       -- tokens whose activations were correlated
    one_to_one        BOOLEAN NOT NULL,
    n_pairs           INTEGER NOT NULL,      -- matched pairs kept (both features concept-like)
    mean_corr         DOUBLE,                -- mean activation correlation of the kept pairs
    svcca             DOUBLE,
    svcca_null        DOUBLE,                -- mean over shuffled pairings
    svcca_null_std    DOUBLE,
    svcca_p           DOUBLE,
    svcca_dims        INTEGER,               -- canonical directions kept
    rsa               DOUBLE,
    rsa_null          DOUBLE,
    rsa_null_std      DOUBLE,
    rsa_p             DOUBLE,
    n_permutations    INTEGER NOT NULL,
    n_matched         INTEGER,
    mean_corr_matched DOUBLE,
    matched_from      VARCHAR,               -- whose features were matched to the other's: a, b or both
    svcca_rule        VARCHAR,               -- 'lan2024' (the reference's component rule) or 'variance'
    rsa_inner         VARCHAR,
    model_a           VARCHAR,
    model_b           VARCHAR
);
