-- What the query layer needs: a checksum of each SAE's stored decoders (a FAISS index built
-- from other decoders is stale) and the string that reloads a model.

ALTER TABLE saes ADD COLUMN decoder_checksum VARCHAR;
ALTER TABLE models ADD COLUMN spec VARCHAR;
