import pytest
import torch

from atlas.errors import AtlasError
from atlas.models import HookPoint, capture_residuals, load_model


def test_capture_equals_hidden_states_of_a_full_pass(tiny_lm):
    ids = torch.randint(0, len(tiny_lm.tokenizer), (2, 32))
    hooks = [HookPoint(0), HookPoint(2), HookPoint(2, "pre")]
    got = capture_residuals(tiny_lm, ids, hooks)
    with torch.no_grad():
        full = tiny_lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[L + 1] is block L's output, except the last (normed) one.
    torch.testing.assert_close(got["blocks.0.hook_resid_post"], full[1])
    torch.testing.assert_close(got["blocks.2.hook_resid_post"], full[3])
    torch.testing.assert_close(got["blocks.2.hook_resid_pre"], full[2])


def test_capture_stops_after_the_deepest_block(tiny_lm):
    ran = []
    handles = [b.register_forward_hook(lambda m, i, o, n=n: ran.append(n))
               for n, b in enumerate(tiny_lm.blocks)]
    try:
        capture_residuals(tiny_lm, torch.zeros(1, 8, dtype=torch.long), [HookPoint(1)])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]


def test_layer_outside_the_model_is_a_clear_error(tiny_lm):
    with pytest.raises(AtlasError, match="layer 9 does not exist.*0..3"):
        tiny_lm.check_hooks([HookPoint(9)])


def test_hook_names_round_trip():
    assert HookPoint.parse("blocks.7.hook_resid_post") == HookPoint(7)
    assert HookPoint.parse(HookPoint(3, "pre").name) == HookPoint(3, "pre")
    with pytest.raises(AtlasError, match="residual-stream"):
        HookPoint.parse("blocks.7.attn.hook_z")


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    from atlas.models import embedded_gguf

    bad = tmp_path / "broken.gguf"
    with embedded_gguf().open("rb") as fh:
        bad.write_bytes(fh.read(4096))
    with pytest.raises(AtlasError, match="not a readable GGUF"):
        load_model(str(bad), device="cpu")


def test_unknown_model_without_network_is_a_clear_error():
    with pytest.raises(AtlasError, match="could not be loaded"):
        load_model("no-such-org/no-such-model", device="cpu")


def test_auto_dtype_is_bfloat16_exactly_where_the_cpu_has_bfloat16_instructions():
    from atlas.models import cpu_has_bf16, resolve_dtype

    want = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == want
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32


def test_a_bfloat16_model_reads_the_residuals_of_the_float32_one(tiny_lm):
    from tests.tiny import tiny_model_dir

    half = load_model(str(tiny_model_dir()), device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    ids = torch.randint(5, 200, (3, 24), generator=torch.Generator().manual_seed(0))
    hook = HookPoint(2)
    a = capture_residuals(tiny_lm, ids, [hook])[hook.name].float()
    b = capture_residuals(half, ids, [hook])[hook.name].float()
    assert b.dtype == torch.float32 and a.shape == b.shape
    assert float((a - b).norm() / a.norm()) < 0.05
