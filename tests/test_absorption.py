"""`atlas absorption` on the tiny atlas: cached-prefix residuals, stored tables and views."""

import duckdb
import numpy as np
import torch

from atlas.analyses.absorption.analysis import (
    example_groups,
    first_letter_vocabulary,
    grouped_residuals,
    icl_prefix,
    icl_prompt,
    prompt_residuals,
    prompt_prefix,
    word_residuals,
)
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


def test_saebench_vocabulary_is_every_alphabetic_token(tiny_lm):
    """SAEBench's `get_alpha_tokens`: letters only, one optional leading space."""
    tok = tiny_lm.tokenizer
    vocab = first_letter_vocabulary(tok, style="saebench")
    want = {t for t in range(len(tok)) if t not in tok.all_special_ids
            and (lambda s: s != "" and all(c.isascii() and c.isalpha() for c in s))(
                tok.decode([t])[1:] if tok.decode([t]).startswith(" ") else tok.decode([t]))}
    assert set(vocab.token_ids.tolist()) == want
    assert any(not w.startswith(" ") for w in vocab.words)
    assert set(first_letter_vocabulary(tok).token_ids) < want


def test_prompt_residuals_read_each_word_after_bos_and_its_examples(tiny_lm):
    """Prompts of several lengths, batched by length, equal running each prompt alone."""
    words = [" the", "quick", " fox", " capital"]
    prompts = [icl_prompt(w, ["brown", " dog", " king"][:1 + i % 3]) for i, w in
               enumerate(words)]
    assert prompts[0].startswith("\n") and prompts[0].endswith(" the has the first letter:")
    assert "brown has the first letter: B\n" in prompts[0]
    hooks = [HookPoint(1), HookPoint(3, "pre")]
    got = prompt_residuals(tiny_lm, prompts, hooks, batch_size=2, progress=False)
    tok = tiny_lm.tokenizer
    tail = len(tok(" has the first letter:", add_special_tokens=False).input_ids)
    for i, p in enumerate(prompts):
        ids = torch.tensor([[tok.bos_token_id] + tok(p, add_special_tokens=False).input_ids])
        want = capture_residuals(tiny_lm, ids, hooks)
        for h in hooks:
            np.testing.assert_allclose(got[h.name][i], want[h.name][0, -1 - tail].numpy(),
                                       rtol=1e-4, atol=1e-5)


def test_example_groups_cover_each_word_once_and_never_show_a_word_its_own_group(tiny_lm):
    vocab = first_letter_vocabulary(tiny_lm.tokenizer, style="saebench")
    n = len(vocab.words)
    members = np.arange(0, n, 2)
    rng = np.random.default_rng(3)
    groups = example_groups(members, np.arange(n), 10, 7, rng, vocab.words)
    seen = np.concatenate([rows for rows, _ in groups])
    assert sorted(seen.tolist()) == members.tolist()
    assert max(len(rows) for rows, _ in groups) == 7
    for rows, prefix in groups:
        lines = prefix.strip("\n").split("\n")
        assert len(lines) == 10
        shown = {line.split(" has the first letter:")[0] for line in lines}
        assert not shown & {vocab.words[r] for r in rows}
    # the prefix is SAEBench's prompt up to the word
    assert icl_prefix(["ab", " cd"]) + " x has the first letter:" == icl_prompt(" x",
                                                                               ["ab", " cd"])


def test_grouped_prompts_give_each_word_s_own_prompt_residuals(tiny_lm):
    """Examples run once per group and cached, then one token per word, equal the whole prompt
    of each word run alone (BOS, its group's examples, the word) read at the word."""
    vocab = first_letter_vocabulary(tiny_lm.tokenizer, style="saebench")
    n = len(vocab.words)
    rng = np.random.default_rng(0)
    groups = example_groups(np.arange(12), np.arange(n), 4, 5, rng, vocab.words)
    hooks = [HookPoint(1), HookPoint(3, "pre")]
    got = grouped_residuals(tiny_lm, groups, vocab.token_ids, n, hooks, progress=False)
    tok = tiny_lm.tokenizer
    tail = len(tok(" has the first letter:", add_special_tokens=False).input_ids)
    for rows, prefix in groups:
        shown = [line.split(" has the first letter:")[0]
                 for line in prefix.strip("\n").split("\n")]
        for r in rows:
            prompt = icl_prompt(vocab.words[r], shown)
            ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False).input_ids
            assert ids[-1 - tail] == vocab.token_ids[r]  # the word is its own token here
            want = capture_residuals(tiny_lm, torch.tensor([ids]), hooks)
            for h in hooks:
                np.testing.assert_allclose(got[h.name][r], want[h.name][0, -1 - tail].numpy(),
                                           rtol=1e-4, atol=1e-4)
    untouched = np.setdiff1d(np.arange(n), np.arange(12))
    assert not got[hooks[0].name][untouched].any()


def test_absorption_command_stores_both_definitions_side_by_side(atlas_copy, capsys):
    db, ids = atlas_copy
    assert main(["absorption", "--db", str(db), "--max-k", "4", "--words", "300"]) == 0
    assert main(["absorption", "--db", str(db), "--max-k", "4", "--definition", "atlas"]) == 0
    out = capsys.readouterr().out
    assert "letters scored" in out and "absorption (saebench)" in out
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT sae_id, definition, letter, probe_f1, n_split, "
                           "absorption_rate, full_absorption_rate, main_latents, main_labels, "
                           "f1_by_k, scored, n_main FROM absorption").fetchall()
        assert {(r[0], r[1]) for r in rows} == {(s, d) for s in ids
                                                for d in ("saebench", "atlas")}
        for r in rows:
            assert 0 <= r[3] <= 1 and len(r[7]) == r[4] + 1 == len(r[8]) == r[11]
            assert len(r[9]) == 4
            if r[10]:
                assert 0 <= r[5] <= 1 and 0 <= r[6] <= 1
        # SAEBench measures every held-out word its probe gets right; the atlas variant those
        # of scored letters.
        for defn, where in (("saebench", ""), ("atlas", "AND scored")):
            n_words = con.execute("SELECT count(*) FROM absorbed_words JOIN analysis_runs "
                                  "USING (run_id) WHERE definition = ?", [defn]).fetchone()[0]
            tp = con.execute(f"SELECT sum(n_true_positives) FROM absorption WHERE definition "
                             f"= ? {where}", [defn]).fetchone()
            assert n_words == (tp[0] or 0)
        by_sae = con.execute("SELECT definition, evaluated, letters_scored, "
                             "mean_absorption_rate, vocabulary FROM absorption_by_sae").fetchall()
        assert sorted(r[0] for r in by_sae) == ["atlas"] * len(ids) + ["saebench"] * len(ids)
        # the SAEBench run drew 300 words, the atlas run took them all
        assert {r[4] for r in by_sae} == {"300 drawn", "all"}
        assert all(r[4] == ("300 drawn" if r[0] == "saebench" else "all") for r in by_sae)
        for defn, evaluated, scored, rate, _ in by_sae:
            # SAEBench evaluates an SAE only with 20 letters its probe reads (F1 > 0.6)
            assert evaluated == (scored >= (20 if defn == "saebench" else 1))
            assert (rate is None) == (not evaluated or scored == 0)
        # The stored probe directions and decoders give the stored decoder cosines of the
        # main latents and of each absorbing latent.
        from atlas import store

        for sid in ids:
            unit = store.load_decoders(con, sid).astype(np.float64)
            for main_latents, main_cos, direction in con.execute(
                    "SELECT main_latents, main_cos, probe_direction FROM absorption_letters "
                    "l JOIN analysis_runs USING (run_id) WHERE l.sae_id = ?", [sid]).fetchall():
                assert abs(np.linalg.norm(direction) - 1) < 1e-9
                np.testing.assert_allclose(unit[main_latents] @ direction, main_cos, atol=1e-5)
            for absorber, cos, direction in con.execute(
                    "SELECT w.absorber, w.absorber_cos, l.probe_direction FROM absorbed_words w "
                    "JOIN absorption_letters l USING (run_id, letter) WHERE w.sae_id = ?",
                    [sid]).fetchall():
                assert abs(unit[absorber] @ direction - cos) < 1e-5
    # a second run of one SAE replaces its rows under that definition and keeps the others
    before = _counts(db)
    assert main(["absorption", "--db", str(db), "--sae", "L1", "--max-k", "4",
                 "--definition", "atlas"]) == 0
    assert _counts(db) == before


def _counts(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT sae_id, definition, count(*) FROM absorption_letters JOIN "
                           "analysis_runs USING (run_id) GROUP BY ALL ORDER BY ALL").fetchall()


def test_absorption_rejects_bad_arguments(atlas_copy, capsys):
    db, _ = atlas_copy
    assert main(["absorption", "--db", str(db), "--max-k", "0"]) == 2
    assert "--max-k" in capsys.readouterr().err
    assert main(["absorption", "--db", str(db.with_name("nope.duckdb"))]) == 2
