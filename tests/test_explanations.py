"""Feature explanations (`atlas explain`): real generation with the tiny model through
transformers and through the real `openai` client against an OpenAI-compatible server on
127.0.0.1 serving that model; Delphi's detection score against a transcription of its formula
and on planted cases; BM25 search against a transcription; resume, bad endpoints, the app and
the Neuronpedia export."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.analyses.explanations import command as cmd
from atlas.analyses.explanations import explain as ex
from atlas.analyses.explanations.backends import HuggingFace
from atlas.cli import main
from tests.tiny import tiny_model_dir

EXPLAIN = ["--limit", "4", "--max-tokens", "8", "--blocks", "8", "--held-out", "3",
           "--examples", "4", "--device", "cpu"]


def q(db, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture(scope="module")
def explained(tiny_atlas, tmp_path_factory):
    """A copy of the tiny atlas with 4 features of one SAE explained (tiny model) and scored."""
    import shutil

    db = tmp_path_factory.mktemp("explained") / "x.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    sae = tiny_atlas[1].sae_ids[0]
    assert main(["explain", "--db", str(db), "--sae", sae, "--explainer",
                 str(tiny_model_dir()), *EXPLAIN]) == 0
    return db, sae


def test_explanations_are_stored_with_explainer_template_and_examples(explained):
    db, sae = explained
    top4 = [r[0] for r in q(db, "SELECT feature FROM features WHERE sae_id = ? AND "
                            "firing_count > 0 ORDER BY firing_count DESC, feature LIMIT 4",
                            [sae])]
    rows = q(db, "SELECT feature, explainer, template, explanation, examples, seconds FROM "
             "explanations WHERE sae_id = ? ORDER BY feature, explainer", [sae])
    assert sorted({r[0] for r in rows}) == sorted(top4)
    assert {(r[1], r[2]) for r in rows} == {("hf:tiny-random-llama", ex.TEMPLATE),
                                            (ex.TOP_TOKENS, ex.TOP_TOKENS_TEMPLATE)}
    for feature, explainer, _, text, shown, seconds in rows:
        stored = q(db, "SELECT block_id, position FROM examples WHERE sae_id = ? AND "
                   "feature = ? AND rank <= 4 ORDER BY rank", [sae, feature])
        assert [(e["block_id"], e["position"]) for e in shown] == stored
        if explainer == ex.TOP_TOKENS:
            tokens = [r[0].strip() for r in q(db, "SELECT token FROM examples WHERE "
                                              "sae_id = ? AND feature = ? AND rank <= 4 "
                                              "ORDER BY rank", [sae, feature])]
            assert text.startswith("tokens: ") and tokens[0] in text
        else:
            assert seconds > 0 and isinstance(text, str)


def test_the_explainer_is_the_models_greedy_answer(explained, tiny_lm):
    """The stored explanation is what the model itself generates greedily for the prompt."""
    db, sae = explained
    feature, text = q(db, "SELECT feature, explanation FROM explanations WHERE sae_id = ? AND "
                      "explainer LIKE 'hf:%' ORDER BY feature LIMIT 1", [sae])[0]
    with duckdb.connect(str(db), read_only=True) as con:
        f = cmd._read_features(con, sae, [feature], 4)[0]
    chat = ex.explain_prompt(f.top, f.promoted)
    tok = tiny_lm.tokenizer
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) \
        if tok.chat_template else None
    assert prompt is None or "<<" in prompt
    answer = HuggingFace(tiny_lm, batch=1).generate([chat], 8)[0]
    assert text == ex.parse_explanation(answer)


def test_every_explanation_is_scored_beside_its_baseline(explained):
    db, sae = explained
    rows = q(db, "SELECT feature, explainer, scorer, method, n_activating, n_non_activating, "
             "n_failed, accuracy, balanced_accuracy, baseline_feature, "
             "baseline_balanced_accuracy FROM explanation_scores WHERE sae_id = ?", [sae])
    assert len(rows) == 16   # 4 features x 2 explainers x (detection, fuzzing)
    assert {r[3] for r in rows} == {ex.DETECTION, ex.FUZZING}
    for (feature, _, scorer, _method, n_pos, n_neg, failed, acc, bal, base_f, base_bal) in rows:
        assert scorer == "hf:tiny-random-llama"
        assert 1 <= n_pos <= 3 and n_neg == 3 and failed == 0  # log-probs always answer
        assert 0 <= acc <= 1 and 0 <= bal <= 1 and 0 <= base_bal <= 1
        assert base_f != feature
    quality = q(db, "SELECT explainer, method, n_features FROM explanation_quality WHERE "
                "sae_id = ? ORDER BY explainer, method", [sae])
    assert quality == [(e, m, 4) for e in ("hf:tiny-random-llama", ex.TOP_TOKENS)
                       for m in (ex.DETECTION, ex.FUZZING)]


def test_non_activating_texts_are_zero_for_the_feature(explained, tiny_lm, tiny_atlas):
    """The scorer's non-activating texts: windows of corpus blocks on which the SAE's code of
    the feature is zero at every token (recomputed here with the SAE itself)."""
    import argparse

    from atlas import catalog
    from atlas.models import capture_residuals
    from atlas.saes import hook_of

    db, sae_id = explained
    with duckdb.connect(str(db), read_only=True) as con:
        features = cmd._read_features(con, sae_id, [r[0] for r in con.execute(
            "SELECT DISTINCT feature FROM explanations").fetchall()], 4)
        sae = catalog.load_sae(con, sae_id)
    args = argparse.Namespace(db=db, blocks=8, held_out=3, seed=0, device="cpu")
    cmd._find_negatives(args, sae_id, features, cmd._loader("cpu"))
    hook = hook_of(sae)
    for f in features:
        assert len(f.negatives) == 3 and len(f.decoys) == 3
        assert all(d.count("<<") == 1 and d.count(">>") == 1 for d in f.decoys)
        for text in f.negatives:
            ids = tiny_lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")
            assert ids["input_ids"].shape[1] >= 10
    # the windows' codes, from the blocks themselves
    blocks = q(db, "SELECT token_ids FROM blocks ORDER BY block_id")
    ids = torch.tensor([b[0] for b in blocks])
    with torch.no_grad():
        codes = sae.encode(capture_residuals(tiny_lm, ids, [hook])[hook.name])
    decoded = {}
    for b in range(len(ids)):
        for start in range(ids.shape[1] - 16):
            decoded.setdefault(tiny_lm.tokenizer.decode(ids[b, start:start + 17].tolist()),
                               []).append((b, start))
    for f in features:
        for text in f.negatives:
            spots = decoded[text]
            assert any(float(codes[b, s:s + 17, f.feature].max()) == 0 for b, s in spots)


def test_a_second_run_resumes_without_redoing_stored_explanations(explained):
    db, sae = explained
    before = q(db, "SELECT feature, explainer, created_at FROM explanations ORDER BY ALL")
    with duckdb.connect(str(db)) as con:
        gone = con.execute("SELECT feature FROM explanations WHERE explainer LIKE 'hf:%' "
                           "ORDER BY feature LIMIT 1").fetchone()[0]
        con.execute("DELETE FROM explanations WHERE feature = ? AND explainer LIKE 'hf:%'",
                    [gone])
        con.execute("DELETE FROM explanation_scores WHERE feature = ? AND explainer LIKE "
                    "'hf:%'", [gone])
    assert main(["explain", "--db", str(db), "--sae", sae, "--explainer",
                 str(tiny_model_dir()), *EXPLAIN]) == 0
    after = q(db, "SELECT feature, explainer, created_at FROM explanations ORDER BY ALL")
    redone = [a for a in after if a not in before]
    assert [(r[0], r[1]) for r in redone] == [(gone, "hf:tiny-random-llama")]
    assert q(db, "SELECT count(*) FROM explanation_scores")[0][0] == 16


class _Server(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint serving the tiny model (greedy text; the first
    token's top log-probabilities when asked)."""

    backend: HuggingFace
    lock = threading.Lock()
    served: dict[str, HuggingFace] = {}

    @classmethod
    def backend_of(cls, url: str) -> HuggingFace:
        return cls.served[url]

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self.path.endswith("/chat/completions") or body["model"] != "tiny":
            self._send(404, {"error": {"message": f"model {body.get('model')} not found",
                                       "type": "invalid_request_error"}})
            return
        chat, b = body["messages"], self.backend
        with self.lock:
            if body.get("logprobs"):
                names, probs = _top_candidates(b, chat, body.get("top_logprobs", 5))
                cands = [{"token": t, "logprob": math.log(p), "bytes": None}
                         for t, p in zip(names, probs)]
                text = names[0]
                logprobs = {"content": [{**cands[0], "top_logprobs": cands}]}
            else:
                text = b.generate([chat], body.get("max_tokens") or 16)[0]
                logprobs = None
        self._send(200, {"id": "x", "object": "chat.completion", "created": int(time.time()),
                         "model": "tiny", "choices": [
                             {"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                              "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                   "total_tokens": 2}})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def endpoint(tiny_lm):
    handler = type("Handler", (_Server,), {"backend": HuggingFace(tiny_lm, batch=1)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    _Server.served[url] = handler.backend
    yield url
    server.shutdown()


def test_an_openai_compatible_endpoint_explains_and_scores_like_the_local_model(
        explained, endpoint, tmp_path):
    import shutil

    db_local, sae = explained
    db = tmp_path / "endpoint.duckdb"
    shutil.copy(db_local, db)
    assert main(["explain", "--db", str(db), "--sae", sae, "--explainer", endpoint,
                 "--explainer-model", "tiny", *EXPLAIN]) == 0
    name = f"openai:{endpoint}#tiny"
    served = dict(q(db, "SELECT feature, explanation FROM explanations WHERE explainer = ?",
                    [name]))
    with duckdb.connect(str(db), read_only=True) as con:
        features = cmd._read_features(con, sae, sorted(served), 4)
    one = _Server.backend_of(endpoint)  # the same model, one prompt at a time, as served
    local = {f.feature: ex.parse_explanation(one.generate([ex.explain_prompt(f.top, f.promoted)],
                                                          8)[0]) for f in features}
    assert served == local  # greedy, through the real client and HTTP
    # the scores: Delphi's top-5 log-prob reading of the same model's first token, here
    import argparse

    cmd._find_negatives(argparse.Namespace(db=db, blocks=8, held_out=3, seed=0, device="cpu"),
                        sae, features, cmd._loader("cpu"))
    by = {f.feature: f for f in features}
    order = [f.feature for f in features]
    top5 = _Top5(_Server.backend_of(endpoint))
    rows = q(db, "SELECT feature, explanation, balanced_accuracy, baseline_feature, "
             "baseline_balanced_accuracy, n_failed, method FROM explanation_scores JOIN "
             "explanations USING (sae_id, feature, explainer, template) WHERE scorer = ? AND "
             "explainer = 'top-tokens'", [name])
    assert len(rows) == 8
    for feature, text, bal, base_f, base_bal, failed, method in rows:
        assert base_f == order[(order.index(feature) + 1) % 4]
        own = cmd._judge(top5, text, by[feature], 3, method)
        base = cmd._judge(top5, text, by[base_f], 3, method)
        assert (bal, base_bal, failed) == (own.balanced_accuracy, base.balanced_accuracy,
                                           own.n_failed)


class _Top5:
    """The local model read as Delphi reads an endpoint: P(1) / (P(0) + P(1)) over the first
    token's 5 most likely candidates."""

    def __init__(self, backend: HuggingFace) -> None:
        self.backend = backend

    def judge(self, chats):
        out = []
        for chat in chats:
            names, probs = _top_candidates(self.backend, chat, 5)
            acc: dict[str, float] = {}
            for t, p in zip(names, probs):
                acc[t] = acc.get(t, 0.0) + p
            out.append(ex.probability_of_one(acc))
        return out


def _top_candidates(b: HuggingFace, chat, k: int) -> tuple[list[str], list[float]]:
    enc = b._encode(b._texts([chat]))
    with torch.no_grad():
        probs = torch.softmax(b.model(**enc).logits[0, -1].float(), -1)
    top = torch.topk(probs, k)
    return b.tokenizer.batch_decode([[int(i)] for i in top.indices]), top.values.tolist()


@pytest.mark.parametrize("url, model, says", [
    ("http://127.0.0.1:9/v1", "tiny", "cannot reach the chat endpoint"),
    (None, "no-such-model", "refused the request for model 'no-such-model'"),
])
def test_a_bad_endpoint_is_one_clear_error_and_loses_nothing(explained, endpoint, tmp_path,
                                                             capsys, url, model, says):
    import shutil

    db = tmp_path / "bad.duckdb"
    shutil.copy(explained[0], db)
    before = q(db, "SELECT * FROM explanations ORDER BY ALL")
    assert main(["explain", "--db", str(db), "--sae", explained[1], "--explainer",
                 url or endpoint, "--explainer-model", model, *EXPLAIN]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert q(db, "SELECT * FROM explanations ORDER BY ALL") == before


def delphi_balanced_accuracy(pred, truth):
    """Delphi's `compute_confusion` + `compute_classification_metrics`, transcribed."""
    valid = [(p, t) for p, t in zip(pred, truth) if p is not None]
    tp = sum(p >= 0.5 and t for p, t in valid)
    tn = sum(p < 0.5 and not t for p, t in valid)
    pos = sum(t for _, t in valid)
    neg = len(valid) - pos
    return ((tp / pos if pos > 0 else 0) + (tn / neg if neg > 0 else 0)) / 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 1)), st.booleans()), min_size=1,
                max_size=30))
def test_the_detection_score_is_delphis(cases):
    pred, truth = [c[0] for c in cases], [c[1] for c in cases]
    score = ex.detection_score(pred, truth)
    if all(p is None for p in pred):
        assert score.balanced_accuracy is None
    else:
        assert score.balanced_accuracy == pytest.approx(delphi_balanced_accuracy(pred, truth))
    assert score.n_failed == sum(p is None for p in pred)


class _Reader:
    """A scorer that reads: P(active) = 1 when the explanation's quoted word is in the text."""

    name = "reader"

    def judge(self, chats):
        out = []
        for chat in chats:
            question = chat[-1]["content"]
            explanation, text = question.split("\n\nText: ")
            word = explanation.split('"')[1]
            out.append(1.0 if word in text.split() else 0.0)
        return out


def test_a_planted_feature_scores_high_and_a_shuffled_explanation_at_chance():
    """A feature that fires on ' cat': its explanation naming the word scores 1; another
    feature's explanation (a shuffled one, naming ' dog') scores chance, 0.5."""
    rng = np.random.default_rng(0)
    words = ["the", "a", "sat", "on", "mat", "ran", "house", "tree", "blue"]

    def sentence(extra: str = "") -> str:
        w = list(rng.choice(words, 8))
        if extra:
            w.insert(int(rng.integers(0, 8)), extra)
        return " ".join(w)

    def example(i: int, text: str) -> ex.Example:
        return ex.Example(0, i, text, 0, text.split()[0], 1.0)

    cat = cmd.Feature(1, top=[example(i, sentence("cat")) for i in range(5)],
                      deciles=[example(100 + i, sentence("cat")) for i in range(10)],
                      promoted=[], negatives=[sentence() for _ in range(5)])
    named = cmd._judge(_Reader(), 'the word "cat"', cat, 5)
    shuffled = cmd._judge(_Reader(), 'the word "dog"', cat, 5)
    assert named.balanced_accuracy == 1.0 and named.n_activating == 5
    assert shuffled.balanced_accuracy == 0.5


class _MarkReader:
    """A fuzzing scorer that reads: P(correct) = 1 when every marked word is the explanation's
    quoted word."""

    def judge(self, chats):
        out = []
        for chat in chats:
            explanation, text = chat[-1]["content"].split("\n\nText: ")
            word = explanation.split('"')[1]
            marked = [m.strip() for m in text.split("<<")[1:]]
            out.append(1.0 if all(m.split(">>")[0].strip() == word for m in marked) else 0.0)
        return out


def test_fuzzing_on_planted_marks():
    """Fuzzing: the firing token marked in activating texts (' cat') against a random token
    marked in texts where the feature is zero: the explanation naming 'cat' scores 1; one
    naming 'dog' accepts no marking, 0.5."""
    words = ["the", "a", "sat", "on", "mat", "ran", "house", "tree", "blue"]
    rng = np.random.default_rng(1)
    held = []
    for i in range(6):
        left = " ".join(rng.choice(words, 4))
        held.append(ex.Example(0, i, f"{left} cat sat", len(left) + 1, "cat", 1.0))
    decoys = [ex.mark([f" {w}" for w in rng.choice(words, 6)], int(rng.integers(0, 6)))
              for _ in range(6)]
    f = cmd.Feature(1, top=[], deciles=held, promoted=[], negatives=[], decoys=decoys)
    named = cmd._judge(_MarkReader(), 'the word "cat"', f, 6, ex.FUZZING)
    other = cmd._judge(_MarkReader(), 'the word "dog"', f, 6, ex.FUZZING)
    assert (named.n_activating, named.n_non_activating) == (6, 6)
    assert named.balanced_accuracy == 1.0 and other.balanced_accuracy == 0.5


def test_parsing_the_explainers_answer():
    assert ex.parse_explanation("Step 1...\n[EXPLANATION]: Names of  teams.\n") == \
        "Names of teams."
    assert ex.parse_explanation("The word cat\nmore") == "The word cat"
    assert ex.probability_of_one({"1": 0.6, "0": 0.2, "x": 0.2}) == pytest.approx(0.75)
    assert ex.probability_of_one({"x": 1.0}) is None
    assert ex.parse_detection("[1]") == 1.0 and ex.parse_detection("no") is None
    marked = ex.Example(0, 0, "the cat sat", 4, "cat", 2.0).marked()
    assert marked == "the <<cat>> sat"


def bm25(docs: dict[str, list[str]], query: list[str]) -> dict[str, float]:
    """BM25 as Lucene scores it (k1 1.2, b 0.75, idf ln(1 + (N - df + .5) / (df + .5)))."""
    n, avgdl = len(docs), sum(map(len, docs.values())) / len(docs)
    out = {}
    for key, words in docs.items():
        s = 0.0
        for term in set(query):
            df = sum(term in d for d in docs.values())
            tf = words.count(term)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(words) / avgdl))
        if s:
            out[key] = s
    return out


def test_search_ranks_explanations_by_bm25(atlas_copy):
    db, saes = atlas_copy
    texts = {0: "Chemistry: names of molecules and chemical elements",
             1: "numbers and digits in tables", 2: "chemical chemical reactions",
             3: "the word 'the' before nouns", 4: "tokens: H, O, C"}

    def feature(f: int) -> cmd.Feature:
        return cmd.Feature(f, top=[ex.Example(0, f, "x", 0, "x", 1.0)], deciles=[],
                           promoted=[])

    cmd._write_explanations(db, saes[0], [(feature(f), "e", "t", t, 0.1)
                                          for f, t in texts.items()])
    query = "chemical molecules, Numbers!"
    hits = q(db, "SELECT feature, score FROM search_explanations(?)", [query])
    want = bm25({f: ex.terms(t) for f, t in texts.items()}, ex.terms(query))
    assert [h[0] for h in hits] == sorted(want, key=lambda f: -want[f])
    for f, score in hits:
        assert score == pytest.approx(want[f])


def test_the_app_shows_and_searches_explanations(explained, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    db, sae = explained
    monkeypatch.setenv("ATLAS_DB", str(db))
    app = str(Path(__file__).parent.parent / "app" / "streamlit_app.py")
    at = AppTest.from_file(app, default_timeout=120)
    at.query_params["page"] = "Explanations"
    at.run()
    assert not at.exception
    word = q(db, "SELECT term FROM explanation_terms WHERE explainer = 'top-tokens' LIMIT 1"
             )[0][0]
    at.text_input(key="explain_q").input(word).run()
    assert not at.exception
    shown = [t.value for t in at.dataframe]
    assert any(len(frame) for frame in shown)
    feature = q(db, "SELECT feature FROM explanations ORDER BY feature LIMIT 1")[0][0]
    at = AppTest.from_file(app, default_timeout=120)
    at.query_params.update(page="Feature", sae=sae, feature=str(feature))
    at.run()
    assert not at.exception
    assert any("Explanations" in h.value for h in at.subheader)


def test_the_neuronpedia_export_carries_the_explanations(explained, tmp_path):
    db, sae = explained
    out = tmp_path / "np"
    assert main(["export", "--db", str(db), "--format", "neuronpedia", "--sae", sae,
                 "--out", str(out)]) == 0
    exported = {f["feature_index"]: f["explanations"]
                for path in sorted(out.glob("batch-*.json"))
                for f in json.loads(path.read_text())["features"]}
    stored = q(db, "SELECT feature, explanation, explainer, template, balanced_accuracy FROM "
               "explanations JOIN explanation_scores USING (sae_id, feature, explainer, "
               "template) WHERE sae_id = ? ORDER BY feature, explainer", [sae])
    assert len(stored) == 16
    for feature, text, explainer, template, bal in stored:
        match = [e for e in exported[feature] if e["explanationModelName"] == explainer]
        assert len(match) == 1 and match[0]["description"] == text
        assert match[0]["typeName"] == template
        assert any(s["balanced_accuracy"] == pytest.approx(bal) for s in match[0]["scores"])
        assert {s["method"] for s in match[0]["scores"]} == {ex.DETECTION, ex.FUZZING}
    assert sum(len(e) for e in exported.values()) == 8


def test_the_lobes_page_names_lobes_by_their_features_explanations(explained, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    copy, sae = explained
    monkeypatch.setenv("ATLAS_DB", str(copy))
    at = AppTest.from_file(str(Path(__file__).parent.parent / "app" / "streamlit_app.py"),
                           default_timeout=120)
    at.query_params.update(page="Lobes", sae=sae)
    at.run()
    assert not at.exception
    composition = [d.value for d in at.dataframe if "explained as" in d.value.columns]
    assert len(composition) == 1
    names = dict(q(copy, "SELECT feature, explanation FROM explanations WHERE explainer "
                   "LIKE 'hf:%'"))
    lobe_of = dict(q(copy, "SELECT feature, cluster FROM clusters WHERE sae_id = ? AND "
                     "method = 'cooccurrence' AND (metric, k) = (SELECT (min(metric), max(k)) "
                     "FROM clusters WHERE method = 'cooccurrence')", [sae]))
    assert lobe_of
    frame = composition[0]
    for feature, text in names.items():
        if text and feature in lobe_of:
            row = frame[frame.cluster == lobe_of[feature]]
            assert text in row["explained as"].iloc[0] or \
                row["explained as"].iloc[0].count("|") == 2


def test_a_run_killed_mid_write_resumes_where_it_stopped(tiny_atlas, tmp_path):
    """SIGKILL inside the write of the second batch: the first batch stays, the second is not
    half-written, and a second run explains the rest without redoing the first."""
    import os
    import shutil

    from tests.helpers import CliProcess, run_cli

    db = tmp_path / "killed.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    sae = tiny_atlas[1].sae_ids[0]
    argv = ["explain", "--db", str(db), "--sae", sae, "--explainer", str(tiny_model_dir()),
            "--batch", "1", "--limit", "3", "--max-tokens", "4", "--no-score", "--device",
            "cpu"]
    marker = tmp_path / "reached"
    env = {**os.environ, "ATLAS_STOP_AT": "explain", "ATLAS_STOP_MARKER": str(marker)}
    log = tmp_path / "explain.log"
    proc = CliProcess(argv, env=env, stdout=log)
    proc.wait_for(marker)
    proc.kill()
    proc.wait(timeout=60)
    first = q(db, "SELECT feature, explanation, created_at FROM explanations WHERE explainer "
              "LIKE 'hf:%'")
    assert len(first) == 1
    assert q(db, "SELECT count(*) FROM explanations WHERE explainer = 'top-tokens'")[0][0] == 3
    assert q(db, "SELECT count(DISTINCT feature) FROM explanation_terms WHERE explainer LIKE "
             "'hf:%'")[0][0] <= 1
    env.pop("ATLAS_STOP_AT")
    assert run_cli(argv, env=env, tmp=tmp_path).returncode == 0
    after = q(db, "SELECT feature, explanation, created_at FROM explanations WHERE explainer "
              "LIKE 'hf:%'")
    assert len(after) == 3 and first[0] in after


def test_explanations_embedded_and_searched_by_meaning(explained, tmp_path, capsys,
                                                       monkeypatch):
    """--embedder stores each explanation's embedding (mean-pooled last hidden states, unit
    length, recomputed here with transformers); --search finds the nearest by FAISS, the same
    ranking as a brute-force cosine in numpy."""
    import shutil

    from transformers import AutoModel, AutoTokenizer

    db = tmp_path / "embedded.duckdb"
    shutil.copy(explained[0], db)
    sae, model = explained[1], str(tiny_model_dir())
    assert main(["explain", "--db", str(db), "--sae", sae, "--explainer", model,
                 "--embedder", model, *EXPLAIN]) == 0
    rows = q(db, "SELECT e.explanation, m.vector FROM explanation_embeddings m JOIN "
             "explanations e USING (sae_id, feature, explainer, template) ORDER BY ALL")
    texts = [r[0] for r in q(db, "SELECT explanation FROM explanations WHERE explanation <> ''")]
    assert len(rows) == len(texts) > 0
    tok, lm = AutoTokenizer.from_pretrained(model), AutoModel.from_pretrained(model).eval()
    text, vector = next(r for r in rows if ex.terms(r[0]))   # one with words, for BM25 too
    with torch.no_grad():
        hidden = lm(**tok([text], return_tensors="pt")).last_hidden_state[0]
    want = hidden.mean(0) / hidden.mean(0).norm()
    np.testing.assert_allclose(vector, want.numpy(), rtol=1e-4, atol=1e-5)

    capsys.readouterr()
    assert main(["explain", "--db", str(db), "--search", text, "--embedder", model, "--top",
                 "50", "--json", "--device", "cpu"]) == 0
    found = json.loads(capsys.readouterr().out)
    vectors = np.array([r[1] for r in rows])
    cos = vectors @ np.asarray(vector)
    assert [h["score"] for h in found["meaning"]] == pytest.approx(sorted(cos, reverse=True),
                                                                   abs=1e-4)
    assert found["meaning"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert found["words"] and all(h["score"] > 0 for h in found["words"])

    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ATLAS_DB", str(db))
    at = AppTest.from_file(str(Path(__file__).parent.parent / "app" / "streamlit_app.py"),
                           default_timeout=120)
    at.query_params["page"] = "Explanations"
    at.run()
    at.selectbox(key="explain_embedder").select(f"hf:{model}").run()
    at.text_input(key="explain_q").input(text).run()
    assert not at.exception
    assert any("Nearest by meaning" in h.value for h in at.subheader)
