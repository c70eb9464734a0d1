import torch


def test_empty_is_nan_filled():
    assert torch.empty(3).isnan().all()
    assert torch.empty_like(torch.zeros(2, 2)).isnan().all()
    assert torch.zeros(1).new_empty(4).isnan().all()
    assert torch.empty(3, dtype=torch.long).shape == (3,)
