"""The real embedded model on a few blocks (slow: loading the GGUF takes ~30 s on CPU)."""

import duckdb
import pytest

from atlas.config import BuildConfig

pytestmark = pytest.mark.slow


def test_smollm2_builds_an_atlas_on_a_few_blocks(tmp_path):
    from atlas.builder import build

    config = BuildConfig(db=tmp_path / "smol.duckdb", layers=(3,), tokens=256 * 12, d_sae=256,
                         k=16, epochs=2, batch_blocks=4, n_examples=3)
    result = build(config)
    assert result.model_id == "smollm2-135m" and result.n_tokens == 256 * 12
    with duckdb.connect(str(config.db), read_only=True) as con:
        n_layers, d_model = con.execute("SELECT n_layers, d_model FROM models").fetchone()
        assert (n_layers, d_model) == (30, 576)
        d_in, l0 = con.execute("SELECT d_in, l0 FROM saes").fetchone()
        assert d_in == 576 and l0 <= 16
        sources = dict(con.execute("SELECT source, count(*) FROM blocks GROUP BY 1").fetchall())
        assert set(sources) == {"wiki", "code"}
        live = con.execute("SELECT count(*) FROM features WHERE firing_count > 0").fetchone()[0]
        assert live > 50
        labels = con.execute("SELECT label FROM features WHERE firing_count > 0").fetchall()
        assert any(label[0] for label in labels)
