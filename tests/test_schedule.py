"""HyperparameterSchedule: the hyperparameters recorded after every hyper step, and replayed in
a weights-only re-training."""

from __future__ import annotations

import pytest
import torch

from optuna_ift import HyperparameterSchedule
from optuna_ift.trainer import Callback
from tests.test_trainer import make_trainer


class Seen(Callback):
    """The model's hyperparameters after each hyper step, after the callbacks before it."""

    def __init__(self) -> None:
        self.log_decays: list[torch.Tensor] = []

    def on_hyper_step(self, trainer, record):
        self.log_decays.append(trainer.model.log_decay.detach().clone())


def recorded_run(hyper_steps=6):
    schedule = HyperparameterSchedule()
    trainer = make_trainer(callbacks=[schedule])
    trainer.fit(hyper_steps)
    return trainer, schedule


def test_records_every_hyper_step_by_name():
    trainer, schedule = recorded_run()
    assert len(schedule.states) == 6 and all(set(s) == {"log_decay"} for s in schedule.states)
    assert torch.equal(schedule.states[-1]["log_decay"], trainer.model.log_decay.detach())
    assert not torch.equal(schedule.states[0]["log_decay"], schedule.states[-1]["log_decay"])
    assert all(not s["log_decay"].requires_grad for s in schedule.states)  # copies, detached


class AtWeightSteps(Callback):
    """The hyperparameters each weight step trained with (read after it, before the round's
    end sets the next)."""

    def __init__(self) -> None:
        self.log_decays: list[torch.Tensor] = []

    def on_weight_step(self, trainer, loss):
        self.log_decays.append(trainer.model.log_decay.detach().clone())


def test_a_replay_trains_each_round_with_the_recorded_hyperparameters():
    """Round k + 2 of weight steps trains with what the tuned run had after hyper step k + 1,
    the first round with the model's own start; and the replay changes the weights it trains
    (against the same weights-only run without it)."""
    _, schedule = recorded_run()
    seen, steps = Seen(), AtWeightSteps()
    replayed = make_trainer(callbacks=[HyperparameterSchedule(schedule.states), seen, steps],
                            hyper_optimizer=None)
    start = replayed.model.log_decay.detach().clone()
    replayed.fit(6)
    assert all(torch.equal(a, s["log_decay"]) for a, s in zip(seen.log_decays, schedule.states))
    n = 10  # inner_steps
    assert len(steps.log_decays) == 6 * n
    for k, used in enumerate(steps.log_decays):
        expected = start if k < n else schedule.states[k // n - 1]["log_decay"]
        assert torch.equal(used, expected), k
    plain = make_trainer(hyper_optimizer=None)
    plain.fit(6)
    assert not torch.allclose(plain.model.linear.weight, replayed.model.linear.weight, atol=1e-3)


def test_a_replay_past_its_record_keeps_the_last_entry():
    _, schedule = recorded_run(hyper_steps=2)
    seen = Seen()
    make_trainer(callbacks=[HyperparameterSchedule(schedule.states), seen],
                 hyper_optimizer=None).fit(4)
    assert [torch.equal(a, schedule.states[min(k, 1)]["log_decay"])
            for k, a in enumerate(seen.log_decays)] == [True] * 4


def test_the_record_resumes_from_a_checkpoint(tmp_path):
    _, whole = recorded_run(hyper_steps=5)
    first = HyperparameterSchedule()
    trainer = make_trainer(callbacks=[first])
    trainer.fit(2)
    trainer.save(tmp_path / "c.pt")
    second = HyperparameterSchedule()
    make_trainer(callbacks=[second]).resume(tmp_path / "c.pt").fit(5)  # to hyper step 5
    assert len(second.states) == 5
    assert all(torch.equal(a["log_decay"], b["log_decay"])
               for a, b in zip(second.states, whole.states))
    recording = make_trainer(callbacks=[HyperparameterSchedule()], hyper_optimizer=None)
    recording.fit(1)
    recording.save(tmp_path / "weights-only.pt")
    replaying = HyperparameterSchedule(whole.states)
    with pytest.raises(ValueError, match="this checkpoint's HyperparameterSchedule records"):
        make_trainer(callbacks=[replaying], hyper_optimizer=None).resume(
            tmp_path / "weights-only.pt")


def test_a_resumed_replay_continues_from_the_record_it_is_given(tmp_path):
    _, schedule = recorded_run(hyper_steps=4)
    first = make_trainer(callbacks=[HyperparameterSchedule(schedule.states)],
                         hyper_optimizer=None)
    first.fit(2)
    first.save(tmp_path / "replay.pt")
    assert torch.load(tmp_path / "replay.pt", weights_only=True)["callbacks"][0]["state"] == {
        "replay": True, "states": []}  # the record is not copied into every checkpoint
    seen = Seen()
    make_trainer(callbacks=[HyperparameterSchedule(schedule.states), seen],
                 hyper_optimizer=None).resume(tmp_path / "replay.pt").fit(4)
    assert len(seen.log_decays) == 2
    assert all(torch.equal(a, s["log_decay"])
               for a, s in zip(seen.log_decays, schedule.states[2:]))


def test_bad_records_and_misuse_are_clear_errors():
    _, schedule = recorded_run(hyper_steps=1)
    with pytest.raises(TypeError, match="states must be None or a sequence of dicts"):
        HyperparameterSchedule({"log_decay": torch.zeros(3)})
    with pytest.raises(TypeError, match=r"states\[0\] must be a dict of tensors"):
        HyperparameterSchedule([[1.0]])
    with pytest.raises(ValueError, match="use it in a weights-only trainer"):
        make_trainer(callbacks=[HyperparameterSchedule(schedule.states)]).fit(1)
    with pytest.raises(ValueError, match=r"states\[0\] names the hyperparameters \['decay'\]"):
        make_trainer(callbacks=[HyperparameterSchedule([{"decay": torch.zeros(3, 10)}])],
                     hyper_optimizer=None).fit(1)
    with pytest.raises(ValueError, match=r"has shape \(3, 4\), the model's is \(3, 10\)"):
        make_trainer(callbacks=[HyperparameterSchedule([{"log_decay": torch.zeros(3, 4)}])],
                     hyper_optimizer=None).fit(1)
