"""Precise BN recomputes running statistics as the exact average over the given batches."""

import torch
from torch import nn

from nlvideo.engine.precise_bn import update_bn_stats


def test_running_stats_are_the_mean_of_batch_stats_and_momentum_is_restored():
    torch.manual_seed(0)
    bn = nn.BatchNorm3d(3, momentum=0.1)
    net = nn.Sequential(bn)
    batches = [torch.randn(4, 3, 2, 5, 5) * (i + 1) + i for i in range(5)]
    net.eval()  # precise BN must switch to train mode itself and restore eval afterwards
    used = update_bn_stats(net, iter(batches), num_batches=4)
    assert used == 4 and not net.training and bn.momentum == 0.1
    means = torch.stack([b.mean(dim=(0, 2, 3, 4)) for b in batches[:4]])
    vars_ = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for b in batches[:4]])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, vars_.mean(0))


def test_no_batches_keeps_previous_stats():
    bn = nn.BatchNorm3d(2)
    bn.running_mean.fill_(3.0)
    assert update_bn_stats(nn.Sequential(bn), iter([]), num_batches=10) == 0
    assert torch.all(bn.running_mean == 3.0) and bn.momentum == 0.1
