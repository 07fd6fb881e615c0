"""Names the NCCL plugin emits: one ``llamatelemetry.collective.*`` namespace (docs/reference/telemetry.md)."""

from __future__ import annotations

from typing import Final

# ---- span attributes (per collective)
OP: Final = "llamatelemetry.collective.op"
REDUCE_OP: Final = "llamatelemetry.collective.reduce_op"
BYTES: Final = "llamatelemetry.collective.bytes"
COUNT: Final = "llamatelemetry.collective.count"
DTYPE: Final = "llamatelemetry.collective.dtype"
GROUP_NAME: Final = "llamatelemetry.collective.group.name"
GROUP_DESC: Final = "llamatelemetry.collective.group.desc"
GROUP_SIZE: Final = "llamatelemetry.collective.group.size"
GROUP_RANK: Final = "llamatelemetry.collective.group.rank"
RANK: Final = "llamatelemetry.collective.rank"
BACKEND: Final = "llamatelemetry.collective.backend"
ASYNC: Final = "llamatelemetry.collective.async"
SEQ: Final = "llamatelemetry.collective.seq"
PEER: Final = "llamatelemetry.collective.peer"
DURATION: Final = "llamatelemetry.collective.duration"
DURATION_SOURCE: Final = "llamatelemetry.collective.duration.source"
ALGBW: Final = "llamatelemetry.collective.algbw"
BUSBW: Final = "llamatelemetry.collective.busbw"
BUS_FACTOR: Final = "llamatelemetry.collective.bus_factor"
ARRIVAL_SKEW: Final = "llamatelemetry.collective.arrival_skew"
LAST_ARRIVAL_RANK: Final = "llamatelemetry.collective.last_arrival_rank"
SKEW_SOURCE: Final = "llamatelemetry.collective.arrival_skew.source"
STEP: Final = "llamatelemetry.collective.step"
RUN_ID: Final = "llamatelemetry.collective.run_id"
SIZE_BUCKET: Final = "llamatelemetry.collective.size_bucket"
ERROR_TYPE: Final = "error.type"
CODE_FUNCTION: Final = "code.function.name"
CODE_FILE: Final = "code.file.path"
CODE_LINE: Final = "code.line.number"

# ---- span names
STEP_SPAN: Final = "llamatelemetry.collective.step"
#: Collective spans are named for the op: ``all_reduce``, ``all_gather``, ``send``, ...

# ---- the stall event and its attributes
STALLED_EVENT: Final = "llamatelemetry.collective.stalled"
STALL_AGE: Final = "llamatelemetry.collective.stall.age"
STALL_STACK: Final = "llamatelemetry.collective.stall.stack"
STALL_MISSING_RANKS: Final = "llamatelemetry.collective.stall.missing_ranks"

# ---- metrics
METRIC_DURATION: Final = "llamatelemetry.collective.duration"
METRIC_BUSBW: Final = "llamatelemetry.collective.busbw"
METRIC_BYTES: Final = "llamatelemetry.collective.bytes"
METRIC_ARRIVAL_SKEW: Final = "llamatelemetry.collective.arrival_skew"
METRIC_WAIT: Final = "llamatelemetry.collective.wait"
METRIC_DROPPED: Final = "llamatelemetry.collective.dropped"

# ---- resource
JOB_ID: Final = "llamatelemetry.distributed.job_id"

#: ``llamatelemetry.collective.duration.source`` values: how an op's end was measured.
SOURCE_GPU: Final = "gpu"
SOURCE_COMPLETION: Final = "completion"
SOURCE_WAIT: Final = "wait"
SOURCE_LAUNCH: Final = "launch"
