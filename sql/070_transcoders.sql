-- Transcoders (SAELens's Transcoder, SkipTranscoder, JumpReLU and JumpReLUSkip transcoders)
-- encode at `hook` (the MLP's input) and decode into `hook_out` (the MLP's output): their
-- decoder rows (`decoders.vector`), logit lens and quality (against the MLP's output) are in
-- that space. NULL for SAEs, whose decoders write the residual stream they read.
ALTER TABLE saes ADD COLUMN hook_out VARCHAR;
