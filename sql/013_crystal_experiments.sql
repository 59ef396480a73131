-- Crystals, reworked: the paper's LDA experiment on pair differences (li2024), the word
-- representation chosen by validation, held-out top-1/top-5 analogies in a closed vocabulary
-- before/after projecting out distractor directions, and crystals reported with whether their
-- pairs belong to one relation. Rows of earlier runs (words after EOS, LDA onto task-side
-- directions, clusters of differences) keep their numbers under definition 'atlas-v1'.
ALTER TABLE crystal_tasks ADD COLUMN definition VARCHAR;
ALTER TABLE crystal_tasks ADD COLUMN representation VARCHAR;
ALTER TABLE crystal_tasks ADD COLUMN top5_before DOUBLE;
ALTER TABLE crystal_tasks ADD COLUMN top5_after DOUBLE;
ALTER TABLE crystal_tasks ADD COLUMN n_queries INTEGER;
UPDATE crystal_tasks SET definition = 'atlas-v1', representation = 'eos';

ALTER TABLE crystals ADD COLUMN definition VARCHAR;
ALTER TABLE crystals ADD COLUMN representation VARCHAR;
ALTER TABLE crystals ADD COLUMN stage VARCHAR;        -- before / after distractor removal
ALTER TABLE crystals ADD COLUMN rank INTEGER;
ALTER TABLE crystals ADD COLUMN crystal_error DOUBLE;
ALTER TABLE crystals ADD COLUMN relation VARCHAR;     -- the task both pairs belong to, if any
ALTER TABLE crystals ALTER COLUMN cluster DROP NOT NULL;
UPDATE crystals SET definition = 'atlas-v1', representation = 'eos';

ALTER TABLE distractors ADD COLUMN definition VARCHAR;
ALTER TABLE distractors ADD COLUMN representation VARCHAR;
ALTER TABLE distractors ADD COLUMN distractor_dims INTEGER;
ALTER TABLE distractors ADD COLUMN same_relation_before DOUBLE;
ALTER TABLE distractors ADD COLUMN same_relation_after DOUBLE;
ALTER TABLE distractors ADD COLUMN same_relation_chance DOUBLE;
UPDATE distractors SET definition = 'atlas-v1', representation = 'eos';

ALTER TABLE crystal_points ADD COLUMN definition VARCHAR;
ALTER TABLE crystal_points ADD COLUMN representation VARCHAR;
UPDATE crystal_points SET definition = 'atlas-v1', representation = 'eos';

-- li2024: silhouette of task classes among pair differences, raw (n_components 0) and after
-- LDA; `silhouette` fits LDA on every pair as the paper does, `silhouette_heldout` fits on the
-- fitting pairs and scores the held-out ones.
CREATE TABLE crystal_lda (
    run_id             VARCHAR NOT NULL,
    model_id           VARCHAR NOT NULL,
    layer              INTEGER NOT NULL,
    hook               VARCHAR NOT NULL,
    hidden_state       INTEGER NOT NULL,  -- index in transformers' output_hidden_states
    definition         VARCHAR NOT NULL,
    representation     VARCHAR NOT NULL,
    n_components       INTEGER NOT NULL,
    silhouette         DOUBLE,
    silhouette_heldout DOUBLE
);

-- li2024: each pair's difference (object - subject), as 2-D PCA and as the first two LDA
-- components.
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
    x_pca DOUBLE, y_pca DOUBLE, x_lda DOUBLE, y_lda DOUBLE
);

-- Word representations compared per residual point: top-1 on the fitting pairs (what 'auto'
-- chooses by), held-out top-1/top-5 before and after distractor removal.
CREATE TABLE word_representations (
    run_id          VARCHAR NOT NULL,
    model_id        VARCHAR NOT NULL,
    layer           INTEGER NOT NULL,
    hook            VARCHAR NOT NULL,
    definition      VARCHAR NOT NULL,
    representation  VARCHAR NOT NULL,  -- bare, bos, eos, li2024
    chosen          BOOLEAN NOT NULL,
    fit_top1        DOUBLE,
    distractor_dims INTEGER,
    top1_before     DOUBLE,
    top5_before     DOUBLE,
    top1_after      DOUBLE,
    top5_after      DOUBLE,
    n_queries       INTEGER
);
