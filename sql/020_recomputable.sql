-- li2024 crystals: each pair's difference vector itself (object - subject, float64), so the
-- stored silhouettes can be recomputed from the atlas alone.
ALTER TABLE crystal_differences ADD COLUMN vector DOUBLE[];

-- Absorption: each letter's unit probe direction in the residual stream (the probe the
-- definition trained), so decoder cosines and shares can be re-derived from the atlas.
ALTER TABLE absorption_letters ADD COLUMN probe_direction DOUBLE[];
