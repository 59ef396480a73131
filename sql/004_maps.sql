-- 2-D layouts computed once by the analyses, for the app's maps.

CREATE TABLE feature_maps (
    run_id   VARCHAR NOT NULL,
    sae_id   VARCHAR NOT NULL,
    method   VARCHAR NOT NULL,     -- tsne or pca
    feature  INTEGER NOT NULL,
    x        DOUBLE NOT NULL,
    y        DOUBLE NOT NULL
);

CREATE TABLE crystal_points (
    run_id    VARCHAR NOT NULL,
    model_id  VARCHAR NOT NULL,
    layer     INTEGER NOT NULL,
    space     VARCHAR NOT NULL,
    task      VARCHAR NOT NULL,
    pair      INTEGER NOT NULL,
    side      VARCHAR NOT NULL,    -- a or b
    word      VARCHAR NOT NULL,
    x_before  DOUBLE NOT NULL,     -- 2-D PCA of the task's words in the raw space
    y_before  DOUBLE NOT NULL,
    x_after   DOUBLE NOT NULL,     -- ... after projecting onto LDA's signal directions
    y_after   DOUBLE NOT NULL
);
