-- How a corpus was cut into blocks, and each block's length: 'document' blocks never span two
-- documents (a start token, then up to block_size - 1 tokens of one document; the last block
-- of a document is shorter and padded), 'packed' blocks are full windows of documents joined
-- by the end-of-text token. Atlases built before this file were packed.
ALTER TABLE corpora ADD COLUMN block_rule VARCHAR;
UPDATE corpora SET block_rule = 'packed';
ALTER TABLE blocks ADD COLUMN n_tokens INTEGER;       -- positions before the padding
UPDATE blocks SET n_tokens = len(token_ids);
