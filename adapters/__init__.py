"""CUR compression of Hugging Face transformer models, built on :mod:`curlinalg`.

Compressed layers are :class:`InterpolativeLinear` (pivot rows plus interpolation coefficients,
the default) or :class:`CURLinear` (``C U R``).

Note: the import name ``adapters`` is also used by AdapterHub's ``adapters`` package on PyPI;
the two cannot be installed in the same environment.

>>> import adapters                                     # doctest: +SKIP
>>> model, report = adapters.compress(model, calibration=text, tokenizer=tok, reduction=0.1)  # doctest: +SKIP
>>> adapters.save_compressed(model, "out/smol-cur", tokenizer=tok)  # doctest: +SKIP
"""

from ._common import AdaptersWarning, count_parameters
from .calibration import CalibrationError, prepare_calibration
from .compress import CompressionReport, ModuleReport, allocate_ranks, compress, find_targets
from .heal import HealingError, HealResult, heal
from .layer import (
    CURLinear,
    InterpolativeLinear,
    break_even_rank,
    cur_params,
    interpolative_break_even_rank,
    interpolative_params,
)
from .serialization import CheckpointMismatchError, load_compressed, save_compressed

__all__ = [
    "AdaptersWarning",
    "CURLinear",
    "CalibrationError",
    "CheckpointMismatchError",
    "CompressionReport",
    "HealResult",
    "HealingError",
    "InterpolativeLinear",
    "ModuleReport",
    "allocate_ranks",
    "break_even_rank",
    "compress",
    "count_parameters",
    "cur_params",
    "find_targets",
    "heal",
    "interpolative_break_even_rank",
    "interpolative_params",
    "load_compressed",
    "prepare_calibration",
    "save_compressed",
]
