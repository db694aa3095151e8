"""Graph passes, each a pure `Graph -> Graph` function in its own file, and the pass manager."""
from .algebraic import RULES as ALGEBRAIC_RULES
from .algebraic import algebraic, strip_stop_gradient
from .constant_fold import constant_fold
from .cse import cse
from .dce import dce
from .manager import Stage, StageError, StageRecord, run_pipeline, run_stage
from .simplify import SIMPLIFY_STAGES, simplify

__all__ = ["ALGEBRAIC_RULES", "SIMPLIFY_STAGES", "Stage", "StageError", "StageRecord",
           "algebraic", "constant_fold", "cse", "dce", "run_pipeline", "run_stage", "simplify",
           "strip_stop_gradient"]
