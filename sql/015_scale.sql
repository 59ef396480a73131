-- Storage that stays bounded for wide SAEs (16k-65k features). Each harvest records how it
-- stored co-occurrence and block firings, and in what precision its decoders are.
--   cooccurrence_storage: 'pairs' (every pair with n_ij > 0 in `cooccurrence`), 'rows' (the
--     full matrix in `cooccurrence_rows`, one list per feature, position = partner) or
--     'top-<m>' (in `cooccurrence_rows`: each feature's m best partners by each affinity);
--   block_firings_kept: 'all' or 'top-<m>' (each feature's m blocks of highest activation);
--   decoder_dtype: 'float32'.
ALTER TABLE harvests ADD COLUMN cooccurrence_storage VARCHAR DEFAULT 'pairs';
ALTER TABLE harvests ADD COLUMN block_firings_kept VARCHAR DEFAULT 'all';
ALTER TABLE harvests ADD COLUMN decoder_dtype VARCHAR DEFAULT 'float32';

CREATE TABLE cooccurrence_rows (
    sae_id    VARCHAR NOT NULL,
    feature   INTEGER NOT NULL,
    partners  INTEGER[],                 -- NULL: counts[j + 1] is the count with feature j
    counts    INTEGER[] NOT NULL         -- blocks where both fire (own position: block_count)
);

-- Lobes of SAEs stored as 'top-<m>' run on a sparse k-nearest-neighbour graph of the affinity
-- (and of decoder directions); the dense matrix otherwise.
ALTER TABLE lobe_tests ADD COLUMN graph VARCHAR DEFAULT 'dense';
