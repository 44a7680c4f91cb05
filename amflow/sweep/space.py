"""The sweep specification (``params/sweep.yaml``): search space, budget, sampler and pruner.

Any params key can be swept. Categorical choices may be any YAML value (lists included): Optuna
stores only scalars, so the trial records the *index* of the choice and the value is looked up here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from amflow.errors import AmflowError
from amflow.params import ParamsError, deep_merge, resolve_raw, set_dotted, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatDim(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError("needs low < high (and low > 0 when log)")
        return self


class IntDim(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = 1
    log: bool = False


class CategoricalDim(_Strict):
    type: Literal["categorical"]
    choices: list[Any] = Field(..., min_length=1)


Dim = Union[FloatDim, IntDim, CategoricalDim]


class PrunerSpec(_Strict):
    type: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = 3
    n_warmup_steps: int = 2
    min_resource: int = 1
    reduction_factor: int = 3


class SweepSpec(_Strict):
    trials: int = Field(12, ge=1)
    seed: int = 0
    metric: Literal["val_top1"] = "val_top1"
    pruner: PrunerSpec = PrunerSpec()
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Dim] = Field(..., min_length=1)


def load_sweep_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.exists():
        raise AmflowError(f"{path}: sweep specification not found (see params/sweep.yaml for the format)")
    try:
        return SweepSpec.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as err:
        lines = [f"{path}: invalid sweep specification:"]
        lines += [f"  - {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise AmflowError("\n".join(lines)) from None


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    """Sample one point of the space; returns ``{dotted key: value}``."""
    values: dict[str, Any] = {}
    for key, dim in spec.space.items():
        if isinstance(dim, FloatDim):
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntDim):
            values[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
        else:
            index = trial.suggest_categorical(key, list(range(len(dim.choices))))
            values[key] = dim.choices[index]
    return values


def decode(spec: SweepSpec, optuna_params: dict[str, Any]) -> dict[str, Any]:
    """Turn a finished trial's stored params back into params values (categorical indices -> choices)."""
    out = {}
    for key, value in optuna_params.items():
        dim = spec.space.get(key)
        out[key] = dim.choices[value] if isinstance(dim, CategoricalDim) else value
    return out


def trial_params_data(base_file: str | Path, spec: SweepSpec, values: Optional[dict[str, Any]] = None) -> dict:
    """The raw params mapping of a trial: base file, then the sweep's fixed keys, then sampled values."""
    data = resolve_raw(base_file)
    overrides: dict = {}
    for key, value in {**spec.fixed, **(values or {})}.items():
        set_dotted(overrides, key, value)
    return deep_merge(data, overrides)


def check_space(base_file: str | Path, spec: SweepSpec) -> None:
    """Fail before any trial runs if a swept key or value does not fit the params schema."""
    for key, dim in spec.space.items():
        probes = dim.choices if isinstance(dim, CategoricalDim) else [dim.low, dim.high]
        for value in probes:
            try:
                validate(trial_params_data(base_file, spec, {key: value}), f"{base_file} + sweep {key}={value!r}")
            except ParamsError as exc:
                raise AmflowError(f"the sweep space does not fit the params schema:\n{exc}") from None
