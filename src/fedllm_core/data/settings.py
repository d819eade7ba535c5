"""``DataSettings``: the ``[data]`` section every daemon and the experiment share.

Rules: every field has a default that runs on the shipped IoT-23 copy; two processes with the
same DataSettings derive the same rows, split, partition and prompt texts (seeded, no I/O
beyond reading the flow files). Validation names the field (pydantic, via load_settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedllm_core.data.labels import DEFAULT_MIN_CLASS_COUNT, Task
from fedllm_core.data.partition import PartitionScheme
from fedllm_core.prompts import AUTO, get_template
from fedllm_core.settings import FrozenSettings


class DataSettings(FrozenSettings):
    """Which flows, which task, which split/partition and which prompt template."""

    # Flow files or folders (Zeek conn.log.labeled or IoT-23 CSV, optionally .gz); empty = the
    # IoT-23 copy shipped inside the package.
    paths: tuple[Path, ...] = ()
    task: Task = "binary"
    # multiclass: malicious classes with fewer rows than this become "Other-Malicious".
    min_class_count: int = Field(default=DEFAULT_MIN_CLASS_COUNT, ge=1)
    seed: int = 0
    # Stratified subsample (by class and capture) before the split, for fast runs; None = all.
    max_rows: int | None = Field(default=None, ge=10)
    # ``random``: the paper's stratified 70/20/10 over flows (every capture in every split);
    # ``capture``: whole captures to train / validation / test, so the test measures detection
    # on traffic from captures never trained on (docs/data.md). ``holdout_captures`` names the
    # test captures (capture split only); otherwise the seed deals them.
    split: Literal["random", "capture"] = "random"
    holdout_captures: tuple[str, ...] = ()
    partition: PartitionScheme = "capture"
    dirichlet_alpha: float = Field(default=0.5, gt=0)
    num_partitions: int = Field(default=1, ge=1)
    partition_index: int = Field(default=0, ge=0)
    # Caps (stratified subsamples) on a client's validation set and on the test split.
    val_max: int | None = Field(default=None, ge=1)
    test_max: int | None = Field(default=None, ge=1)
    # Prompt template name (``compact``, ``verbose``, ``name@version``) or ``auto``; with auto,
    # the richest template whose token budget fits ``max_prompt_tokens`` (None = no limit).
    template: str = "compact"
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    # Host context (fedllm_core.hostcontext): each prompt also says what its originating host
    # did in the last this-many seconds (flows, distinct destinations and ports, SYN-only
    # flows), computed the same way in training and in live classify. None = off.
    host_context_s: float | None = Field(default=None, gt=0)

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value != AUTO:
            get_template(value)  # raises ValueError naming the known templates
        return value

    @model_validator(mode="after")
    def _index_in_range(self) -> DataSettings:
        if self.partition_index >= self.num_partitions:
            raise ValueError(
                f"partition_index {self.partition_index} must be < num_partitions "
                f"{self.num_partitions}"
            )
        if self.holdout_captures and self.split != "capture":
            raise ValueError("holdout_captures needs split = 'capture'")
        return self
