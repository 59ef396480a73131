-- The geometry paper's clustering entropy (li2024) beside the atlas's: subsample, standardise,
-- 100 principal components, nearest-neighbour entropy with its distance offset averaged over
-- 30 bootstrap resamples, against the Gaussian entropy of the components.
ALTER TABLE galaxy_stats ADD COLUMN li2024_entropy_gap DOUBLE;    -- H_gauss - mean H_kNN (nats)
ALTER TABLE galaxy_stats ADD COLUMN li2024_entropy_ci95 DOUBLE;   -- 95% half-width (t, bootstrap)
ALTER TABLE galaxy_stats ADD COLUMN li2024_h_knn DOUBLE;
ALTER TABLE galaxy_stats ADD COLUMN li2024_h_gauss DOUBLE;
ALTER TABLE galaxy_stats ADD COLUMN li2024_entropy_dims INTEGER;
ALTER TABLE galaxy_stats ADD COLUMN li2024_entropy_n INTEGER;     -- points after subsampling
