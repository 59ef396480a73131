-- Which lobe predictability test produced a lobe_tests row: 'li2024' (the geometry paper's
-- comparison notebook: features in order, first 80% fit, last 20% scored by balanced
-- accuracy; population std of the random draws) or 'atlas' (stratified random 30% held out,
-- accuracy, sample std). Rows written before this column existed used the atlas test.
ALTER TABLE lobe_tests ADD COLUMN logreg_definition VARCHAR DEFAULT 'atlas';
