-- The atlas schema. DuckDB is the one source of truth: every figure comes from these tables.

CREATE TABLE models (
    model_id    VARCHAR PRIMARY KEY,
    source      VARCHAR NOT NULL,      -- where the weights came from (package, path, hub id)
    n_layers    INTEGER NOT NULL,
    d_model     INTEGER NOT NULL
);

CREATE TABLE saes (
    sae_id             VARCHAR PRIMARY KEY,
    model_id           VARCHAR NOT NULL,
    layer              INTEGER NOT NULL,
    hook               VARCHAR NOT NULL,  -- e.g. blocks.7.hook_resid_post
    d_in               INTEGER NOT NULL,
    d_sae              INTEGER NOT NULL,
    architecture       VARCHAR NOT NULL,  -- SAELens architecture: topk, standard, jumprelu, ...
    k                  INTEGER,           -- TopK's k, NULL for other architectures
    source             VARCHAR NOT NULL,  -- 'trained' or the SAELens release/id or a path
    path               VARCHAR,           -- where SAE.load_from_disk finds it, when on disk
    l0                 DOUBLE,            -- quality on held-out tokens
    explained_variance DOUBLE,
    dead_fraction      DOUBLE,
    quality_tokens     BIGINT
);

CREATE TABLE corpora (
    corpus_id   VARCHAR PRIMARY KEY,      -- content hash of the token ids
    name        VARCHAR NOT NULL,
    model_id    VARCHAR NOT NULL,         -- whose tokenizer made the blocks
    n_blocks    INTEGER NOT NULL,
    block_size  INTEGER NOT NULL,
    n_tokens    BIGINT NOT NULL
);

CREATE TABLE documents (
    corpus_id   VARCHAR NOT NULL,
    doc_id      INTEGER NOT NULL,
    source      VARCHAR NOT NULL,         -- wiki, code, text, ...
    title       VARCHAR,
    PRIMARY KEY (corpus_id, doc_id)
);

CREATE TABLE blocks (
    corpus_id   VARCHAR NOT NULL,
    block_id    INTEGER NOT NULL,
    doc_id      INTEGER NOT NULL,         -- document of the block's first token
    source      VARCHAR NOT NULL,
    text        VARCHAR NOT NULL,
    token_ids   INTEGER[] NOT NULL,
    PRIMARY KEY (corpus_id, block_id)
);

CREATE TABLE harvests (
    harvest_id  VARCHAR PRIMARY KEY,
    sae_id      VARCHAR NOT NULL UNIQUE,  -- one harvest per SAE; a re-run replaces it whole
    corpus      VARCHAR NOT NULL,         -- corpus_id
    n_tokens    BIGINT NOT NULL,          -- tokens that counted (sinks and special tokens left out)
    n_blocks    INTEGER NOT NULL,
    block_size  INTEGER NOT NULL,
    threshold   DOUBLE NOT NULL,
    config      JSON,                     -- the build configuration that made it
    created_at  TIMESTAMP NOT NULL
);

CREATE TABLE features (
    sae_id        VARCHAR NOT NULL,
    feature       INTEGER NOT NULL,
    firing_count  BIGINT NOT NULL,        -- tokens with activation > threshold
    block_count   INTEGER NOT NULL,       -- blocks where it fires at least once
    mean_act      DOUBLE,                 -- mean activation over the tokens where it fires
    max_act       DOUBLE NOT NULL,
    top_tokens    VARCHAR[] NOT NULL,     -- most frequent firing tokens, most frequent first
    top_token_counts INTEGER[] NOT NULL,
    label         VARCHAR NOT NULL,       -- short readable label from top_tokens
    PRIMARY KEY (sae_id, feature)
);

CREATE TABLE decoders (
    sae_id   VARCHAR NOT NULL,
    feature  INTEGER NOT NULL,
    norm     FLOAT NOT NULL,              -- norm of the SAE's decoder row
    vector   FLOAT[] NOT NULL,            -- the decoder row scaled to unit norm (length d_in)
    PRIMARY KEY (sae_id, feature)
);

CREATE TABLE block_firings (
    sae_id    VARCHAR NOT NULL,
    block_id  INTEGER NOT NULL,
    feature   INTEGER NOT NULL,
    max_act   FLOAT NOT NULL
);

CREATE TABLE cooccurrence (
    sae_id  VARCHAR NOT NULL,
    i       INTEGER NOT NULL,             -- i < j
    j       INTEGER NOT NULL,
    n_ij    INTEGER NOT NULL              -- blocks where both fire
);

CREATE TABLE examples (
    sae_id    VARCHAR NOT NULL,
    feature   INTEGER NOT NULL,
    rank      INTEGER NOT NULL,           -- 1 = highest activation
    act       FLOAT NOT NULL,
    block_id  INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    token     VARCHAR NOT NULL,
    context   VARCHAR NOT NULL,           -- text around the token
    token_start INTEGER NOT NULL          -- where the token starts inside context (characters)
);
