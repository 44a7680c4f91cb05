"""Reading params files: YAML (a key given twice is an error), ``extends:``, the Snakemake workflow's merge
of its config, command-line overrides, and validation against the schema (:mod:`amflow.params`) with
errors that name the file, the key and what was expected.

Snakemake's config, DVC's params and every ``amflow`` command read the same files through
:func:`load_params`, so a wrong key or type fails before any work starts.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import shlex
from pathlib import Path
from typing import Any, Optional, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from amflow import io
from amflow.params import SOURCE_SCHEMAS, Params

class ParamsError(ValueError):
    """A params file that does not validate; the message names the file and every bad key."""


def _section(annotation: Any) -> Any:
    """A field's type without Optional/Union around it: the section (a model) or mapping it holds."""
    if get_origin(annotation) is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return annotation
    inner = [_section(a) for a in get_args(annotation)]
    return next((a for a in inner if a is not None), None)


def _known_keys(loc: tuple) -> list[str]:
    """The keys the schema allows where ``loc`` (a validation error's location) ends: the field names of
    the section that holds it (a mapping such as ``datasets`` is looked through to its values, a dataset
    to its source's schema)."""
    node: Any = Params
    if _source_tagged(loc):
        node, loc = SOURCE_SCHEMAS.get(loc[2]), loc[3:]
    for part in loc[:-1]:
        node = _section(node)
        if get_origin(node) is dict:
            node = get_args(node)[1]
        elif node is not None and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            return []
    node = _section(node)
    return list(node.model_fields) if node is not None and get_origin(node) is not dict else []


def _source_tagged(loc: tuple) -> bool:
    """Whether ``loc`` runs through a dataset's source schema: ``datasets.<name>.<source>...``."""
    return len(loc) > 2 and loc[0] == "datasets" and loc[2] in SOURCE_SCHEMAS


def _format_errors(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid params ({err.error_count()} problem(s)):"]
    for e in err.errors():
        # The key as the file states it: without the name of the source schema that checked it.
        key = ".".join(str(p) for p in (e["loc"][:2] + e["loc"][3:] if _source_tagged(e["loc"]) else e["loc"]))
        key = key or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), _known_keys(e["loc"]), n=1)
            parent = key.rpartition(".")[0]
            hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'? " if close else ""
            msg = f"unknown key ({hint}check the spelling; `amflow validate --show` lists every known key)"
        got = e.get("input")
        # A whole section echoed back, cut at 60 characters, says nothing the key does not.
        got_s = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r:.60})"
        lines.append(f"  - {key}: {msg}{got_s}")
    return "\n".join(lines)


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last one silently: a second ``train:`` section would replace the first whole.
    """


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first != key_node.start_mark.line + 1:
            raise _DuplicateKey(
                None, None, f"key '{key}' is given twice (lines {first} and {key_node.start_mark.line + 1}): "
                            f"merge the two into one", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    if not path.is_file():
        raise ParamsError(f"{path}: is a folder, not a params file; pass a YAML file such as params/default.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); "
                          f"save the file as UTF-8") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror}); check the file's permissions") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ParamsError(_yaml_error(path, exc)) from None
    if data is None:
        raise ParamsError(f"{path}: the params file is empty; state `extends: <a params file>` and the values that "
                          f"differ from it, or every section (params/default.yaml shows them)")
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: the file, the line and what is wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, _DuplicateKey):
        return f"{where}: {problem}"
    if "could not determine a constructor for the tag" in problem:
        tag = problem.rsplit(" ", 1)[-1]
        return (f"{where}: the tag {tag} is not allowed (params hold plain numbers, strings, lists and "
                f"mappings only); remove the tag")
    return f"{where}: not valid YAML ({problem}); fix the file"


def resolve_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a params file, following ``extends: other.yaml`` (relative to the file) recursively."""
    path = Path(path)
    key = path.resolve()
    if key in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(key):], key))
        raise ParamsError(f"{path}: 'extends' goes round in a circle ({cycle}); remove one of these 'extends:' lines")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is not None:
        data = deep_merge(_extended(str(path), path.parent, parent, (*_chain, key)), data)
    return data


def _extended(extender: str, folder: Path, parent: Any, chain: tuple[Path, ...] = ()) -> dict:
    """The params that ``extends: parent`` (said by ``extender``) names, relative to ``folder``."""
    if not isinstance(parent, str):
        raise ParamsError(f"{extender}: 'extends' must be the path of one params file (got {parent!r})")
    target = folder / parent
    if not target.exists():
        raise ParamsError(f"{extender}: 'extends: {parent}' names {target}, which does not exist; fix the path "
                          f"(it is relative to {folder.absolute()})")
    return resolve_raw(target, chain)


def validate(data: dict, source: str = "<params>") -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_errors(source, err)) from None


def load_params(path: str | Path, overrides: Optional[dict] = None, overrides_source: str = "the overrides") -> Params:
    """Load and validate a params file (with ``extends``), optionally deep-merging ``overrides``.

    A mistake is blamed on where it is: when the file is valid alone, the errors name
    ``overrides_source`` (``--set train.epochz=1``) and the file they apply to."""
    data = resolve_raw(path)
    if not overrides:
        return validate(data, str(path))
    try:
        return Params.model_validate(deep_merge(data, overrides))
    except ValidationError as err:
        try:
            Params.model_validate(data)
            source = f"{overrides_source} (on {path})"
        except ValidationError:
            source = f"{path} (with {overrides_source})"
        raise ParamsError(_format_errors(source, err)) from None


def set_dotted(data: dict, dotted: str, value: Any) -> dict:
    """Set ``a.b.c`` in a nested dict (used for command-line overrides and sweeps)."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ParamsError(f"cannot set '{dotted}': '{k}' is not a mapping")
    node[keys[-1]] = value
    return data


def set_source(items: list[str]) -> str:
    """How an error names the command line's ``--set KEY=VALUE`` items (as the user typed them)."""
    return " ".join(f"--set {shlex.quote(item)}" for item in items)


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (so numbers, lists and booleans work)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}' must look like key.path=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"--set '{text}': the value is not valid YAML ({problem}); write it as YAML, e.g. "
                          f"--set train.epochs=2 or --set 'model.adapter.blocks=[4, 5]'") from None


def resolve_workflow_config(command_line: dict, default: str | Path, source: str = "the command line's config") -> dict:
    """The params of a Snakemake run, from what its command line gave (``--configfile`` and ``--config``,
    which Snakemake has merged) and the workflow's default params file.

    What the command line gave extends the file its ``extends:`` names (relative to the default's folder:
    Snakemake does not tell the workflow where a config file was), as ``params/tiny.yaml`` extends
    ``default.yaml``. Without ``extends:``, it is complete when it has ``datasets``: it is used as it is;
    otherwise it extends the default: overrides such as ``--config 'train={epochs: 1}'``.
    Mappings merge key by key, as Snakemake merges config files. ``source`` names what the command line
    gave, for the errors.
    """
    data = copy.deepcopy(command_line)
    parent = data.pop("extends", None)
    if parent is not None:
        base = _extended(source, Path(default).parent, parent)
    elif "datasets" in data:
        base = {}
    else:
        base = resolve_raw(default)
    return deep_merge(base, data)


def resolved_text(params: Params) -> str:
    """``params`` as a complete params file: every value, the schema's defaults included."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def write_resolved(params: Params, folder: str | Path) -> Path:
    """Write ``params`` as a complete params file named by its content (``<name>-<hash>.yaml``), so that
    workflow jobs read exactly the values the workflow validated; the same values give the same file."""
    text = resolved_text(params)
    path = Path(folder) / f"{params.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.exists() or path.read_text() != text:
        io.write_text(path, text)
    return path
