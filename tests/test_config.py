import pytest

from atlas.cli import _parser, config_from_args
from atlas.config import BuildConfig, config_fields
from atlas.errors import AtlasError


def test_every_field_has_help_text():
    for name, _, doc in config_fields():
        assert doc, f"BuildConfig.{name} has no docstring"


def test_cli_flags_are_derived_from_the_config():
    args = _parser().parse_args(["build", "--layers", "2,5", "--d-sae", "512", "--k", "16",
                                 "--device", "cpu", "--sae-path", "a,b"])
    config = config_from_args(args)
    assert config.layers == (2, 5) and config.d_sae == 512 and config.k == 16
    assert [str(p) for p in config.sae_path] == ["a", "b"]
    defaults = config_from_args(_parser().parse_args(["build"]))
    assert defaults == BuildConfig()


@pytest.mark.parametrize("bad, needle", [
    (dict(tokens=100, block_size=256), "--tokens"),
    (dict(k=0), "--k"),
    (dict(k=4096, d_sae=2048), "--k"),
    (dict(code_fraction=1.5), "--code-fraction"),
    (dict(sae_id=("x",)), "--sae-release"),
    (dict(layers=(-1,)), "--layers"),
])
def test_bad_config_names_the_flag(bad, needle):
    with pytest.raises(AtlasError, match=needle.replace("-", r"\-")):
        BuildConfig(**bad)


def test_choices_come_from_the_config_s_literal_types():
    """The Python API checks a choice against the same Literal the CLI's choices and the corpus
    read, and names them all; the li2024 limit is the corpus's own context length."""
    import typing

    from atlas import config, corpus

    assert typing.get_args(config.BlockRule) == corpus.BLOCK_RULES
    assert corpus.LI2024_CONTEXT is config.LI2024_CONTEXT
    with pytest.raises(AtlasError, match="--sae-dtype 'float16': choose one of auto, float32, "
                                         "bfloat16"):
        BuildConfig(sae_dtype="float16")
    with pytest.raises(AtlasError, match="context of 1,024 tokens"):
        BuildConfig(block_rule="li2024", block_size=config.LI2024_CONTEXT)
    choices = {a.dest: a.choices for a in _parser()._subparsers._group_actions[0]
               .choices["build"]._actions}
    assert tuple(choices["block_rule"]) == corpus.BLOCK_RULES
