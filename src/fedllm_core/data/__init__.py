"""IoT-23 flow data: loading (Zeek conn.log.labeled and CSV), tasks, split, client partitions.

The public surface other packages import; the submodules hold the pieces:
``zeek`` (reading files), ``table`` (FlowTable), ``labels`` (tasks), ``splits`` (70/20/10 and
subsampling), ``partition`` (clients), ``settings`` (DataSettings), ``loader`` (the pipeline).
The shipped IoT-23 copy and its attribution live in ``iot23/`` next to this file.
"""

from fedllm_core.data.labels import OTHER, Task, encode_labels, fine_classes, label_names
from fedllm_core.data.loader import (
    SHIPPED_DIR,
    ClientData,
    EvalData,
    PreparedData,
    distinct_items,
    load_client_data,
    load_eval_data,
    load_flows,
    load_validation_data,
    prepare_data,
    shipped_paths,
    template_for,
)
from fedllm_core.data.partition import PartitionScheme, partition_indices
from fedllm_core.data.settings import DataSettings
from fedllm_core.data.splits import (
    Splits,
    capture_split,
    split_indices,
    strata_ids,
    stratified_subsample,
)
from fedllm_core.data.table import FlowTable
from fedllm_core.data.zeek import LineProblem, LoadReport, ZeekStream, read_flow_file

__all__ = [
    "OTHER",
    "SHIPPED_DIR",
    "ClientData",
    "DataSettings",
    "EvalData",
    "FlowTable",
    "LineProblem",
    "LoadReport",
    "PartitionScheme",
    "PreparedData",
    "Splits",
    "Task",
    "ZeekStream",
    "capture_split",
    "distinct_items",
    "encode_labels",
    "fine_classes",
    "label_names",
    "load_client_data",
    "load_eval_data",
    "load_flows",
    "load_validation_data",
    "partition_indices",
    "prepare_data",
    "read_flow_file",
    "shipped_paths",
    "split_indices",
    "strata_ids",
    "stratified_subsample",
    "template_for",
]
