-- Crystals (atlas/analyses/crystals.py), per residual hook: the paper's LDA experiment
-- (definition li2024: crystal_lda, crystal_differences) and the atlas's analogy, distractor
-- and crystal-search tables. `hook` is blocks.L.hook_resid_post, hidden_states[L + 1].

CREATE TABLE crystal_tasks (
    run_id                VARCHAR NOT NULL,
    model_id              VARCHAR NOT NULL,
    layer                 INTEGER NOT NULL,
    space                 VARCHAR NOT NULL,  -- residual, or the sae_id whose codes were used
    task                  VARCHAR NOT NULL,
    n_pairs               INTEGER NOT NULL,
    parallelogram_quality DOUBLE,            -- mean cos(pair difference, mean of the others)
    accuracy_before       DOUBLE,            -- held-out analogy accuracy, raw space
    accuracy_after        DOUBLE,            -- the same after LDA distractor removal
    hook                  VARCHAR,
    definition            VARCHAR,
    representation        VARCHAR,           -- bare, bos, eos or li2024 (word_representations)
    top5_before           DOUBLE,
    top5_after            DOUBLE,
    n_queries             INTEGER
);

CREATE TABLE crystals (
    run_id              VARCHAR NOT NULL,
    model_id            VARCHAR NOT NULL,
    layer               INTEGER NOT NULL,
    space               VARCHAR NOT NULL,
    a                   VARCHAR,             -- b - a ~ d - c
    b                   VARCHAR,
    c                   VARCHAR,
    d                   VARCHAR,
    parallelogram_error DOUBLE NOT NULL,
    trapezoid_error     DOUBLE NOT NULL,
    cluster             INTEGER,
    hook                VARCHAR,
    definition          VARCHAR,
    representation      VARCHAR,
    stage               VARCHAR,             -- before / after distractor removal
    rank                INTEGER,
    crystal_error       DOUBLE,
    relation            VARCHAR              -- the task both pairs belong to, if any
);

CREATE TABLE distractors (
    run_id               VARCHAR NOT NULL,
    model_id             VARCHAR NOT NULL,
    layer                INTEGER NOT NULL,
    space                VARCHAR NOT NULL,
    silhouette_before    DOUBLE,
    silhouette_after     DOUBLE,
    length_corr          DOUBLE,             -- |corr| of the removed direction with word length (chars)
    token_corr           DOUBLE,             -- ... with word length in tokens
    hook                 VARCHAR,
    definition           VARCHAR,
    representation       VARCHAR,
    distractor_dims      INTEGER,
    same_relation_before DOUBLE,
    same_relation_after  DOUBLE,
    same_relation_chance DOUBLE
);

CREATE TABLE crystal_points (
    run_id         VARCHAR NOT NULL,
    model_id       VARCHAR NOT NULL,
    layer          INTEGER NOT NULL,
    space          VARCHAR NOT NULL,
    task           VARCHAR NOT NULL,
    pair           INTEGER NOT NULL,
    side           VARCHAR NOT NULL,         -- a or b
    word           VARCHAR NOT NULL,
    x_before       DOUBLE NOT NULL,          -- 2-D PCA of the task's words in the raw space
    y_before       DOUBLE NOT NULL,
    x_after        DOUBLE NOT NULL,          -- ... after projecting onto LDA's signal directions
    y_after        DOUBLE NOT NULL,
    hook           VARCHAR,
    definition     VARCHAR,
    representation VARCHAR
);

CREATE TABLE crystal_lda (
    run_id             VARCHAR NOT NULL,
    model_id           VARCHAR NOT NULL,
    layer              INTEGER NOT NULL,
    hook               VARCHAR NOT NULL,
    hidden_state       INTEGER NOT NULL,     -- index in transformers' output_hidden_states
    definition         VARCHAR NOT NULL,
    representation     VARCHAR NOT NULL,
    n_components       INTEGER NOT NULL,
    silhouette         DOUBLE,
    silhouette_heldout DOUBLE
);

CREATE TABLE crystal_differences (
    run_id         VARCHAR NOT NULL,
    model_id       VARCHAR NOT NULL,
    layer          INTEGER NOT NULL,
    hook           VARCHAR NOT NULL,
    hidden_state   INTEGER NOT NULL,
    definition     VARCHAR NOT NULL,
    representation VARCHAR NOT NULL,
    task           VARCHAR NOT NULL,
    subject        VARCHAR NOT NULL,
    object         VARCHAR NOT NULL,
    heldout        BOOLEAN NOT NULL,
    x_pca          DOUBLE,
    y_pca          DOUBLE,
    x_lda          DOUBLE,
    y_lda          DOUBLE,
    vector         DOUBLE[]                  -- object - subject (float64): the silhouettes recompute from it
);

CREATE TABLE word_representations (
    run_id          VARCHAR NOT NULL,
    model_id        VARCHAR NOT NULL,
    layer           INTEGER NOT NULL,
    hook            VARCHAR NOT NULL,
    definition      VARCHAR NOT NULL,
    representation  VARCHAR NOT NULL,        -- bare, bos, eos, li2024
    chosen          BOOLEAN NOT NULL,
    fit_top1        DOUBLE,
    distractor_dims INTEGER,
    top1_before     DOUBLE,
    top5_before     DOUBLE,
    top1_after      DOUBLE,
    top5_after      DOUBLE,
    n_queries       INTEGER
);
