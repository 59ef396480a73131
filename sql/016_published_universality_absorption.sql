-- Universality (lan2024) and absorption (saebench) under their published definitions.
-- A run's definition is in analysis_runs; runs of different definitions of one subject now stay
-- side by side.
--   absorption_tasks.min_letters: letters with probe F1 above 0.6 an SAE needs to be evaluated
--     (SAEBench: 20; the atlas variant: 1).
--   universality_scores: the pairs before filtering, the filtered pairs' mean correlation, how
--     the pairs were matched (the smaller SAE's features to the other's), the SVCCA component
--     rule, and the RSA inner similarity.
ALTER TABLE absorption_tasks ADD COLUMN min_letters INTEGER DEFAULT 1;
ALTER TABLE universality_scores ADD COLUMN n_matched INTEGER;
ALTER TABLE universality_scores ADD COLUMN mean_corr_matched DOUBLE;
ALTER TABLE universality_scores ADD COLUMN matched_from VARCHAR;
ALTER TABLE universality_scores ADD COLUMN svcca_rule VARCHAR;
ALTER TABLE universality_scores ADD COLUMN rsa_inner VARCHAR;
ALTER TABLE universality_scores ADD COLUMN model_a VARCHAR;
ALTER TABLE universality_scores ADD COLUMN model_b VARCHAR;

-- One SAE's letters under two definitions: the key becomes (run_id, letter).
CREATE TABLE absorption_letters_v2 (
    run_id                VARCHAR NOT NULL,
    sae_id                VARCHAR NOT NULL,
    letter                VARCHAR NOT NULL,
    n_train               INTEGER NOT NULL,
    n_test                INTEGER NOT NULL,
    probe_f1              DOUBLE,         -- residual probe, held-out words
    probe_precision       DOUBLE,
    probe_recall          DOUBLE,
    f1_by_k               DOUBLE[],       -- k-sparse probe F1 on the SAE's latents, k = 1..K
    main_latents          INTEGER[],      -- the letter's main latents (1 + n_split)
    main_cos              DOUBLE[],       -- their decoder cosine with the probe
    n_split               INTEGER NOT NULL,
    n_true_positives      INTEGER NOT NULL, -- held-out words the probe gets right
    scored                BOOLEAN NOT NULL, -- the letter counts in the SAE's means
    absorption_rate       DOUBLE,         -- mean absorption fraction over true positives
    full_absorption_rate  DOUBLE,         -- share of true positives fully absorbed
    n_full                INTEGER NOT NULL,
    PRIMARY KEY (run_id, letter)
);
INSERT INTO absorption_letters_v2 SELECT * FROM absorption_letters;
DROP TABLE absorption_letters;
ALTER TABLE absorption_letters_v2 RENAME TO absorption_letters;
