-- Results of the analyses at three scales. Each run of an analysis replaces the previous
-- results of the same SAE (or model layer) whole; its parameters are kept in analysis_runs.

CREATE TABLE analysis_runs (
    run_id      VARCHAR PRIMARY KEY,
    subject     VARCHAR NOT NULL,          -- sae_id, or model_id/L<layer> for crystals
    what        VARCHAR NOT NULL,          -- galaxy, lobes, crystals
    params      JSON NOT NULL,
    seconds     DOUBLE,
    created_at  TIMESTAMP NOT NULL
);

CREATE TABLE spectra (
    run_id      VARCHAR NOT NULL,
    sae_id      VARCHAR NOT NULL,
    cloud       VARCHAR NOT NULL,          -- decoder, or gaussian (same size, isotropic)
    rank        INTEGER NOT NULL,          -- 1 = largest
    eigenvalue  DOUBLE NOT NULL
);

CREATE TABLE galaxy_stats (
    run_id            VARCHAR NOT NULL,
    sae_id            VARCHAR PRIMARY KEY,
    rank_lo           INTEGER NOT NULL,    -- power-law fit range
    rank_hi           INTEGER NOT NULL,
    entropy_gap       DOUBLE,              -- H_gauss - H_kNN (nats), 0 for a Gaussian
    entropy_stderr    DOUBLE,
    h_knn             DOUBLE,
    h_gauss           DOUBLE,
    entropy_dims      INTEGER,
    tail_cut          DOUBLE NOT NULL,
    tail_mass         DOUBLE NOT NULL,     -- share of pairs with |cos| >= tail_cut
    random_tail_mass  DOUBLE NOT NULL      -- the same for random unit vectors of equal number
);

CREATE TABLE cosine_hist (
    run_id   VARCHAR NOT NULL,
    sae_id   VARCHAR NOT NULL,
    cloud    VARCHAR NOT NULL,             -- decoder or random
    bin_lo   DOUBLE NOT NULL,
    bin_hi   DOUBLE NOT NULL,
    pairs    DOUBLE NOT NULL
);

CREATE TABLE clusters (
    run_id   VARCHAR NOT NULL,
    sae_id   VARCHAR NOT NULL,
    method   VARCHAR NOT NULL,             -- cooccurrence or geometry
    metric   VARCHAR NOT NULL,             -- affinity metric, or 'angular' for geometry
    k        INTEGER NOT NULL,
    feature  INTEGER NOT NULL,
    cluster  INTEGER NOT NULL
);

CREATE TABLE lobe_tests (
    run_id                 VARCHAR NOT NULL,
    sae_id                 VARCHAR NOT NULL,
    metric                 VARCHAR NOT NULL,
    k                      INTEGER NOT NULL,
    n_features             INTEGER NOT NULL,  -- features that fire in some but not all blocks
    ami                    DOUBLE NOT NULL,   -- co-occurrence lobes vs geometric clusters
    ami_null_mean          DOUBLE NOT NULL,
    ami_null_std           DOUBLE NOT NULL,
    ami_z                  DOUBLE NOT NULL,
    n_permutations         INTEGER NOT NULL,
    logreg_accuracy        DOUBLE NOT NULL,   -- held-out balanced accuracy, decoder -> lobe
    logreg_random_accuracy DOUBLE NOT NULL,   -- the same on random unit vectors
    chance                 DOUBLE NOT NULL
);

CREATE TABLE crystal_tasks (
    run_id                VARCHAR NOT NULL,
    model_id              VARCHAR NOT NULL,
    layer                 INTEGER NOT NULL,
    space                 VARCHAR NOT NULL,  -- residual, or the sae_id whose codes were used
    task                  VARCHAR NOT NULL,
    n_pairs               INTEGER NOT NULL,
    parallelogram_quality DOUBLE,            -- mean cos(pair difference, mean of the others)
    accuracy_before       DOUBLE,            -- held-out analogy accuracy, raw space
    accuracy_after        DOUBLE             -- the same after LDA distractor removal
);

CREATE TABLE crystals (
    run_id               VARCHAR NOT NULL,
    model_id             VARCHAR NOT NULL,
    layer                INTEGER NOT NULL,
    space                VARCHAR NOT NULL,
    a VARCHAR, b VARCHAR, c VARCHAR, d VARCHAR,   -- b - a ~ d - c
    parallelogram_error  DOUBLE NOT NULL,
    trapezoid_error      DOUBLE NOT NULL,
    cluster              INTEGER NOT NULL
);

CREATE TABLE distractors (
    run_id             VARCHAR NOT NULL,
    model_id           VARCHAR NOT NULL,
    layer              INTEGER NOT NULL,
    space              VARCHAR NOT NULL,
    silhouette_before  DOUBLE,
    silhouette_after   DOUBLE,
    length_corr        DOUBLE,   -- |corr| of the removed direction with word length (chars)
    token_corr         DOUBLE    -- ... with word length in tokens
);
