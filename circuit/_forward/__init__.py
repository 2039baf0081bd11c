"""The fast patching engine: an architecture-free algorithm (:mod:`.engine`) over one seam, the block
arithmetic chosen from a bridge's features (:mod:`.arithmetic`)."""

from circuit._forward.arithmetic import (
    BlockArithmetic as BlockArithmetic,
    BridgeArithmetic as BridgeArithmetic,
    UnsupportedArchitecture as UnsupportedArchitecture,
    arithmetic_of as arithmetic_of,
    optional_weight as optional_weight,
)
from circuit._forward.engine import (
    STAGES as STAGES,
    RunCache as RunCache,
    Start as Start,
    continue_from as continue_from,
    mix_values as mix_values,
    run_cache as run_cache,
    self_check as self_check,
)
