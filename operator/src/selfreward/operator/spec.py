"""Read a SelfRewardRun the way the API server does: the CRD's schema, defaults and CEL rules.

The CRD (crds/selfrewardruns.yaml) is the single source of truth; this module re-declares no
default and no range. `selfreward run` refuses a run.yaml here that `kubectl apply` would refuse,
with the same field paths. Transition rules (those naming oldSelf) only apply on update and are
the API server's business.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator

CRD_FILE = Path(__file__).parent / "crds" / "selfrewardruns.yaml"
GROUP = "selfreward.io"
VERSION = "v1alpha1"
KIND = "SelfRewardRun"
PLURAL = "selfrewardruns"


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """The run is invalid; `errors` names each field."""

    def __init__(self, source: str, errors: list[FieldError]):
        self.errors = errors
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  {error}" for error in errors))


@functools.cache
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))


def run_schema() -> dict[str, Any]:
    version = next(v for v in crd()["spec"]["versions"] if v["name"] == VERSION)
    return version["schema"]["openAPIV3Schema"]


# ---- defaulting ----------------------------------------------------------------------------
def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting: fill absent properties that have a default, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for name, child in schema["properties"].items():
            if name not in result and "default" in child:
                result[name] = copy.deepcopy(child["default"])
            if name in result:
                result[name] = apply_defaults(child, result[name])
        return result
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


# ---- schema validation ---------------------------------------------------------------------
def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields forbidden, as the API server's strict field validation does."""
    schema = dict(schema)
    schema.pop("default", None)
    if "properties" in schema:
        # Object metadata is the API server's: the schema may only restrict its name.
        schema["properties"] = {name: child if name == "metadata" else _strict(child)
                                for name, child in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    if "anyOf" in schema:
        schema["anyOf"] = [_strict(option) for option in schema["anyOf"]]
    return schema


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def schema_errors(obj: dict[str, Any]) -> list[FieldError]:
    errors = []
    for error in Draft4Validator(_strict(run_schema())).iter_errors(obj):
        path = _path(error.absolute_path)
        if error.validator == "additionalProperties" and not error.validator_value:
            known = set(error.schema.get("properties", {}))
            for name in sorted(set(error.instance) - known):
                errors.append(FieldError(_path([*error.absolute_path, name]), "field not declared in schema (unknown field)"))
            continue
        if error.validator == "required":
            missing = error.message.split("'")[1]
            errors.append(FieldError(_path([*error.absolute_path, missing]), "Required value"))
            continue
        message = error.message
        if error.validator in ("minimum", "maximum", "enum", "pattern", "type", "minLength", "maxLength", "maxItems"):
            message = f"Invalid value: {error.instance!r}: {error.message}"
        errors.append(FieldError(path or "<root>", message))
    return sorted(set(errors), key=lambda e: e.path)


# ---- CEL -----------------------------------------------------------------------------------
def _to_cel(schema: dict[str, Any], value: Any):
    """A CEL value typed by the schema (a `number` field is a double even when written as 3)."""
    import celpy

    if schema.get("type") == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return celpy.celtypes.DoubleType(float(value))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): _to_cel(props.get(k, extra), v) for k, v in value.items()}
        )
    if isinstance(value, list):
        return celpy.celtypes.ListType([_to_cel(schema.get("items", {}), v) for v in value])
    return celpy.json_to_cel(value)


@functools.cache
def _program(rule: str):
    import celpy

    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def cel_errors(schema: dict[str, Any], value: Any, path: list[Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        try:
            passed = bool(_program(rule["rule"]).evaluate({"self": _to_cel(schema, value)}))
        except Exception as error:  # a rule that cannot evaluate fails, as on the API server
            passed, rule = False, {**rule, "message": f"{rule.get('message', rule['rule'])} ({error})"}
        if not passed:
            where = _path(path) + rule.get("fieldPath", "")
            errors.append(FieldError(where, f"Invalid value: {rule.get('message') or 'failed rule: ' + rule['rule']}"))
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                errors.extend(cel_errors(child, value[name], [*path, name]))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors.extend(cel_errors(schema["items"], item, [*path, index]))
    return errors


# ---- the run document ----------------------------------------------------------------------
@dataclass(frozen=True)
class RunDocument:
    """A validated, defaulted SelfRewardRun read from a file."""

    name: str
    namespace: str
    spec: dict[str, Any]
    source: Path


def validate(obj: dict[str, Any], source: str = "run") -> dict[str, Any]:
    """The object with defaults applied, or SpecError listing every invalid field."""
    errors = []
    if obj.get("apiVersion") != f"{GROUP}/{VERSION}":
        errors.append(FieldError("apiVersion", f"Invalid value: {obj.get('apiVersion')!r}: expected {GROUP}/{VERSION}"))
    if obj.get("kind") != KIND:
        errors.append(FieldError("kind", f"Invalid value: {obj.get('kind')!r}: expected {KIND}"))
    if not (obj.get("metadata") or {}).get("name"):
        errors.append(FieldError("metadata.name", "Required value"))
    schema = run_schema()
    errors += schema_errors(obj)
    if errors:
        raise SpecError(source, errors)
    defaulted = apply_defaults(schema, obj)
    errors = cel_errors(schema, defaulted, [])
    if errors:
        raise SpecError(source, errors)
    return defaulted


def load_run(path: Path) -> RunDocument:
    """Parse, validate and default a run.yaml; relative paths in it are relative to the file."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as error:
        raise SpecError(str(path), [FieldError("<file>", f"not valid YAML: {error}")]) from error
    runs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(runs) != 1:
        raise SpecError(str(path), [FieldError("<file>", f"expected exactly one {KIND} document, found {len(runs)}")])
    obj = validate(runs[0], str(path))
    spec = resolve_paths(obj["spec"], path.parent)
    metadata = obj["metadata"]
    return RunDocument(metadata["name"], metadata.get("namespace", "default"), spec, path)


LOCATION_FIELDS = (("baseModel", "uri"), ("storage", "uri"), ("seed", "instructions"), ("seed", "evaluations"),
                   ("seed", "evaluationHoldout"), ("promptGeneration", "model"))


def resolve_paths(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make local relative paths absolute against `base`; URIs with a scheme stay as they are."""
    resolved = copy.deepcopy(spec)
    for section, field in LOCATION_FIELDS:
        value = resolved.get(section, {}).get(field)
        if value and "://" not in value and not Path(value).is_absolute():
            resolved[section][field] = str((base / value).resolve())
    return resolved
