"""Tasks: the data they promise, deterministic from their seed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nlviz import DigitsConfig, MultiscaleConfig, RecallConfig
from nlviz.tasks import DigitsTask, MultiscaleTask, RecallTask, make_pairs


def test_multiscale_target_is_slow_plus_fast_map_and_drifts_at_two_speeds():
    cfg = MultiscaleConfig(dim=4, slow_period=1000, fast_period=10, noise=0.0)
    task = MultiscaleTask(cfg, seed=1)
    x, y = task.batch(7, 6)
    slow, fast = task.components(7)
    torch.testing.assert_close(y, x @ (slow + fast).T)
    # one fast period later the fast map is back, the slow one has barely moved
    slow10, fast10 = task.components(17)
    torch.testing.assert_close(fast10, fast, rtol=1e-4, atol=1e-5)
    assert 0 < (slow10 - slow).norm() < 0.2 * slow.norm()
    assert (task.components(12)[1] - fast).norm() > 0.5 * fast.norm()


def test_tasks_are_deterministic_from_their_seed_and_state():
    a, b = RecallTask(RecallConfig(), seed=3), RecallTask(RecallConfig(), seed=3)
    assert torch.equal(a.batch(1, 8)[0], b.batch(1, 8)[0])
    state = a.state_dict()
    x = a.batch(2, 8)[0]
    a.load_state_dict(state)
    assert torch.equal(a.batch(2, 8)[0], x)


def test_recall_keys_have_the_requested_correlation():
    g = torch.Generator().manual_seed(0)
    for c in (0.0, 0.5, 0.9):
        keys, values = make_pairs(200, 256, 8, c, g)
        cos = keys @ keys.T
        off = cos[~torch.eye(200, dtype=torch.bool)]
        assert abs(off.mean().item() - c) < 0.05
        torch.testing.assert_close(keys.norm(dim=1), torch.ones(200))
        assert values.shape == (200, 8)


def test_digits_tasks_are_class_incremental_and_disjoint():
    task = DigitsTask(DigitsConfig(classes_per_task=2, steps_per_task=10), seed=0)
    assert task.tasks == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [task.task_index(t) for t in (1, 10, 11, 50, 999)] == [0, 0, 1, 4, 4]
    _, y = task.batch(11, 64)
    assert set(y.tolist()) <= {2, 3}
    for train, test in zip(task.train_rows, task.test_rows):
        assert not set(train.tolist()) & set(test.tolist())
    assert task.X.shape[1] == 64 and float(task.X.max()) <= 1.0


def test_digits_evaluation_reports_each_seen_task():
    task = DigitsTask(DigitsConfig(steps_per_task=5), seed=0)
    model = torch.nn.Linear(64, 10)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(F.one_hot(torch.tensor(2), 10).float())  # always predicts class 2
    metrics = task.evaluate(model, t=7)  # tasks 1 and 2 seen
    assert metrics["acc_task1"] == 0.0
    assert 0.4 < metrics["acc_task2"] < 0.6  # half of task 2's test rows are class 2
    assert "acc_task3" not in metrics
