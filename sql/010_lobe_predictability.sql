-- Lobe predictability as the geometry paper tests it (li2024): an unweighted logistic
-- regression's held-out accuracy against draws of random unit vectors (their mean is
-- logreg_random_accuracy); `chance` is the largest lobe's share of the held-out split.
ALTER TABLE lobe_tests ADD COLUMN logreg_random_std DOUBLE;
ALTER TABLE lobe_tests ADD COLUMN logreg_z DOUBLE;            -- (accuracy - mean) / std
ALTER TABLE lobe_tests ADD COLUMN logreg_draws INTEGER;
