"""Explanations, per feature: what a feature means in words, written by an explainer LLM from
the feature's stored examples and logit lens, scored by a scorer LLM on held-out examples
(EleutherAI Delphi's detection and fuzzing scorers), and searchable by meaning (BM25 over the words).

Not part of `atlas analyze` or the build: it is an LLM's work, long and resumable, run by
`atlas explain`. Files: `command.py` (the command), `explain.py` (prompts, parsing, scores,
search terms: pure), `backends.py` (the explainer and scorer LLMs: a Hugging Face causal LM,
or an OpenAI-compatible chat endpoint), the .sql files (its tables and views), `queries.py` and
`page.py` (its app page, and what it adds to every Feature page)."""

ORDER = 60
"""Its place among the analyses' pages."""
COMMAND = "explain"
"""`atlas explain` writes and scores explanations."""
HELP = ("explain an SAE's features with an explainer LLM and score the explanations (Delphi's "
        "detection and fuzzing); resumable")
"""The command's line in `atlas --help`."""
RUNNER = False
"""A command of its own (`command.py`) instead of the runner's contract."""
