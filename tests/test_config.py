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
