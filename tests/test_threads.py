import torch

from mlpkit.train import threads


def test_auto_takes_one_thread_for_small_steps_and_all_for_large() -> None:
    assert threads.choose("auto", parameters=529, batch_size=1) == 1
    assert threads.choose("auto", parameters=70_000, batch_size=1024) == torch.get_num_threads()
    assert threads.choose(3, parameters=529, batch_size=1) == 3


def test_the_process_setting_is_given_back() -> None:
    before = torch.get_num_threads()
    with threads.limited(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
