"""The CMS model of Eq 30: wiring, variants, internals on request, the LSTM level."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nlviz import CMS, LevelSpec, ModelConfig


def _model(levels, **kw):
    torch.manual_seed(0)
    return CMS(ModelConfig(levels=tuple(levels), **kw), d_in=5, d_out=3)


def test_sequential_chain_is_eq30_with_residual_blocks():
    m = _model([LevelSpec(width=8, hidden=16), LevelSpec(width=8, hidden=16, period=4)])
    x = torch.randn(7, 5)
    h = m.stem(x)
    for level in m.levels:
        h = h + level.fc2(F.gelu(level.fc1(level.norm(h))))
    torch.testing.assert_close(m(x), m.head(h))


def test_bare_chain_has_no_residual_and_no_norm():
    m = _model([LevelSpec(width=8, hidden=16)] * 2, residual=False, norm=False)
    x = torch.randn(4, 5)
    h = m.stem(x)
    for level in m.levels:
        assert isinstance(level.norm, torch.nn.Identity) and level.skip is None
        h = level.fc2(F.gelu(level.fc1(h)))
    torch.testing.assert_close(m(x), m.head(h))


def test_levels_of_different_widths_get_a_projected_skip():
    m = _model([LevelSpec(width=8, hidden=16), LevelSpec(width=12, hidden=16)])
    assert isinstance(m.levels[1].skip, torch.nn.Linear)
    assert m.levels[1].skip.weight.shape == (12, 8)
    out, traces = m(torch.randn(2, 5), return_internals=True)
    assert out.shape == (2, 3) and traces[1].y.shape == (2, 12)
    assert len(m.levels[1].linears) == 3  # fc1, fc2 and the skip projection


def test_independent_variant_sums_levels_with_learned_weights():
    m = _model([LevelSpec(width=8, hidden=16)] * 3, variant="independent")
    x = torch.randn(4, 5)
    with torch.no_grad():
        m.mix.copy_(torch.tensor([0.2, 0.5, 0.3]))
    h = m.stem(x)
    ys = [level(h)[0] for level in m.levels]
    torch.testing.assert_close(m(x), m.head(0.2 * ys[0] + 0.5 * ys[1] + 0.3 * ys[2]))
    assert any(p is m.mix for p in m.io_parameters())


def test_internals_only_when_asked():
    m = _model([LevelSpec(width=8, hidden=16)] * 2)
    x = torch.randn(3, 5)
    assert isinstance(m(x), torch.Tensor)
    out, traces = m(x, return_internals=True)
    torch.testing.assert_close(out, m(x))
    assert len(traces) == 2
    assert traces[1].x is traces[0].y  # the chain: level 2 reads level 1's output
    assert traces[0].linear_inputs[0].shape == (3, 8) and traces[0].linear_inputs[1].shape == (3, 16)


def test_lstm_level_state_persists_across_batches_and_is_detached():
    m = _model([LevelSpec(kind="lstm", width=8), LevelSpec(width=8, hidden=16)])
    lstm = m.levels[0]
    x = torch.randn(4, 5)
    y1 = m(x)
    y1.sum().backward()
    assert lstm.state is not None and not lstm.state[0].requires_grad
    with torch.no_grad():
        h, c = lstm.cell(lstm.norm(m.stem(x)), lstm.state)  # one more cell step from the kept state
    y2 = m(x)
    assert not torch.allclose(y1, y2)  # same input, new output: the state carried over
    torch.testing.assert_close(lstm.state[0], h)
    m(torch.randn(2, 5))  # a different batch size starts from zeros
    lstm.reset_state()
    torch.testing.assert_close(m(x), y1)


def test_lstm_state_round_trips_through_state_dict_and_eval_leaves_it_alone():
    m = _model([LevelSpec(kind="lstm", width=8)])
    x = torch.randn(4, 5)
    m(x)
    state = m.state_dict()
    h = m.levels[0].state[0].clone()
    m.eval()
    m(torch.randn(9, 5))  # evaluation batch: zeros in, training state untouched
    assert torch.equal(m.levels[0].state[0], h)
    m.train()
    fresh = _model([LevelSpec(kind="lstm", width=8)])
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), m(x))
