-- The crystal analysis's views.

-- Parallelogram quality and held-out analogy top-1 / top-5 (closed vocabulary, mean-centred
-- cosine) before/after projecting out distractor directions, per task and residual point
-- (`hook`: 'blocks.L.hook_resid_post' is block L's output).
CREATE OR REPLACE VIEW crystal_quality AS
SELECT model_id, layer, hook, space, task, definition, representation, n_pairs, n_queries,
       parallelogram_quality, accuracy_before AS top1_before, accuracy_after AS top1_after,
       top5_before, top5_after, accuracy_after - accuracy_before AS removal_gain, run_id
FROM crystal_tasks
ORDER BY model_id, layer, hook, space, task;

-- Word representations per residual point: held-out top-1/top-5 before and after distractor
-- removal; `chosen` is the one the run used (best top-1 on the fitting pairs unless set).
CREATE OR REPLACE VIEW word_representation_quality AS
SELECT model_id, layer, hook, representation, chosen, fit_top1, top1_before, top5_before,
       distractor_dims, top1_after, top5_after, n_queries, run_id
FROM word_representations
ORDER BY model_id, layer, hook, representation;

-- The paper's crystal experiment (li2024): silhouette of task classes among pair differences,
-- raw (n_components 0) and after LDA, in-sample as the paper and on held-out pairs.
CREATE OR REPLACE VIEW crystal_separation AS
SELECT model_id, layer, hook, hidden_state, definition, n_components, silhouette,
       silhouette_heldout, run_id
FROM crystal_lda
ORDER BY model_id, layer, hook, n_components;

-- Crystal searches: how often the quadruples found are two pairs of one relation, before and
-- after distractor removal, against random quadruples of the same words.
CREATE OR REPLACE VIEW crystal_search AS
SELECT model_id, layer, hook, space, representation, distractor_dims, same_relation_before,
       same_relation_after, same_relation_chance, silhouette_before, silhouette_after,
       length_corr, token_corr, run_id
FROM distractors
ORDER BY model_id, layer, hook, space;
