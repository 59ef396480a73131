"""Token ids to text: the one-call decoding reads as the tokenizer's own `batch_decode`."""

import numpy as np
from transformers import PreTrainedTokenizerFast

from atlas.tokens import decode_each
from tests.tiny import tiny_tokenizer

TEXT = "Paris is the capital of France.  def f(x):\n\treturn x ** 2  # ünïcödé"


def test_decode_each_reads_every_id_and_text_as_batch_decode():
    tok = tiny_tokenizer()
    ids = tok(TEXT)["input_ids"]
    seqs = [[i] for i in range(len(tok))] + [ids, ids[3:9], [], [tok.eos_token_id, *ids]]
    assert decode_each(tok, seqs) == tok.batch_decode(seqs)
    # numpy rows (as the atlas slices its blocks) read as lists of ints
    rows = [np.asarray(s, dtype=np.int64) for s in seqs]
    assert decode_each(tok, rows) == tok.batch_decode(seqs)


def test_a_tokenizer_that_cleans_up_spaces_decodes_through_transformers():
    base = tiny_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token="<bos>",
                                  eos_token="<eos>", clean_up_tokenization_spaces=True)
    seqs = [tok(t)["input_ids"] for t in ("a , b .", "it 's", "x ?")]
    assert decode_each(tok, seqs) == tok.batch_decode(seqs)
