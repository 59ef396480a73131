-- What a feature page shows besides the top examples.
--   feature_logits: the logit lens of each feature (atlas/logits.py: W_dec @ W_U with the final
--     norm's scale folded in, centred over the vocabulary, as sae_vis and Neuronpedia show it),
--     its TOP_K most promoted ('top', rank 1 = largest) and most suppressed ('bottom', rank 1 =
--     most negative) tokens.
--   activation_histograms: positive activations per feature in bins of one log-spaced grid (10
--     per decade from 1e-3 to 1e4, one bin below and one above), nonzero bins only.
--   decile_examples: a few examples per decile of each feature's positive activations, a
--     uniform sample of the decile chosen by a hash of (feature, token position).
--   harvests.logit_lens: how the SAE's logit lens was computed.
CREATE TABLE feature_logits (
    sae_id     VARCHAR NOT NULL,
    feature    INTEGER NOT NULL,
    direction  VARCHAR NOT NULL,     -- 'top' (promoted) or 'bottom' (suppressed)
    rank       SMALLINT NOT NULL,    -- 1 = strongest in its direction
    token_id   INTEGER NOT NULL,
    token      VARCHAR NOT NULL,     -- decoded, leading space kept (' Paris')
    value      FLOAT NOT NULL        -- centred logit effect per unit of activation
);

CREATE TABLE activation_histograms (
    sae_id   VARCHAR NOT NULL,
    feature  INTEGER NOT NULL,
    bin      SMALLINT NOT NULL,
    act_lo   DOUBLE NOT NULL,        -- the bin holds activations in [act_lo, act_hi)
    act_hi   DOUBLE NOT NULL,
    count    BIGINT NOT NULL
);

CREATE TABLE decile_examples (
    sae_id      VARCHAR NOT NULL,
    feature     INTEGER NOT NULL,
    decile      SMALLINT NOT NULL,   -- 1 = lowest tenth of the feature's positive activations
    act_lo      DOUBLE NOT NULL,     -- the decile's activation range (histogram bin edges)
    act_hi      DOUBLE NOT NULL,
    share       DOUBLE NOT NULL,     -- share of the feature's positive activations in the range
    rank        SMALLINT NOT NULL,   -- order within the decile's sample
    act         FLOAT NOT NULL,
    block_id    INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    token       VARCHAR NOT NULL,
    context     VARCHAR NOT NULL,
    token_start INTEGER NOT NULL
);

ALTER TABLE harvests ADD COLUMN logit_lens VARCHAR;
