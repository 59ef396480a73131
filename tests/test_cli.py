import json
import subprocess
import sys

import pytest

from atlas.cli import main
from tests.conftest import tiny_config


def test_build_info_sql_from_the_command_line(tmp_path, capsys):
    db = tmp_path / "cli.duckdb"
    c = tiny_config(db)
    argv = ["build", "--db", str(db), "--model", c.model, "--layers", "2", "--tokens",
            str(c.tokens), "--d-sae", "64", "--k", "4", "--block-size", "64", "--epochs", "1",
            "--n-examples", "3", "--threshold", "0.5"]
    assert main(argv) == 0
    assert "built" in capsys.readouterr().out
    assert main(["info", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "tiny-random-llama/L2/topk64-k4" in out and "d_model 64" in out
    # one SAE: every analysis but universality, which needs a pair
    assert "analyses: absorption (saebench) 1, crystals (li2024) 1, galaxy (li2024) 1" in out
    assert main(["info", "--db", str(db), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["saes"][0]["d_sae"] == 64 and info["saes"][0]["layer"] == 2
    assert [a["analysis"] for a in info["analyses"]] == ["absorption", "crystals", "galaxy",
                                                          "lobes"]
    assert main(["sql", "--db", str(db), "--format", "json",
                 "SELECT sae_id, count(*) AS n FROM features GROUP BY 1"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"sae_id": "tiny-random-llama/L2/topk64-k4",
                                                    "n": 64}]


def test_errors_are_one_line_without_a_traceback(tmp_path):
    bad = tmp_path / "x.duckdb"
    bad.write_text("not a database")
    proc = subprocess.run([sys.executable, "-m", "atlas.cli", "info", "--db", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not a DuckDB database" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, needle", [
    (["--layers", "7"], "layer 7 does not exist"),
    (["--corpus", "/no/such/dir"], "does not exist"),
    (["--tokens", "10"], "smaller than one block"),
])
def test_bad_build_input_is_refused_and_keeps_the_atlas(tiny_atlas, args, needle, capsys):
    config = tiny_atlas[0]
    import duckdb

    with duckdb.connect(str(config.db), read_only=True) as c:
        before = c.execute("SELECT count(*) FROM features").fetchone()[0]
    code = main(["build", "--db", str(config.db), "--model", config.model, "--block-size", "64",
                 "--tokens", "6144", *args])
    assert code == 2 and needle in capsys.readouterr().err
    with duckdb.connect(str(config.db), read_only=True) as c:
        assert c.execute("SELECT count(*) FROM features").fetchone()[0] == before


def test_sae_width_mismatch_is_refused(tiny_atlas, tmp_path, capsys):
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    sae = TopKSAE(TopKSAEConfig(d_in=576, d_sae=32, k=4, metadata=SAEMetadata(
        hook_name="blocks.1.hook_resid_post")))
    sae.save_model(tmp_path / "wide")
    config = tiny_atlas[0]
    code = main(["build", "--db", str(tmp_path / "w.duckdb"), "--model", config.model,
                 "--block-size", "64", "--tokens", "640", "--sae-path", str(tmp_path / "wide")])
    assert code == 2 and "d_in=576" in capsys.readouterr().err


def test_list_flags_repeat_and_take_ranges():
    from atlas.cli import _parser, config_from_args

    config = config_from_args(_parser().parse_args([
        "build", "--sae-release", "r", "--sae-id", "layer_{layer}/width_16k/canonical",
        "--sae-id", "x,y", "--layers", "0-2,5", "--sae-path", "a", "--sae-path", "b"]))
    assert config.sae_id == ("layer_{layer}/width_16k/canonical", "x", "y")
    assert config.layers == (0, 1, 2, 5)
    assert [str(p) for p in config.sae_path] == ["a", "b"]
    assert config_from_args(_parser().parse_args(["build"])).layers == (3, 7, 11, 15)


def test_a_release_without_ids_is_refused(capsys):
    assert main(["build", "--sae-release", "gpt2-small-res-jb"]) == 2
    assert "--sae-release gpt2-small-res-jb needs --sae-id" in capsys.readouterr().err


def test_word_analogy_from_the_command_line_takes_a_representation(tiny_atlas, capsys):
    db = tiny_atlas[0].db
    out = {}
    for representation in ("bare", "eos"):
        assert main(["analogy", "--db", str(db), "--words", "--layer", "1", "--k", "3",
                     "--representation", representation, "man", "woman", "king"]) == 0
        out[representation] = capsys.readouterr().out
        assert "woman - man + king at layer 1, nearest words:" in out[representation]
    assert out["bare"] != out["eos"]


def test_sql_time_limit_and_row_cap_from_the_command_line(tiny_atlas, capsys):
    db = str(tiny_atlas[0].db)
    heavy = "SELECT count(*) FROM range(100000000) a, range(100000000) b"
    assert main(["sql", "--db", db, "--timeout", "0.5", heavy]) == 2
    err = capsys.readouterr().err
    assert "stopped at the 0.5 s time limit" in err and "--timeout" in err
    assert main(["sql", "--db", db, "--limit", "3", "--format", "csv",
                 "SELECT * FROM range(10) t(i)"]) == 0
    out = capsys.readouterr()
    assert out.out.split() == ["i", "0", "1", "2"] and "first 3 rows" in out.err


def test_word_analogies_read_the_table_the_build_stored(atlas_copy, tiny_atlas, capsys):
    """The build stores the vocabulary's vectors at each SAE's hook: with the model's files
    gone (its recorded spec points nowhere), analogies among those words still answer; a word
    outside the table needs the model and says so."""
    import json
    import shutil

    from atlas import store
    from atlas.artifacts import word_table_path

    db, _ = atlas_copy
    src = tiny_atlas[0].db
    shutil.copytree(src.with_name(src.name + ".words"), db.with_name(db.name + ".words"))
    shutil.copytree(src.with_name(src.name + ".index"), db.with_name(db.name + ".index"))
    con = store.connect(db)
    con.execute("UPDATE models SET spec = '/nowhere/model'")
    model_id = con.execute("SELECT model_id FROM models").fetchone()[0]
    con.close()
    side = word_table_path(db, model_id, "blocks.3.hook_resid_post", "bare").with_suffix(".json")
    words = json.loads(side.read_text())["words"][:3]
    assert main(["analogy", "--db", str(db), "--words", "--layer", "3", *words]) == 0
    out = capsys.readouterr().out
    assert f"{words[1]} - {words[0]} + {words[2]} at layer 3" in out
    assert "nearest features of" in out
    assert main(["neighbors", "--db", str(db), "--words", "--layer", "3", words[0]]) == 0
    assert main(["analogy", "--db", str(db), "--words", "--layer", "3", words[0], words[1],
                 "zebrafishes"]) == 2
    assert "/nowhere/model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["build", "info", "sql", "neighbors", "analogy", "export",
                                     "features", "analyze", "compare", "absorption", "app",
                                     "index"])
def test_every_command_s_help_renders(command, capsys):
    """Help text comes from settings' docstrings; a '%' in one must not break argparse."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "usage: atlas" in capsys.readouterr().out
