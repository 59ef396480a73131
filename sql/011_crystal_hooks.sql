-- Crystal results name the residual point their words were read at unambiguously:
-- 'blocks.L.hook_resid_post' is block L's output (hidden_states[L + 1] in transformers),
-- 'blocks.L.hook_resid_pre' its input (hidden_states[L]). Earlier runs read resid_post.
ALTER TABLE crystal_tasks ADD COLUMN hook VARCHAR;
ALTER TABLE crystals ADD COLUMN hook VARCHAR;
ALTER TABLE distractors ADD COLUMN hook VARCHAR;
ALTER TABLE crystal_points ADD COLUMN hook VARCHAR;
UPDATE crystal_tasks SET hook = 'blocks.' || layer || '.hook_resid_post';
UPDATE crystals SET hook = 'blocks.' || layer || '.hook_resid_post';
UPDATE distractors SET hook = 'blocks.' || layer || '.hook_resid_post';
UPDATE crystal_points SET hook = 'blocks.' || layer || '.hook_resid_post';
UPDATE analysis_runs
SET subject = regexp_replace(subject, '/L(\d+)$', '/blocks.\1.hook_resid_post')
WHERE analysis = 'crystals';
