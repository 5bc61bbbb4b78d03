"""ENN-ℓ pipelined across processes: same parameters as the sequential loop; failures end the run cleanly."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Sequence

import pytest
import torch
from open_clip.loss import ClipLoss
from test_local_stages import batch, single_thread, tiny_clip  # noqa: F401  (single_thread: autouse)

from enn.local import LocalPipeline, LocalUnit, PipelineError, group_units, make_units, run_units

STAGES = 4


def build_units(state: dict, ids: Sequence[int] | None, head: str = "random", **options) -> list[LocalUnit]:
    """Units of the tiny CLIP loaded from `state`, each with AdamW and a warm-up/decay schedule;
    `options` go to `make_units` (pool, groups)."""
    model = tiny_clip()
    model.load_state_dict(state)
    units = make_units(model, STAGES, ClipLoss(), head=head, only=ids, ortho_weight=1e-3, grad_clip=1.0, **options)
    for unit in units:
        optimizer = torch.optim.AdamW(unit.parameters(), lr=2e-3, weight_decay=0.1)
        unit.attach(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 3)))
    return units


def factory(state: dict, head: str, ids: Sequence[int], device: torch.device, **options) -> list[LocalUnit]:
    """What each stage process runs (module level, so the spawn start method can pickle it)."""
    return [u.to(device) for u in build_units(state, ids, head, **options)]


def failing_factory(state: dict, ids: Sequence[int], device: torch.device) -> list[LocalUnit]:
    units = build_units(state, ids)
    if 3 in ids:  # the last unit's loss breaks at its second step
        calls = []

        def loss_fn(image, text, scale):
            calls.append(1)
            if len(calls) == 2:
                raise FloatingPointError("loss went NaN in the last stage")
            return ClipLoss()(image, text, scale)

        units[-1]._loss_fn = (loss_fn,)
    return units


def steps(n: int) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    out = []
    for t in range(n):
        images, tokens = batch(n=6, seed=100 + t)
        out.append([(images, tokens, tokens)])
    return out


def test_units_are_grouped_contiguously() -> None:
    assert group_units(4, 2) == [[0, 1], [2, 3]]
    assert group_units(5, 2) == [[0, 1], [2, 3, 4]]
    assert group_units(4, 4) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError):
        group_units(2, 3)


@pytest.mark.parametrize(
    ("head", "options"),
    [
        ("learned", {}),
        pytest.param("mlp", {}, marks=pytest.mark.slow),
        pytest.param("block", {"pool": "final"}, marks=pytest.mark.slow),
        pytest.param("random", {"groups": [[0, 1], [2, 3]]}, marks=pytest.mark.slow),
    ],
    ids=["learned", "mlp", "block-head-final-readout", "loss-groups"],
)
def test_pipelined_parameters_equal_sequential_after_the_same_batches(head: str, options: dict) -> None:
    """Learned heads: their parameters and optimizer state must travel too (random heads are buffers rebuilt
    from the seed, checked in test_local_stages). Loss groups: one unit (two stages) per process.

    Slow tier (10–50 s each, two stage processes): "mlp" is another learned head, travelling as "learned" does
    here; "block-head-final-readout" and "loss-groups" are covered in the default suite by
    tests/retrieval/test_train_local.py::test_local_options_train_and_pipeline_to_the_sequential_weights (block
    heads, final readout, per-group losses, pipelined = sequential bit for bit, heads included)."""
    state = tiny_clip().state_dict()
    data = steps(4)
    # Sequential reference, one process, one thread (as each pipeline process).
    units = build_units(state, None, head, **options)
    seq_metrics = [run_units(units, micro) for micro in data]
    seq_model = {k: v for u in units for k, v in u.model_state().items()}
    seq_training = {u.index: u.training_state() for u in units}
    count = len(units)

    reports = []
    pipe = LocalPipeline(functools.partial(factory, state, head, **options), group_units(count, 2), ["cpu", "cpu"])
    with pipe:
        for t, micro in enumerate(data, start=1):
            reports += pipe.submit(t, micro, snapshot=t == len(data))
        reports += pipe.finish()
    assert [r.step for r in reports] == [1, 2, 3, 4]
    for r, expected in zip(reports, seq_metrics, strict=True):
        assert r.metrics == expected  # every unit's loss, bit for bit
    final = reports[-1].state
    assert sorted(final) == list(range(count))
    pipe_model = {k: v for s in final.values() for k, v in s["model"].items()}
    assert pipe_model.keys() == seq_model.keys()
    for key, value in seq_model.items():
        assert torch.equal(pipe_model[key], value), key
    for k, training in seq_training.items():
        exp_avg = training["optimizer"]["state"][0]["exp_avg"]
        assert torch.equal(final[k]["training"]["optimizer"]["state"][0]["exp_avg"], exp_avg)
        assert final[k]["training"]["scheduler"] == training["scheduler"]
        if training["head"] is not None:
            for name, value in training["head"].items():
                assert torch.equal(final[k]["training"]["head"][name], value)
    assert not torch.equal(pipe_model["visual.class_embedding"], state["visual.class_embedding"])


def test_each_stage_process_accounts_its_time_and_the_feeder_its_waits() -> None:
    """Counters from the first step on: every report carries each process's running totals, the last
    ones equal the final totals, and a window's counters are the difference of two reports'."""
    state = tiny_clip().state_dict()
    reports = []
    with LocalPipeline(functools.partial(factory, state, "random"), group_units(STAGES, 2), ["cpu"] * 2) as pipe:
        for t, micro in enumerate(steps(4), start=1):
            reports += pipe.submit(t, micro)
        reports += pipe.finish()
    assert [len(r.stage_stats) for r in reports] == [2] * 4
    assert [[s.steps for s in r.stage_stats] for r in reports] == [[t, t] for t in range(1, 5)]
    totals = pipe.stage_stats
    assert totals == reports[-1].stage_stats
    for stats in totals:
        assert stats.work_s > 0 and stats.cpu_s > 0
        assert min(stats.recv_s, stats.send_s) >= 0
    assert totals[1].send_s == 0  # the last process sends nothing on
    window = totals[0] - reports[0].stage_stats[0]
    assert window.steps == 3 and 0 < window.work_s < totals[0].work_s
    assert pipe.feed_blocked_s >= 0


@pytest.mark.timeout(120)
def test_a_killed_stage_process_ends_the_run_with_a_clear_error() -> None:
    state = tiny_clip().state_dict()
    start = time.monotonic()
    with LocalPipeline(functools.partial(factory, state, "random"), group_units(STAGES, 2), ["cpu", "cpu"]) as pipe:
        pipe.submit(0, steps(1)[0])
        pipe.wait(0)
        os.kill(pipe.pids[1], signal.SIGKILL)
        with pytest.raises(PipelineError, match=r"stage process 1 \(stages 2–3, pid \d+\) exited with code -9"):
            for t, micro in enumerate(steps(50), start=1):
                pipe.submit(t, micro)
            pipe.wait(50)
    assert time.monotonic() - start < 90
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in pipe.pids)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split()[2] == "Z"


@pytest.mark.timeout(120)
def test_an_exception_in_a_stage_is_reported_with_its_traceback() -> None:
    state = tiny_clip().state_dict()
    pipe = LocalPipeline(functools.partial(failing_factory, state), group_units(STAGES, 2), ["cpu", "cpu"])
    with pipe, pytest.raises(PipelineError, match="(?s)stage process 1 .*FloatingPointError: loss went NaN"):
        for t, micro in enumerate(steps(3)):
            pipe.submit(t, micro)
        pipe.finish()
