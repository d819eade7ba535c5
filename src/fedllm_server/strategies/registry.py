"""The strategy registry: every strategy the server can run, and `make_strategy`.

Rules: a new strategy is its own module (a class with `settings_type`, `name` and the
`Strategy` methods, settings included) plus one line in `STRATEGIES`; the `[strategy]`
settings union and the lookup by name are built from that tuple.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from fedllm_server.privacy.settings import PrivacySettings
from fedllm_server.strategies.base import Strategy
from fedllm_server.strategies.fedavg import FedAvg
from fedllm_server.strategies.fedopt import FedOpt
from fedllm_server.strategies.gsfs import Gsfs
from fedllm_server.strategies.settings import RobustSettings

STRATEGIES = (
    FedAvg,
    FedOpt,
    Gsfs,
)
REGISTRY: dict[str, Any] = {cls.name: cls for cls in STRATEGIES}

if TYPE_CHECKING:
    from fedllm_server.strategies.settings import StrategySettingsBase as StrategySettings
else:  # one section, the class chosen by `name`
    StrategySettings = Annotated[
        Union[tuple(cls.settings_type for cls in STRATEGIES)],  # noqa: UP007
        Field(discriminator="name"),
    ]


def make_strategy(
    settings: StrategySettings,
    robust: RobustSettings | None = None,
    privacy: PrivacySettings | None = None,
) -> Strategy:
    """The strategy `settings.name` names, built from its settings, the `[robust]` rule and
    the `[privacy]` mode."""
    strategy: Strategy = REGISTRY[settings.name](settings, robust, privacy)
    return strategy
