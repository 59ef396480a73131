-- What a re-run of a build may keep: each harvest records the key of the build settings that
-- determine its content, so a build killed part-way and run again skips the SAEs whose harvest
-- is already stored under the same key (and corpus).
ALTER TABLE harvests ADD COLUMN build_key VARCHAR;
