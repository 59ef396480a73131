"""Explanations' pure parts: the prompts, reading the LLM's answers, the held-out samples, the
detection score and the search terms. No I/O, no models: strings and numbers in and out.

The explainer's prompt follows EleutherAI Delphi's default explainer (examples with the firing
token between << >>, the activation after each, the answer's last line after "[EXPLANATION]:");
the scorers are Delphi's detection and fuzzing scorers with one text per prompt (their
`n_examples_shown=1` default), read through the answer's probabilities of "1" and "0" (Delphi's `log_prob` mode:
p = P(1) / (P(0) + P(1)), predicted active when p >= 0.5; a local model's whole distribution,
an endpoint's top 5 candidates as Delphi reads them) where the backend gives them, else through
the answer's text; its figure is Delphi's balanced accuracy."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from collections.abc import Sequence

TEMPLATE = "delphi-default/1"
"""The explainer prompt and its version (recorded with each explanation)."""
TOP_TOKENS = "top-tokens"
"""The explainer that needs no LLM: the tokens a feature fires on most ("tokens: X, Y, Z")."""
TOP_TOKENS_TEMPLATE = "top-tokens/1"
DETECTION = "delphi-detection"
"""Delphi's detection: does the explained feature fire on this text?"""
FUZZING = "delphi-fuzzing"
"""Delphi's fuzzing: is the marked token of this text one the explained feature fires on?"""
METHODS = (DETECTION, FUZZING)
"""The scoring methods' names in `explanation_scores`."""

Message = dict[str, str]

EXPLAIN_SYSTEM = (
    "You are a meticulous AI researcher investigating patterns in language. You are given text "
    "examples in which the important word is marked between delimiters <<like this>>, with how "
    "strongly it fires after each example, and the words the pattern makes more likely next.\n"
    "- Describe, in one short phrase, what the marked words and their contexts have in common.\n"
    "- Do not mention the << >> markers. Do not list several possible explanations.\n"
    "- The last line of your answer must be the explanation, after [EXPLANATION]:")
EXPLAIN_SHOT = (
    "Example 1: the fans of the <<Patriots>> cheered (activation 8.1)\n"
    "Example 2: a trade to the <<Steelers>> was (activation 7.4)\n"
    "Example 3: when the <<Giants>> won the (activation 6.9)\n"
    "Words it makes more likely: ' quarterback', ' coach', ' season'")
EXPLAIN_SHOT_ANSWER = "[EXPLANATION]: Names of American football teams."

DETECT_SYSTEM = (
    "You are a meticulous linguistics researcher. You are given the explanation of a feature "
    "of a language model, such as \"male pronouns\" or \"text with negative sentiment\", and "
    "one text. Answer 1 if the feature, as explained, is present in the text, and 0 if it is "
    "not. Answer with the digit only.")
DETECT_SHOTS = (
    ("Feature explanation: Names of American football teams.\n\nText: the fans of the "
     "Patriots cheered", "1"),
    ("Feature explanation: Names of American football teams.\n\nText: the recipe needs two "
     "cups of flour", "0"),
)


@dataclass(frozen=True)
class Example:
    """A stored example: the text around a token, where the token starts in it, and how
    strongly the feature fired on it (0 for a text on which it does not fire)."""

    block_id: int
    position: int
    context: str
    token_start: int
    token: str
    act: float

    def marked(self) -> str:
        """The context with the firing token between << >>."""
        end = self.token_start + len(self.token)
        return f"{self.context[:self.token_start]}<<{self.token}>>{self.context[end:]}"


def explain_prompt(examples: Sequence[Example], promoted: Sequence[str]) -> list[Message]:
    """The explainer's chat: the system's instructions, one worked example, then the feature's
    examples (firing token marked, activation after each) and its logit lens's top tokens."""
    lines = [f"Example {i}: {ex.marked()} (activation {ex.act:.2f})"
             for i, ex in enumerate(examples, 1)]
    if promoted:
        lines.append("Words it makes more likely: " + ", ".join(repr(t) for t in promoted))
    return [{"role": "system", "content": EXPLAIN_SYSTEM},
            {"role": "user", "content": EXPLAIN_SHOT},
            {"role": "assistant", "content": EXPLAIN_SHOT_ANSWER},
            {"role": "user", "content": "\n".join(lines)}]


def parse_explanation(answer: str, *, max_chars: int = 300) -> str:
    """The explanation in an explainer's answer: what follows the last "[EXPLANATION]:", else
    the answer's first non-empty line; whitespace folded, at most `max_chars`."""
    found = re.findall(r"\[EXPLANATION\]:?\s*(.+)", answer, flags=re.IGNORECASE)
    text = found[-1] if found else next((ln for ln in answer.splitlines() if ln.strip()), "")
    return " ".join(text.split())[:max_chars].strip()


def top_tokens_explanation(examples: Sequence[Example], *, n: int = 5) -> str:
    """The top-token explainer: the tokens the examples fire on, most frequent first (ties in
    order of first appearance), as "tokens: X, Y, Z"."""
    counts = Counter(ex.token.strip() or ex.token for ex in examples)
    ordered = sorted(counts, key=lambda t: -counts[t])  # stable: first appearance breaks ties
    return "tokens: " + ", ".join(ordered[:n])


def _scorer_chat(system: str, shots: Sequence[tuple[str, str]], explanation: str,
                 text: str) -> list[Message]:
    """A scorer's chat for one text: instructions, the worked answers, the question."""
    messages = [{"role": "system", "content": system}]
    for question, answer in shots:
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer}]
    return messages + [{"role": "user",
                        "content": f"Feature explanation: {explanation}\n\nText: {text}"}]


def detection_prompt(explanation: str, text: str) -> list[Message]:
    """The detection scorer's chat for one text."""
    return _scorer_chat(DETECT_SYSTEM, DETECT_SHOTS, explanation, text)


FUZZ_SYSTEM = (
    "You are a meticulous linguistics researcher. You are given the explanation of a feature "
    "of a language model and one text in which one or more words are marked between << and >>. "
    "Some texts are marked wrongly. Answer 1 if every marked word is one the feature, as "
    "explained, stands for, and 0 if a marked word is not. Answer with the digit only.")
FUZZ_SHOTS = (
    ("Feature explanation: Names of American football teams.\n\nText: the fans of the "
     "<<Patriots>> cheered", "1"),
    ("Feature explanation: Names of American football teams.\n\nText: the fans <<of>> the "
     "Patriots cheered", "0"),
)


def fuzzing_prompt(explanation: str, text: str) -> list[Message]:
    """The fuzzing scorer's chat for one marked text."""
    return _scorer_chat(FUZZ_SYSTEM, FUZZ_SHOTS, explanation, text)


def mark(pieces: Sequence[str], i: int) -> str:
    """Tokens joined into text with token `i` between << >> (a fuzzing decoy: a token the
    feature does not fire on, marked as if it did)."""
    return "".join(pieces[:i]) + f"<<{pieces[i]}>>" + "".join(pieces[i + 1:])


def parse_detection(answer: str) -> float | None:
    """A scorer's text answer as P(active): 1.0 or 0.0 from its first 0/1 digit, None when it
    has none (a failed answer, left out of the score as Delphi leaves it out)."""
    m = re.search(r"[01]", answer)
    return None if m is None else float(m.group(0))


def probability_of_one(top: dict[str, float]) -> float | None:
    """Delphi's `log_prob` reading: P(1) / (P(0) + P(1)), each summed over the candidate tokens
    (token -> probability) that contain the digit; None when neither digit is among them."""
    p1 = sum(p for tok, p in top.items() if "1" in tok)
    p0 = sum(p for tok, p in top.items() if "0" in tok and "1" not in tok)
    return None if p0 + p1 <= 0 else p1 / (p0 + p1)


@dataclass(frozen=True)
class Score:
    """Delphi's detection figures of one explanation on one set of held-out texts."""

    n_activating: int
    n_non_activating: int
    n_failed: int
    accuracy: float | None
    balanced_accuracy: float | None


def detection_score(probabilities: Sequence[float | None], activating: Sequence[bool],
                    *, threshold: float = 0.5) -> Score:
    """Delphi's confusion over the answers that parsed (p >= threshold: predicted active):
    accuracy = (TP + TN) / n and balanced accuracy = (TP / P + TN / N) / 2 (a class with no
    texts counts 0, as in Delphi's `compute_classification_metrics`)."""
    if len(probabilities) != len(activating):
        raise ValueError("one probability per text")
    valid = [(p >= threshold, a) for p, a in zip(probabilities, activating) if p is not None]
    pos = sum(a for _, a in valid)
    neg = len(valid) - pos
    tp = sum(pred and a for pred, a in valid)
    tn = sum(not pred and not a for pred, a in valid)
    return Score(n_activating=sum(activating), n_non_activating=len(activating) - sum(activating),
                 n_failed=len(probabilities) - len(valid),
                 accuracy=(tp + tn) / len(valid) if valid else None,
                 balanced_accuracy=((tp / pos if pos else 0.0) + (tn / neg if neg else 0.0)) / 2
                 if valid else None)


def terms(text: str) -> list[str]:
    """The search terms of a text: its lower-case runs of letters and digits (what
    `search_explanations` splits a query into, with the same rule)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def term_rows(text: str) -> list[tuple[str, int, int]]:
    """(term, count in the text, the text's length in terms) of each distinct term."""
    words = terms(text)
    return [(t, c, len(words)) for t, c in Counter(words).items()]
