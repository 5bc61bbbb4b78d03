"""ENN-ℓ: local training of two-tower (image–text) models, sequential or pipelined: no gradient crosses a unit
boundary (one unit per stage is the published, backprop-free method; a unit of several stages backprops inside it).

Each tower is cut into S stages (`split_clip`); stage k of both towers (or a group of contiguous stages,
`chain_stages`) forms a `LocalUnit` with its own contrastive loss (through a frozen random, learned or
token-level `LocalHead`), its own optimizer and schedule, and detached inputs, so no gradient crosses a
unit boundary. `run_units` is the one-process reference;
`LocalPipeline` runs groups of units in separate processes with identical results. Quick use::

    image, text = split_clip(clip, stages=4)
    units = [LocalUnit(i, t, loss_fn, head=..., ...) for i, t in zip(image, text)]  # last: logit_scale=
    for u in units: u.attach(optimizer_for(u), scheduler_for(u))
    metrics = run_units(units, [(images, tokens, tokens)])

The design and its reasoning: docs/enn-local.md. Depends only on torch (open_clip's text pooling is
imported lazily when a text stage pools).
"""

from enn.local.heads import HEAD_KINDS, LocalHead, random_projection
from enn.local.pipeline import LocalPipeline, PipelineError, StepReport, UnitFactory, group_units
from enn.local.stages import (
    POOLS,
    ResNetStage,
    StageChain,
    TextStage,
    TowerStage,
    VitStage,
    chain_stages,
    split_clip,
    split_evenly,
    staged_forward,
)
from enn.local.unit import LocalUnit, Micro, bind_state_keys, final_embeddings, make_units, run_units

__all__ = [
    "HEAD_KINDS",
    "POOLS",
    "LocalHead",
    "LocalPipeline",
    "LocalUnit",
    "Micro",
    "PipelineError",
    "ResNetStage",
    "StageChain",
    "StepReport",
    "TextStage",
    "TowerStage",
    "UnitFactory",
    "VitStage",
    "bind_state_keys",
    "final_embeddings",
    "chain_stages",
    "group_units",
    "make_units",
    "random_projection",
    "run_units",
    "split_clip",
    "split_evenly",
    "staged_forward",
]
