-- SAEs of 4,097 to 16,384 features keep their co-occurrence in the form 'matrix'
-- (harvests.cooccurrence_storage): the full symmetric count matrix (diagonal: block counts) as
-- a .npy file in the folder <atlas>.cooccurrence/ beside the atlas, named here, and each
-- feature's 64 best partners by each affinity in `cooccurrence_rows` (partners ascending).
-- Atlases of schema version 1 stored such SAEs in the form 'rows' (every count in
-- `cooccurrence_rows`, partners NULL), which this version still reads.
ALTER TABLE harvests ADD COLUMN cooccurrence_file VARCHAR;
