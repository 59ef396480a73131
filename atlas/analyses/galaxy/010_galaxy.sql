-- Galaxy (atlas/analyses/galaxy.py), per SAE: the spectrum of the unit decoder cloud beside an
-- isotropic Gaussian's, clustering entropy by the paper's estimator (li2024_*) and the atlas's
-- (entropy_*), and pairwise cosine histograms.

CREATE TABLE spectra (
    run_id     VARCHAR NOT NULL,
    sae_id     VARCHAR NOT NULL,
    cloud      VARCHAR NOT NULL,             -- decoder, or gaussian (same size, isotropic)
    rank       INTEGER NOT NULL,             -- 1 = largest
    eigenvalue DOUBLE NOT NULL
);

CREATE TABLE galaxy_stats (
    run_id              VARCHAR NOT NULL,
    sae_id              VARCHAR PRIMARY KEY,
    rank_lo             INTEGER NOT NULL,    -- power-law fit range
    rank_hi             INTEGER NOT NULL,
    entropy_gap         DOUBLE,              -- H_gauss - H_kNN (nats), 0 for a Gaussian
    entropy_stderr      DOUBLE,
    h_knn               DOUBLE,
    h_gauss             DOUBLE,
    entropy_dims        INTEGER,
    tail_cut            DOUBLE NOT NULL,
    tail_mass           DOUBLE NOT NULL,     -- share of pairs with |cos| >= tail_cut
    random_tail_mass    DOUBLE NOT NULL,     -- the same for random unit vectors of equal number
    li2024_entropy_gap  DOUBLE,              -- H_gauss - mean H_kNN (nats)
    li2024_entropy_ci95 DOUBLE,              -- 95% half-width (t, bootstrap)
    li2024_h_knn        DOUBLE,
    li2024_h_gauss      DOUBLE,
    li2024_entropy_dims INTEGER,
    li2024_entropy_n    INTEGER              -- points after subsampling
);

CREATE TABLE cosine_hist (
    run_id VARCHAR NOT NULL,
    sae_id VARCHAR NOT NULL,
    cloud  VARCHAR NOT NULL,                 -- decoder or random
    bin_lo DOUBLE NOT NULL,
    bin_hi DOUBLE NOT NULL,
    pairs  DOUBLE NOT NULL
);
