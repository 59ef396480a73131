-- Which co-occurrence windows a lobe_tests row counted: the corpus's block rule ('document',
-- 'packed', or 'li2024': the geometry paper's full 256-token windows inside one context per
-- document) and the number of windows. Rows written before this column existed used their
-- corpus's rule (corpora.block_rule).
ALTER TABLE lobe_tests ADD COLUMN window_rule VARCHAR;
