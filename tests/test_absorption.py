"""`atlas absorption` on the tiny atlas: cached-prefix residuals, stored tables and views."""

import duckdb
import numpy as np
import torch

from atlas.analyses.absorption import first_letter_vocabulary, prompt_prefix, word_residuals
from atlas.cli import main
from atlas.models import HookPoint, capture_residuals


def test_vocabulary_is_whole_alphabetic_words(tiny_lm):
    vocab = first_letter_vocabulary(tiny_lm.tokenizer)
    assert len(vocab.words) > 20
    for tid, word, label in zip(vocab.token_ids, vocab.words, vocab.labels):
        assert tiny_lm.tokenizer.decode([int(tid)]) == " " + word
        assert word.isalpha() and ord(word[0].lower()) - ord("a") == label
    few = first_letter_vocabulary(tiny_lm.tokenizer, n_words=10, seed=1)
    assert len(few.words) == 10 and set(few.words) <= set(vocab.words)


def test_cached_prefix_gives_the_full_prompt_residuals(tiny_lm):
    """One token on top of the cached examples equals running the whole prompt."""
    vocab = first_letter_vocabulary(tiny_lm.tokenizer)
    ids = vocab.token_ids[:23]
    hooks = [HookPoint(1), HookPoint(3, "pre")]
    got = word_residuals(tiny_lm, ids, hooks, batch_size=8, progress=False)
    prefix = tiny_lm.tokenizer(prompt_prefix(), add_special_tokens=False).input_ids
    full = torch.tensor([prefix + [int(t)] for t in ids])
    want = capture_residuals(tiny_lm, full, hooks)
    for h in hooks:
        np.testing.assert_allclose(got[h.name], want[h.name][:, -1].numpy(), rtol=1e-4,
                                   atol=1e-5)


def test_absorption_command_fills_tables_and_views(atlas_copy, capsys):
    db, ids = atlas_copy
    assert main(["absorption", "--db", str(db), "--max-k", "4"]) == 0
    assert "letters scored" in capsys.readouterr().out
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT sae_id, letter, probe_f1, n_split, absorption_rate, "
                           "full_absorption_rate, main_latents, main_labels, f1_by_k, scored "
                           "FROM absorption").fetchall()
        assert {r[0] for r in rows} == set(ids)
        for r in rows:
            assert 0 <= r[2] <= 1 and len(r[6]) == r[3] + 1 == len(r[7]) and len(r[8]) == 4
            if r[9]:
                assert 0 <= r[4] <= 1 and 0 <= r[5] <= 1
        n_words = con.execute("SELECT count(*) FROM absorbed_words").fetchone()[0]
        tp = con.execute("SELECT sum(n_true_positives) FROM absorption WHERE scored").fetchone()
        assert n_words == (tp[0] or 0)
        by_sae = con.execute("SELECT count(*) FROM absorption_by_sae").fetchone()[0]
        assert by_sae == len(ids)
    # a second run of one SAE replaces its rows and keeps the other's
    before = _counts(db)
    assert main(["absorption", "--db", str(db), "--sae", "L1", "--max-k", "4"]) == 0
    assert _counts(db) == before


def _counts(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT sae_id, count(*) FROM absorption_letters GROUP BY 1 "
                           "ORDER BY 1").fetchall()


def test_absorption_rejects_bad_arguments(atlas_copy, capsys):
    db, _ = atlas_copy
    assert main(["absorption", "--db", str(db), "--max-k", "0"]) == 2
    assert "--max-k" in capsys.readouterr().err
    assert main(["absorption", "--db", str(db.with_name("nope.duckdb"))]) == 2
