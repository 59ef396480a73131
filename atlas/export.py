"""Exports: an SAE's features in Neuronpedia's batch JSON layout, any table or view as Parquet.

Neuronpedia layout (SAEDashboard's `NeuronpediaDashboardBatch.to_dict`): one file per batch of
features, {"model_id", "layer", "sae_set", "features": [...], "settings": {...}}, each feature
with its logit lens (pos_str/pos_values, neg_str/neg_values), activation histogram
(freq_hist_data_bar_values/heights), density (frac_nonzero) and example activations, each
example a window of tokens with the feature's values, and its explanations (`atlas explain`) as
Neuronpedia's explanation records name them (description, explanationModelName, typeName),
each with its scores (the atlas's addition: method, scorer, balanced accuracy and the
baseline's). What the atlas does not hold is written empty: neuron alignment, correlated
neurons and features, the logit histogram.
An example's values are the feature's activation at its token and 0 at the others (the atlas
keeps one activation per example); histogram bars sit at the geometric centre of each log bin.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from atlas import access
from atlas.analyses.explanations.neuronpedia import neuronpedia_explanations
from atlas.errors import AtlasError
from atlas.store import quote_identifier

log = logging.getLogger(__name__)

WINDOW = (12, 4)
"""Tokens before and after an example's token in its window (as the stored contexts)."""


def parquet(db: Path, table: str, out: Path, *, batch_rows: int = 100_000) -> int:
    """Write a table or view to a Parquet file, streamed in batches (memory bounded by the
    batch); the file appears whole or not at all. Returns the number of rows."""
    con = access.open_reader(db)
    try:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = 'main'").fetchall()}
        if table not in names:
            raise AtlasError(f"'{table}' is not a table or view of {db}; choose one of "
                             f"{', '.join(sorted(n for n in names if not n.startswith('_')))}")
        reader = con.sql(f"SELECT * FROM {quote_identifier(table)}").to_arrow_reader(batch_rows)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        rows = 0
        with pq.ParquetWriter(tmp, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        os.replace(tmp, out)
    finally:
        con.close()
    return rows


def neuronpedia(db: Path, sae: str, out: Path, *, batch_size: int = 128) -> list[Path]:
    """Write an SAE's features as Neuronpedia batch files `out/batch-<n>.json` (features
    [n * batch_size, (n + 1) * batch_size)). Returns the files."""
    from atlas import catalog
    from atlas.models import load_tokenizer
    if batch_size < 1:
        raise AtlasError(f"--batch-size {batch_size} must be at least 1")
    con = access.open_reader(db)
    try:
        sae_id = catalog.resolve_sae(con, sae)
        cur = con.cursor()
        info = cur.sql("SELECT s.layer, s.d_sae, s.model_id, h.n_tokens, h.corpus, "
                       "s.neuronpedia_id FROM saes s JOIN harvests h USING (sae_id) "
                       "WHERE sae_id = ?", params=[sae_id]).fetchall()
        if not info:
            raise AtlasError(f"{sae_id} has no harvest to export; build it first")
        layer, d_sae, model_id, n_tokens, corpus, np_id = info[0]
        if not cur.sql("SELECT count(*) FROM feature_logits WHERE sae_id = ?",
                       params=[sae_id]).fetchall()[0][0]:
            raise AtlasError(f"{sae_id} was harvested before the atlas stored logit lenses "
                             "and activation histograms; run `atlas build` again to add them")
        spec = catalog.loadable_model(con, [sae_id])[1]
        tokenizer = load_tokenizer(spec)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for n, lo in enumerate(range(0, d_sae, batch_size)):
            hi = min(lo + batch_size, d_sae)
            features = _features(cur, sae_id, corpus, n_tokens, lo, hi, tokenizer)
            batch = {"model_id": model_id, "layer": int(layer),
                     "sae_set": np_id.split("/", 1)[1] if np_id else sae_id,
                     "features": features,
                     "settings": {"n_batches_to_sample_from": 0, "n_prompt_to_select": 0}}
            path = out / f"batch-{n}.json"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(batch))
            os.replace(tmp, path)
            files.append(path)
        log.info("exported %d features of %s to %s (%d files)", d_sae, sae_id, out, len(files))
        return files
    finally:
        con.close()


def _rows(cur, sql: str, params: list) -> list[dict]:
    return cur.sql(sql, params=params).to_arrow_table().to_pylist()


def _by_feature(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r["feature"], []).append(r)
    return out


def _features(cur, sae_id: str, corpus: str, n_tokens: int, lo: int, hi: int,
              tokenizer) -> list[dict]:
    where = "sae_id = ? AND feature >= ? AND feature < ?"
    params = [sae_id, lo, hi]
    logits = _by_feature(_rows(cur, f"SELECT feature, direction, token, value FROM "
                                    f"feature_logits WHERE {where} ORDER BY feature, rank",
                               params))
    hist = _by_feature(_rows(cur, f"SELECT feature, act_lo, act_hi, count FROM "
                                  f"activation_histograms WHERE {where} ORDER BY feature, bin",
                             params))
    top = _by_feature(_rows(cur, f"SELECT feature, act, block_id, position, -1.0 AS bin_min, "
                                 f"act AS bin_max, -1.0 AS bin_contains FROM examples "
                                 f"WHERE {where} ORDER BY feature, rank", params))
    deciles = _by_feature(_rows(cur, f"SELECT feature, act, block_id, position, act_lo AS "
                                     f"bin_min, act_hi AS bin_max, share AS bin_contains FROM "
                                     f"decile_examples WHERE {where} ORDER BY feature, decile, "
                                     f"rank", params))
    for group in top.values():   # the top group's range ends at the feature's maximum
        for r in group:
            r["bin_max"] = group[0]["act"]
    explained = neuronpedia_explanations(cur, sae_id, lo, hi)
    blocks = sorted({r["block_id"] for g in (*top.values(), *deciles.values()) for r in g})
    # Each block's tokens up to its end (a document's last block is padded).
    ids = {r["block_id"]: r["token_ids"][:r["n_tokens"]] for r in _rows(
        cur, "SELECT block_id, token_ids, n_tokens FROM blocks WHERE corpus_id = ? AND "
             "block_id IN (SELECT unnest(?))", [corpus, blocks])}
    vocab = sorted({t for b in ids.values() for t in b})
    text = dict(zip(vocab, tokenizer.batch_decode([[t] for t in vocab])))
    features = []
    for f in range(lo, hi):
        mine = logits.get(f, [])
        bars = hist.get(f, [])
        active = sum(b["count"] for b in bars)
        features.append({
            "feature_index": f,
            "neuron_alignment_indices": [], "neuron_alignment_values": [],
            "neuron_alignment_l1": [], "correlated_neurons_indices": [],
            "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
            "correlated_features_indices": [], "correlated_features_l1": [],
            "correlated_features_pearson": [],
            "neg_str": [r["token"] for r in mine if r["direction"] == "bottom"],
            "neg_values": [round(r["value"], 3) for r in mine if r["direction"] == "bottom"],
            "pos_str": [r["token"] for r in mine if r["direction"] == "top"],
            "pos_values": [round(r["value"], 3) for r in mine if r["direction"] == "top"],
            "frac_nonzero": active / n_tokens if n_tokens else 0.0,
            "freq_hist_data_bar_values": [round(_centre(b["act_lo"], b["act_hi"]), 3)
                                          for b in bars],
            "freq_hist_data_bar_heights": [b["count"] for b in bars],
            "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
            "num_tokens_for_dashboard": int(n_tokens),
            "activations": [_activation(r, ids[r["block_id"]], text)
                            for r in (*top.get(f, []), *deciles.get(f, []))],
            "explanations": explained.get(f, [])})
    return features



def _centre(lo: float, hi: float) -> float:
    if lo <= 0:
        return hi / 2
    if not np.isfinite(hi):
        return lo
    return float(np.sqrt(lo * hi))


def _activation(r: dict, block: list[int], text: dict[int, str]) -> dict:
    p = r["position"]
    window = block[max(0, p - WINDOW[0]):p + WINDOW[1] + 1]
    at = p - max(0, p - WINDOW[0])
    values = [0.0] * len(window)
    values[at] = round(float(r["act"]), 3)
    return {"bin_min": round(float(r["bin_min"]), 3), "bin_max": round(float(r["bin_max"]), 3),
            "bin_contains": round(float(r["bin_contains"]), 4),
            "tokens": [text[t] for t in window], "values": values}
