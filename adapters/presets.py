"""Per-family presets: the family's target names fixed, models of other families refused."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import nn

from .compression import compress
from .configs import CompressionConfig, InterpolativeConfig, StructuredConfig, config_from_options
from .planning import Plan, plan
from .targets import ALL_LINEAR, TARGET_ALIASES

__all__ = ["LLAMA", "MISTRAL", "PRESETS", "Preset", "QWEN2"]


@dataclass(frozen=True)
class Preset:
    """A model family: which ``config.model_type`` values it covers and its linear layers.

    Attributes
    ----------
    name : str
    model_types : tuple of str
        Accepted ``model.config.model_type`` values.
    targets : tuple of str
        The family's compressible linears (short names, :data:`adapters.targets.TARGET_ALIASES`).
    default : type
        The config class used when none is given (its fields take the keyword options).
    """

    name: str
    model_types: tuple
    targets: tuple
    default: type = field(default=InterpolativeConfig)

    def check(self, model: nn.Module, /) -> None:
        """Raise ``ValueError`` unless ``model`` belongs to this family."""
        kind = getattr(getattr(model, "config", None), "model_type", None)
        if kind not in self.model_types:
            raise ValueError(
                f"adapters.{self.name} compresses {self.model_types} models (config.model_type), got "
                f"{kind!r}; use the preset of that family, or adapters.compress(model, config) with "
                "targets= naming its linear layers"
            )

    def config(self, config: CompressionConfig | None = None, /, **options) -> CompressionConfig:
        """``config`` (default ``self.default``) with the family's targets filled in; options of
        the earlier keyword interface (``method=``, ``form=``) choose the config as
        :func:`adapters.configs.config_from_options` does."""
        if config is None:
            own = {f.name for f in fields(self.default)}
            if set(options) <= own and not any(v is None for v in options.values()):
                config = self.default.with_options(**options)
            else:
                config = config_from_options(**options)
        elif options:
            config = type(config).with_options(config, **options)
        if config.targets == ALL_LINEAR:
            config = type(config).with_options(config, targets=self.targets)
        targets = config.targets
        names = set(self.targets) | {TARGET_ALIASES[t] for t in self.targets}
        if isinstance(targets, str) or not set(targets) <= names:
            raise ValueError(
                f"the {self.name} preset fixes its target names to {self.targets}; got targets={targets!r}. "
                "Pass a subset of them, or use adapters.compress(model, config) for other layers"
            )
        return config

    def plan(self, model, config=None, /, *, calibration=None, tokenizer=None, progress=True, **options) -> Plan:
        """:func:`adapters.plan` for this family (the model is checked first)."""
        self.check(model)
        return plan(model, self.config(config, **options), calibration=calibration, tokenizer=tokenizer,
                    progress=progress)

    def compress(self, model, config=None, /, *, calibration=None, tokenizer=None, progress=True, heal=False,
                 **options):
        """:func:`adapters.compress` for this family (the model is checked first).

        With no ``calibration`` the bundled default calibration set is used with
        ``tokenizer`` or the model's own (:func:`adapters.calibration.default_calibration`).
        """
        self.check(model)
        if isinstance(config, Plan):
            return compress(model, config, calibration=calibration, tokenizer=tokenizer, progress=progress, heal=heal)
        return compress(model, self.config(config, **options), calibration=calibration, tokenizer=tokenizer,
                        progress=progress, heal=heal)


_SEVEN = ("q", "k", "v", "o", "gate", "up", "down")
#: Llama 2/3, SmolLM2, TinyLlama. Default: structured MLP units of one width (a stock, smaller
#: Llama), which measured better than the interpolative default at -8.76, -20 and -30% on
#: SmolLM2-135M, in and out of domain (docs/benchmarks.md, section 11).
LLAMA = Preset("llama", ("llama",), _SEVEN, StructuredConfig)
MISTRAL = Preset("mistral", ("mistral",), _SEVEN)
QWEN2 = Preset("qwen2", ("qwen2",), _SEVEN)
PRESETS = {p.name: p for p in (LLAMA, MISTRAL, QWEN2)}
