-- Universality: two SAEs compared on the same tokens.

CREATE TABLE universality_runs (
    run_id          VARCHAR PRIMARY KEY,
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
    rsa             DOUBLE,
    rsa_null        DOUBLE,
    rsa_null_std    DOUBLE,
    rsa_p           DOUBLE,
    n_permutations  INTEGER NOT NULL,
    params          JSON,
    created_at      TIMESTAMP NOT NULL
);

CREATE TABLE matched_pairs (
    run_id     VARCHAR NOT NULL,
    sae_a      VARCHAR NOT NULL,
    feature_a  INTEGER NOT NULL,
    sae_b      VARCHAR NOT NULL,
    feature_b  INTEGER NOT NULL,
    corr       DOUBLE NOT NULL,
    kept       BOOLEAN NOT NULL           -- false when either feature's top tokens are not words
);
