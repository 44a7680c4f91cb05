"""The sweep specification (``params/sweep.yaml``): search space, budget, sampler and pruner.

Any params key can be swept. Categorical choices may be any YAML value (lists included). Optuna stores
scalars only, so a choice that is not a scalar is stored as its YAML text (``[-2, -1]``), and scalars
as themselves (``tcn``, ``32``): the study, ``optuna-dashboard`` and the MLflow tags show the value,
never an index. :func:`decode` turns the stored text back into the value.

The space is checked before the first trial against the schema *and* the model it builds (backbone
depth, AM flow source block, adapter heads): a value that cannot work is one error line naming the
sweep file and the key.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from amflow import methods
from amflow.errors import AmflowError
from amflow.models import build_backbone, build_model
from amflow.params_io import ParamsError, deep_merge, set_dotted, validate


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


def choice_label(value: Any) -> Union[str, int, float, bool]:
    """How a categorical choice is stored in the study: a scalar as itself, anything else as YAML text."""
    if isinstance(value, (str, int, float, bool)):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


class CategoricalDim(_Strict):
    type: Literal["categorical"]
    choices: list[Any] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _distinct(self):
        labels = [json.dumps(choice_label(c)) for c in self.choices]
        if len(set(labels)) != len(labels):
            raise ValueError("choices must be distinct")
        return self

    def labels(self) -> list:
        return [choice_label(c) for c in self.choices]

    def value_of(self, label: Any) -> Any:
        return self.choices[self.labels().index(label)]


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
            values[key] = dim.value_of(trial.suggest_categorical(key, dim.labels()))
    return values


def decode(spec: SweepSpec, optuna_params: dict[str, Any]) -> dict[str, Any]:
    """Turn a finished trial's stored params back into params values (stored labels -> choices)."""
    out = {}
    for key, value in optuna_params.items():
        dim = spec.space.get(key)
        out[key] = dim.value_of(value) if isinstance(dim, CategoricalDim) else value
    return out


def with_values(base: dict, values: dict[str, Any]) -> dict:
    """``base`` (a raw params mapping) with dotted ``values`` set on a copy."""
    overrides: dict = {}
    for key, value in values.items():
        set_dotted(overrides, key, value)
    return deep_merge(base, overrides)


def trial_params_data(base: dict, spec: SweepSpec, values: Optional[dict[str, Any]] = None) -> dict:
    """The raw params mapping of a trial: the base, then the sweep's fixed keys, then sampled values."""
    return with_values(base, {**spec.fixed, **(values or {})})


def _one_line(exc: Exception) -> str:
    """A (possibly multi-line) params error as one line: its problems joined."""
    lines = [ln.strip().removeprefix("- ") for ln in str(exc).splitlines()]
    return "; ".join(lines[1:] if len(lines) > 1 else lines)


def check_space(base: dict, spec: SweepSpec, *, dataset: str, method: str, space_file: str, params_file: str) -> None:
    """Fail before any trial runs if a fixed key or a swept value does not fit the params schema or the
    model it builds. Each categorical choice and each range end is tried alone, on the base plus the
    fixed keys (the model is built with a random backbone: its structure is what is checked)."""
    if dataset not in (base.get("datasets") or {}):
        raise AmflowError(f"{params_file}: no dataset '{dataset}' under 'datasets' "
                          f"(known: {', '.join(base.get('datasets') or {})}); pick one with --dataset")
    try:
        _build(validate(trial_params_data(base, spec), params_file), dataset, method)
    except (ParamsError, AmflowError) as exc:
        raise AmflowError(f"{params_file} (with --set and {space_file}'s 'fixed' keys): {_one_line(exc)}") from None
    built: set[str] = set()
    for key, dim in spec.space.items():
        probes = dim.choices if isinstance(dim, CategoricalDim) else [dim.low, dim.high]
        for value in probes:
            try:
                params = validate(trial_params_data(base, spec, {key: value}), params_file)
                # The model depends on a few sections only: build each distinct one once.
                structure = json.dumps([params.backbone.model_dump(mode="json"), params.model.model_dump(mode="json"),
                                        params.sampling_for(dataset).num_frames], sort_keys=True)
                if structure not in built:
                    _build(params, dataset, method)
                    built.add(structure)
            except (ParamsError, AmflowError) as exc:
                raise AmflowError(f"{space_file}: space.{key}: {choice_label(value)} does not fit the model of "
                                  f"{params_file} ({_one_line(exc)}); change the choices or the range") from None


def _build(params, dataset: str, method: str) -> None:
    """Build the trial's model with a random backbone of the same structure (raises AmflowError)."""
    variant = "none"
    if methods.get(method).am_flow:
        chosen = params.model.am_flow.variant
        variant = chosen if chosen in ("static", "aligned", "none") else "aligned"  # auto: any AM flow variant
    backbone = build_backbone(params.backbone.model_copy(update={"weights": "random"}))
    try:
        build_model(method, backbone, 2, params.sampling_for(dataset).num_frames, params.model, variant)
    except (ValueError, RuntimeError, AssertionError) as exc:  # torch modules' own argument checks
        raise AmflowError(str(exc)) from exc
