"""Compression of Hugging Face transformer models, a thin map of :mod:`curlinalg` onto layers.

A config says what to do (:mod:`adapters.configs`; the default is
:class:`InterpolativeConfig`: pivot rows plus interpolation coefficients); :func:`plan` says
what it will do without touching the model; :func:`compress` does it.

Note: the import name ``adapters`` is also used by AdapterHub's ``adapters`` package on PyPI;
the two cannot be installed in the same environment.

>>> import adapters                                                                 # doctest: +SKIP
>>> p = adapters.plan(model, adapters.InterpolativeConfig(reduction=0.2), calibration=text, tokenizer=tok)  # doctest: +SKIP
>>> model, report = adapters.compress(model, p, calibration=text, tokenizer=tok)   # doctest: +SKIP
>>> model.save_pretrained("out/smol"); tok.save_pretrained("out/smol")              # doctest: +SKIP
>>> from transformers import AutoModelForCausalLM                                   # doctest: +SKIP
>>> model = AutoModelForCausalLM.from_pretrained("out/smol")   # after import adapters  # doctest: +SKIP

Importing :mod:`adapters` registers compressed checkpoints with transformers' quantizer
registry (:mod:`adapters.hf_quantizer`), so any ``AutoModel*.from_pretrained`` loads them.
"""

from . import llama
from ._common import AdaptersWarning, count_parameters
from .calibration import CalibrationError, prepare_calibration
from .compression import CompressionReport, ModuleReport, compress
from .configs import (
    CompressionConfig,
    CURConfig,
    CURingConfig,
    InterpolativeConfig,
    StructuredConfig,
    SVDConfig,
    config_from_dict,
)
from .healing import HealingError, HealResult, heal
from .hf_quantizer import CompressedCheckpointConfig
from .layer import (
    CURLinear,
    InterpolativeLinear,
    LowRankLinear,
    break_even_rank,
    cur_params,
    interpolative_break_even_rank,
    interpolative_params,
)
from .merging import merge
from .planning import ModulePlan, Plan, allocate_ranks, plan
from .presets import MISTRAL as mistral
from .presets import QWEN2 as qwen2
from .serialization import CheckpointMismatchError, load_compressed, save_compressed
from .targets import find_targets

__all__ = [
    "AdaptersWarning",
    "CURConfig",
    "CURLinear",
    "CURingConfig",
    "CalibrationError",
    "CheckpointMismatchError",
    "CompressedCheckpointConfig",
    "CompressionConfig",
    "CompressionReport",
    "HealResult",
    "HealingError",
    "InterpolativeConfig",
    "InterpolativeLinear",
    "LowRankLinear",
    "ModulePlan",
    "ModuleReport",
    "Plan",
    "SVDConfig",
    "StructuredConfig",
    "allocate_ranks",
    "break_even_rank",
    "compress",
    "config_from_dict",
    "count_parameters",
    "cur_params",
    "find_targets",
    "heal",
    "interpolative_break_even_rank",
    "interpolative_params",
    "llama",
    "load_compressed",
    "merge",
    "mistral",
    "plan",
    "prepare_calibration",
    "qwen2",
    "save_compressed",
]
