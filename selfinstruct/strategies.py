"""The generation strategies, by the name a config gives in `generate.strategy`. Each is one
module with a `selfinstruct.strategy.GenerationStrategy`; adding one is that module, one line
here and its name in `GenerateConfig.strategy`."""

from __future__ import annotations

from selfinstruct.evolve_run import EvolInstructStrategy
from selfinstruct.generate import SelfInstructStrategy
from selfinstruct.magpie import MagpieStrategy
from selfinstruct.strategy import GenerationStrategy

STRATEGIES: dict[str, GenerationStrategy] = {strategy.name: strategy for strategy in (
    SelfInstructStrategy(),
    EvolInstructStrategy(),
    MagpieStrategy(),
)}


def strategy_named(name: str) -> GenerationStrategy:
    """The registered strategy called `name`; an unknown name is a ValueError listing the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown generation strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
