-- The atlas schema, version 1: the core tables every build writes. Each analysis's result
-- tables are in its own file (010-050); views in 100+. DuckDB is the one source of truth:
-- every figure comes from these tables. A change to a table goes in a new numbered file
-- (060-099: files apply in name order, before the views); atlases written before version 1
-- are refused with the command that rebuilds them.

CREATE TABLE models (
    model_id VARCHAR PRIMARY KEY,
    source   VARCHAR NOT NULL,               -- where the weights came from (package, path, hub id)
    n_layers INTEGER NOT NULL,
    d_model  INTEGER NOT NULL,
    spec     VARCHAR                         -- the string that reloads the model (--model)
);

CREATE TABLE saes (
    sae_id             VARCHAR PRIMARY KEY,
    model_id           VARCHAR NOT NULL,
    layer              INTEGER NOT NULL,
    hook               VARCHAR NOT NULL,     -- e.g. blocks.7.hook_resid_post
    d_in               INTEGER NOT NULL,
    d_sae              INTEGER NOT NULL,
    architecture       VARCHAR NOT NULL,     -- SAELens architecture: topk, standard, jumprelu, ...
    k                  INTEGER,              -- TopK's k, NULL for other architectures
    source             VARCHAR NOT NULL,     -- 'trained' or the SAELens release/id or a path
    path               VARCHAR,              -- where SAE.load_from_disk finds it, when on disk
    l0                 DOUBLE,               -- quality on held-out tokens
    explained_variance DOUBLE,
    dead_fraction      DOUBLE,
    quality_tokens     BIGINT,
    decoder_checksum   VARCHAR,              -- of the stored decoders: a FAISS index built from others is stale
    release            VARCHAR,              -- SAELens release of a published SAE
    release_sae_id     VARCHAR,              -- its id within the release
    neuronpedia_id     VARCHAR               -- features' pages: neuronpedia.org/<neuronpedia_id>/<feature>
);

CREATE TABLE corpora (
    corpus_id  VARCHAR PRIMARY KEY,          -- content hash of the token ids
    name       VARCHAR NOT NULL,
    model_id   VARCHAR NOT NULL,             -- whose tokenizer made the blocks
    n_blocks   INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    n_tokens   BIGINT NOT NULL,
    block_rule VARCHAR                       -- 'document', 'packed' or 'li2024' (README: The default build)
);

CREATE TABLE documents (
    corpus_id VARCHAR NOT NULL,
    doc_id    INTEGER NOT NULL,
    source    VARCHAR NOT NULL,              -- wiki, code, text, ...
    title     VARCHAR,
    PRIMARY KEY (corpus_id, doc_id)
);

CREATE TABLE blocks (
    corpus_id VARCHAR NOT NULL,
    block_id  INTEGER NOT NULL,
    doc_id    INTEGER NOT NULL,              -- document of the block's first token
    source    VARCHAR NOT NULL,
    text      VARCHAR NOT NULL,
    token_ids INTEGER[] NOT NULL,
    n_tokens  INTEGER,                       -- positions before the padding
    PRIMARY KEY (corpus_id, block_id)
);

-- One harvest per SAE. cooccurrence_storage says where its co-occurrence is: 'pairs' (every
-- pair with n_ij > 0 in `cooccurrence`), 'rows' (the full matrix in `cooccurrence_rows`, one
-- list per feature, position = partner) or 'top-<m>' (in `cooccurrence_rows`: each feature's
-- m best partners by each affinity).
CREATE TABLE harvests (
    harvest_id           VARCHAR PRIMARY KEY,
    sae_id               VARCHAR NOT NULL UNIQUE, -- one harvest per SAE; a re-run replaces it whole
    corpus               VARCHAR NOT NULL,   -- corpus_id
    n_tokens             BIGINT NOT NULL,    -- tokens that counted (sinks and special tokens left out)
    n_blocks             INTEGER NOT NULL,
    block_size           INTEGER NOT NULL,
    threshold            DOUBLE NOT NULL,
    config               JSON,               -- the build configuration that made it
    created_at           TIMESTAMP NOT NULL,
    build_key            VARCHAR,            -- digest of the settings that determine the content (resume)
    cooccurrence_storage VARCHAR DEFAULT 'pairs', -- 'pairs', 'rows' or 'top-<m>' (below)
    block_firings_kept   VARCHAR DEFAULT 'all', -- 'all' or 'top-<m>': each feature's m best blocks
    decoder_dtype        VARCHAR DEFAULT 'float32', -- dtype of decoders.vector
    logit_lens           VARCHAR             -- how feature_logits was computed
);

CREATE TABLE features (
    sae_id           VARCHAR NOT NULL,
    feature          INTEGER NOT NULL,
    firing_count     BIGINT NOT NULL,        -- tokens with activation > threshold
    block_count      INTEGER NOT NULL,       -- blocks where it fires at least once
    mean_act         DOUBLE,                 -- mean activation over the tokens where it fires
    max_act          DOUBLE NOT NULL,
    top_tokens       VARCHAR[] NOT NULL,     -- most frequent firing tokens, most frequent first
    top_token_counts INTEGER[] NOT NULL,
    label            VARCHAR NOT NULL,       -- short readable label from top_tokens
    PRIMARY KEY (sae_id, feature)
);

CREATE TABLE decoders (
    sae_id  VARCHAR NOT NULL,
    feature INTEGER NOT NULL,
    norm    FLOAT NOT NULL,                  -- norm of the SAE's decoder row
    vector  FLOAT[] NOT NULL,                -- the decoder row scaled to unit norm (length d_in)
    PRIMARY KEY (sae_id, feature)
);

CREATE TABLE block_firings (
    sae_id   VARCHAR NOT NULL,
    block_id INTEGER NOT NULL,
    feature  INTEGER NOT NULL,
    max_act  FLOAT NOT NULL                  -- the feature's highest activation in the block
);

CREATE TABLE cooccurrence (
    sae_id VARCHAR NOT NULL,
    i      INTEGER NOT NULL,                 -- i < j
    j      INTEGER NOT NULL,
    n_ij   INTEGER NOT NULL                  -- blocks where both fire
);

CREATE TABLE examples (
    sae_id      VARCHAR NOT NULL,
    feature     INTEGER NOT NULL,
    rank        INTEGER NOT NULL,            -- 1 = highest activation
    act         FLOAT NOT NULL,
    block_id    INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    token       VARCHAR NOT NULL,
    context     VARCHAR NOT NULL,            -- text around the token
    token_start INTEGER NOT NULL             -- where the token starts inside context (characters)
);

-- One row for every run of every analysis (atlas.analyses.runner); result tables carry run_id.
CREATE TABLE analysis_runs (
    run_id     VARCHAR PRIMARY KEY,
    analysis   VARCHAR NOT NULL,             -- galaxy, lobes, crystals, universality, absorption
    subject    VARCHAR NOT NULL,             -- sae_id, model_id/L<layer>, or 'sae_a ~ sae_b'
    definition VARCHAR NOT NULL,             -- whose definition the run computed ('atlas': ours)
    params     JSON NOT NULL,                -- the analysis's settings
    seconds    DOUBLE,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE cooccurrence_rows (
    sae_id   VARCHAR NOT NULL,
    feature  INTEGER NOT NULL,
    partners INTEGER[],                      -- NULL: counts[j + 1] is the count with feature j
    counts   INTEGER[] NOT NULL              -- blocks where both fire (own position: block_count)
);

-- What a feature page shows besides the top examples.
--   feature_logits: the logit lens of each feature (atlas/logits.py: W_dec @ W_U with the final
--     norm's scale folded in, centred over the vocabulary, as sae_vis and Neuronpedia show it),
--     its most promoted ('top') and most suppressed ('bottom') tokens.
--   activation_histograms: positive activations per feature in bins of one log-spaced grid (10
--     per decade from 1e-3 to 1e4, one bin below and one above), nonzero bins only.
--   decile_examples: a few examples per decile of each feature's positive activations, a
--     uniform sample of the decile chosen by a hash of (feature, token position).
CREATE TABLE feature_logits (
    sae_id    VARCHAR NOT NULL,
    feature   INTEGER NOT NULL,
    direction VARCHAR NOT NULL,              -- 'top' (promoted) or 'bottom' (suppressed)
    rank      SMALLINT NOT NULL,             -- 1 = strongest in its direction
    token_id  INTEGER NOT NULL,
    token     VARCHAR NOT NULL,              -- decoded, leading space kept (' Paris')
    value     FLOAT NOT NULL                 -- centred logit effect per unit of activation
);

CREATE TABLE activation_histograms (
    sae_id  VARCHAR NOT NULL,
    feature INTEGER NOT NULL,
    bin     SMALLINT NOT NULL,
    act_lo  DOUBLE NOT NULL,                 -- the bin holds activations in [act_lo, act_hi)
    act_hi  DOUBLE NOT NULL,
    count   BIGINT NOT NULL
);

CREATE TABLE decile_examples (
    sae_id      VARCHAR NOT NULL,
    feature     INTEGER NOT NULL,
    decile      SMALLINT NOT NULL,           -- 1 = lowest tenth of the feature's positive activations
    act_lo      DOUBLE NOT NULL,             -- the decile's activation range (histogram bin edges)
    act_hi      DOUBLE NOT NULL,
    share       DOUBLE NOT NULL,             -- share of the feature's positive activations in the range
    rank        SMALLINT NOT NULL,           -- order within the decile's sample
    act         FLOAT NOT NULL,
    block_id    INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    token       VARCHAR NOT NULL,
    context     VARCHAR NOT NULL,
    token_start INTEGER NOT NULL
);
