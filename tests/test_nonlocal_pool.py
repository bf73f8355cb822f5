"""``pool="before_embed"`` (video-nonlocal-net, PySlowFast): the input is max-pooled once and phi/g embed
the pooled input. Checked against the paper's formula written out in float64 on every computation path;
efficient vs naive in fp32 is tests/test_nonlocal_block.py's test, run for both pool modes."""

import pytest
import torch

from nlvideo.models import INSTANTIATIONS, NonLocalBlock
from nlvideo.models import nonlocal_block as nl
from tests.test_nonlocal_block import SHAPES, paper_formula, randomise

CASES = [(inst, False) for inst in INSTANTIATIONS] + [("embedded_gaussian", True)]


@pytest.mark.parametrize(("instantiation", "scale"), CASES)
@pytest.mark.parametrize("path", nl.PATHS)
def test_pool_before_embed_is_the_formula_in_float64_on_every_path(instantiation, scale, path, monkeypatch):
    """Each path is forced through select_path, so a path added later is checked here too."""
    monkeypatch.setattr(nl, "select_path", lambda *a, **k: nl.PathChoice(path, "forced by the test"))
    block = NonLocalBlock(8, instantiation=instantiation, scale=scale, pool="before_embed")
    block = randomise(block).double()
    x = torch.randn(SHAPES[3], dtype=torch.float64) * 0.5
    torch.testing.assert_close(block(x)[:1], paper_formula(block, x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_both_pool_modes_share_state_dict_keys_and_differ_as_functions(instantiation):
    after = randomise(NonLocalBlock(8, instantiation=instantiation)).double()
    before = NonLocalBlock(8, instantiation=instantiation, pool="before_embed").double().eval()
    assert before.state_dict().keys() == after.state_dict().keys()
    before.load_state_dict(after.state_dict())
    x = torch.randn(SHAPES[3], dtype=torch.float64)
    assert not torch.allclose(before(x), after(x))  # a max-pool does not commute with the embedding


def test_fresh_pool_first_block_is_the_identity_and_bad_pool_is_named():
    x = torch.randn(SHAPES[3])
    assert torch.equal(NonLocalBlock(8, pool="before_embed").eval()(x), x)
    with pytest.raises(ValueError, match="unknown pool 'first'; allowed: after_embed, before_embed"):
        NonLocalBlock(8, pool="first")
