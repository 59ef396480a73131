-- Published SAEs: the SAELens release and id an SAE was loaded from, and its Neuronpedia id
-- (its features' pages are https://www.neuronpedia.org/<neuronpedia_id>/<feature>).

ALTER TABLE saes ADD COLUMN release VARCHAR;
ALTER TABLE saes ADD COLUMN release_sae_id VARCHAR;
ALTER TABLE saes ADD COLUMN neuronpedia_id VARCHAR;
