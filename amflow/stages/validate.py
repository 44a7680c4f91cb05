"""``amflow validate``: check a params file against the schema, or print every resolved value."""
from __future__ import annotations

from amflow.params import Params
from amflow.params_io import resolved_text


def validate(params: Params, params_file: str, show: bool) -> None:
    if show:
        print(resolved_text(params), end="")
        return
    print(f"{params_file}: valid ({len(params.datasets)} dataset(s): {', '.join(params.datasets)})")
