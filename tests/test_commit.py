import pytest
import torch

from echo_model.sampling import commit_mask, num_transfer_tokens


def test_commits_everything_above_threshold():
    masked = torch.tensor([[True, True, True, True]])
    conf = torch.tensor([[0.9, 0.2, 0.95, 0.86]])
    assert commit_mask(masked, conf, n=1, threshold=0.85).tolist() == [[True, False, True, True]]


def test_falls_back_to_top_n_when_too_few_above():
    masked = torch.tensor([[True, True, True, True]])
    conf = torch.tensor([[0.3, 0.6, 0.1, 0.5]])
    assert commit_mask(masked, conf, n=2, threshold=0.85).tolist() == [[False, True, False, True]]
    # one above tau but n = 2 asks for more: the two most confident are taken
    conf = torch.tensor([[0.9, 0.6, 0.1, 0.5]])
    assert commit_mask(masked, conf, n=2, threshold=0.85).tolist() == [[True, True, False, False]]


def test_ignores_committed_positions_even_if_confident():
    masked = torch.tensor([[False, True, False, True]])
    conf = torch.tensor([[0.99, 0.1, 0.99, 0.2]])
    assert commit_mask(masked, conf, n=1, threshold=0.85).tolist() == [[False, False, False, True]]


def test_n_capped_by_remaining_masks_and_rows_independent():
    masked = torch.tensor([[False, False, True, False], [True, True, True, True], [False] * 4])
    conf = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.2, 0.3, 0.1, 0.4], [0.9] * 4])
    out = commit_mask(masked, conf, n=8, threshold=0.85)
    assert out.tolist() == [[False, False, True, False], [True] * 4, [False] * 4]


def test_one_step_commits_whole_block():
    masked = torch.ones(2, 8, dtype=torch.bool)
    conf = torch.rand(2, 8)
    assert commit_mask(masked, conf, n=8, threshold=0.85).all()


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must both be"):
        commit_mask(torch.ones(4, dtype=torch.bool), torch.ones(4), n=1, threshold=0.5)


@pytest.mark.parametrize("b,steps,expected", [(8, 8, [1] * 8), (8, 1, [8]), (8, 3, [3, 3, 2]), (4, 4, [1] * 4)])
def test_transfer_schedule(b, steps, expected):
    assert num_transfer_tokens(b, steps) == expected


def test_transfer_schedule_rejects_too_many_steps():
    with pytest.raises(ValueError, match="steps must be in"):
        num_transfer_tokens(4, 5)
