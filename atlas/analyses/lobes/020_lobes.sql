-- Lobes (atlas/analyses/lobes.py), per SAE: spectral clusters of the co-occurrence affinity
-- and of decoder geometry, their AMI against shuffles, and the lobe predictability test.

CREATE TABLE clusters (
    run_id  VARCHAR NOT NULL,
    sae_id  VARCHAR NOT NULL,
    method  VARCHAR NOT NULL,                -- cooccurrence or geometry
    metric  VARCHAR NOT NULL,                -- affinity metric, or 'angular' for geometry
    k       INTEGER NOT NULL,
    feature INTEGER NOT NULL,
    cluster INTEGER NOT NULL
);

CREATE TABLE lobe_tests (
    run_id                 VARCHAR NOT NULL,
    sae_id                 VARCHAR NOT NULL,
    metric                 VARCHAR NOT NULL,
    k                      INTEGER NOT NULL,
    n_features             INTEGER NOT NULL, -- features that fire in some but not all blocks
    ami                    DOUBLE NOT NULL,  -- co-occurrence lobes vs geometric clusters
    ami_null_mean          DOUBLE NOT NULL,
    ami_null_std           DOUBLE NOT NULL,
    ami_z                  DOUBLE NOT NULL,
    n_permutations         INTEGER NOT NULL,
    logreg_accuracy        DOUBLE NOT NULL,  -- held-out balanced accuracy, decoder -> lobe
    logreg_random_accuracy DOUBLE NOT NULL,  -- the same on random unit vectors
    chance                 DOUBLE NOT NULL,
    logreg_random_std      DOUBLE,
    logreg_z               DOUBLE,           -- (accuracy - mean) / std
    logreg_draws           INTEGER,
    graph                  VARCHAR DEFAULT 'dense', -- 'dense', or 'knn-<m>' for SAEs stored as top-<m> partners
    logreg_definition      VARCHAR DEFAULT 'atlas', -- 'li2024' (the paper's notebook) or 'atlas' (README: Lobes)
    window_rule            VARCHAR           -- the co-occurrence windows counted (corpora.block_rule)
);

CREATE TABLE feature_maps (
    run_id  VARCHAR NOT NULL,
    sae_id  VARCHAR NOT NULL,
    method  VARCHAR NOT NULL,                -- tsne or pca
    feature INTEGER NOT NULL,
    x       DOUBLE NOT NULL,
    y       DOUBLE NOT NULL
);
