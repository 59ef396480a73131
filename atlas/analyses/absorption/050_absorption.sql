-- Absorption (atlas/analyses/absorption.py), per SAE: the first-letter task under SAEBench's
-- definition (saebench) or the atlas's; analysis_runs names which.

CREATE TABLE absorbed_words (
    run_id              VARCHAR NOT NULL,
    sae_id              VARCHAR NOT NULL,
    letter              VARCHAR NOT NULL,
    token_id            INTEGER NOT NULL,
    word                VARCHAR NOT NULL,
    probe_projection    DOUBLE,              -- residual (less the SAE's decoder bias) on the probe
    main_activation     DOUBLE,              -- sum of the main latents' activations
    absorber            INTEGER NOT NULL,    -- latent with the largest projection on the probe
    absorber_activation DOUBLE,
    absorber_cos        DOUBLE,
    absorber_share      DOUBLE,              -- its share of the probe projection
    absorption_fraction DOUBLE,
    "full"              BOOLEAN NOT NULL
);

CREATE TABLE absorption_tasks (
    run_id        VARCHAR NOT NULL,
    sae_id        VARCHAR NOT NULL,
    n_words       INTEGER NOT NULL,          -- whole-word alphabetic vocabulary tokens used
    n_train       INTEGER NOT NULL,
    n_test        INTEGER NOT NULL,          -- held-out words (probe F1, k-sparse F1, absorption)
    prompt        VARCHAR NOT NULL,          -- in-context examples; the word is read at its token
    setup_seconds DOUBLE,                    -- vocabulary and residuals, shared by the run's SAEs
    min_letters   INTEGER DEFAULT 1          -- letters with probe F1 above 0.6 needed to be evaluated
);

CREATE TABLE absorption_letters (
    run_id               VARCHAR NOT NULL,
    sae_id               VARCHAR NOT NULL,
    letter               VARCHAR NOT NULL,
    n_train              INTEGER NOT NULL,
    n_test               INTEGER NOT NULL,
    probe_f1             DOUBLE,             -- residual probe, held-out words
    probe_precision      DOUBLE,
    probe_recall         DOUBLE,
    f1_by_k              DOUBLE[],           -- k-sparse probe F1 on the SAE's latents, k = 1..K
    main_latents         INTEGER[],          -- the letter's main latents (1 + n_split)
    main_cos             DOUBLE[],           -- their decoder cosine with the probe
    n_split              INTEGER NOT NULL,
    n_true_positives     INTEGER NOT NULL,   -- held-out words the probe gets right
    scored               BOOLEAN NOT NULL,   -- the letter counts in the SAE's means
    absorption_rate      DOUBLE,             -- mean absorption fraction over true positives
    full_absorption_rate DOUBLE,             -- share of true positives fully absorbed
    n_full               INTEGER NOT NULL,
    probe_direction      DOUBLE[],           -- the letter's unit probe direction (residual stream)
    PRIMARY KEY (run_id, letter)
);
