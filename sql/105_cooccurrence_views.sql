-- Co-occurrence affinities of the harvest's block counts, whatever the storage form.

-- The five co-occurrence affinities from block counts: n_ij (both fire), n_i, n_j, n blocks.
CREATE OR REPLACE MACRO cooc_jaccard(n_ij, n_i, n_j) AS n_ij / (n_i + n_j - n_ij)::DOUBLE;
CREATE OR REPLACE MACRO cooc_dice(n_ij, n_i, n_j) AS 2.0 * n_ij / (n_i + n_j);
CREATE OR REPLACE MACRO cooc_overlap(n_ij, n_i, n_j) AS n_ij / least(n_i, n_j)::DOUBLE;
CREATE OR REPLACE MACRO cooc_smc(n_ij, n_i, n_j, n) AS (n - n_i - n_j + 2 * n_ij) / n::DOUBLE;
CREATE OR REPLACE MACRO cooc_phi(n_ij, n_i, n_j, n) AS
    (n::DOUBLE * n_ij - n_i::DOUBLE * n_j)
      / nullif(sqrt(n_i::DOUBLE * (n - n_i) * n_j * (n - n_j)), 0);

-- Co-occurrence affinities of every pair that fired together in at least one block.
CREATE OR REPLACE VIEW affinity AS
SELECT c.sae_id, c.i, c.j, c.n_ij,
       fi.block_count AS n_i, fj.block_count AS n_j, h.n_blocks AS n,
       cooc_jaccard(c.n_ij, fi.block_count, fj.block_count) AS jaccard,
       cooc_dice(c.n_ij, fi.block_count, fj.block_count) AS dice,
       cooc_overlap(c.n_ij, fi.block_count, fj.block_count) AS overlap,
       cooc_smc(c.n_ij, fi.block_count, fj.block_count, h.n_blocks) AS smc,
       cooc_phi(c.n_ij, fi.block_count, fj.block_count, h.n_blocks) AS phi
FROM cooccurrence c
JOIN harvests h USING (sae_id)
JOIN features fi ON fi.sae_id = c.sae_id AND fi.feature = c.i
JOIN features fj ON fj.sae_id = c.sae_id AND fj.feature = c.j;

-- One feature's co-occurrence partners with all five affinities, whatever the storage form
-- (harvests.cooccurrence_storage): SELECT * FROM partners('sae', 42) ORDER BY phi DESC LIMIT 10.
-- Exact counts for every stored form; under 'matrix' and 'top-<m>' only each affinity's m best
-- partners are here (a 'matrix' harvest keeps every count in its file, atlas.blockgram).
CREATE OR REPLACE MACRO partners(sae, f) AS TABLE
WITH counted AS (
    SELECT CASE WHEN c.i = f THEN c.j ELSE c.i END AS partner, c.n_ij
    FROM cooccurrence c WHERE c.sae_id = sae AND (c.i = f OR c.j = f)
    UNION ALL
    -- partners NULL: every feature in order (the 'rows' form of schema version 1)
    SELECT unnest(coalesce(r.partners::BIGINT[], range(len(r.counts)))) AS partner,
           unnest(r.counts) AS n_ij
    FROM cooccurrence_rows r WHERE r.sae_id = sae AND r.feature = f
)
SELECT c.partner::INTEGER AS partner, fj.label, c.n_ij,
       fi.block_count AS n_i, fj.block_count AS n_j, h.n_blocks AS n,
       cooc_jaccard(c.n_ij, fi.block_count, fj.block_count) AS jaccard,
       cooc_dice(c.n_ij, fi.block_count, fj.block_count) AS dice,
       cooc_overlap(c.n_ij, fi.block_count, fj.block_count) AS overlap,
       cooc_smc(c.n_ij, fi.block_count, fj.block_count, h.n_blocks) AS smc,
       cooc_phi(c.n_ij, fi.block_count, fj.block_count, h.n_blocks) AS phi
FROM counted c
JOIN harvests h ON h.sae_id = sae
JOIN features fi ON fi.sae_id = sae AND fi.feature = f
JOIN features fj ON fj.sae_id = sae AND fj.feature = c.partner
WHERE c.partner <> f AND c.n_ij > 0;
