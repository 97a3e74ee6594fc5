"""What a V1 document is, recognised from its content, and the typed entries it holds.

Accepted documents (the file name never decides):

* ``aws greengrass get-{connector,function,resource,subscription}-definition-version`` output:
  ``{"Arn", "CreationTimestamp", "Definition": {"Connectors": [...]}, "Id", "Version"}`` (botocore's
  ``Get*DefinitionVersionResponse`` shapes);
* the ``--initial-version`` document of ``aws greengrass create-*-definition`` (the bare
  definition, e.g. ``{"Connectors": [...]}``, as in this repository's manifests/), or its
  ``--cli-input-json`` form ``{"Name", "InitialVersion": {...}}``;
* the core's deployed group, ``/greengrass/ggc/deployment/group/group.json``: the group's
  configuration as the cloud copied it to the core (V1 Developer Guide, "Deploy groups"), with the
  definition versions' entries, either directly (``"Connectors": [...]``, ``"Functions"`` or
  ``"Lambdas"``, ...) or under ``"ConnectorDefinitionVersion"``-style keys. Keys are matched
  exactly first, then ignoring case; a function's on-device ``Handler`` is read like
  ``FunctionConfiguration.Executable``.

Several documents combine into one :class:`V1Group`; each kind (connectors, functions, resources,
subscriptions) may come from one document only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from .source import MigrationError, show

KINDS = ("Connectors", "Functions", "Resources", "Subscriptions")
OTHER_KINDS = ("Cores", "Devices", "Loggers")
ALIASES = {"Functions": ("Functions", "Lambdas")}
RESOURCE_TYPES = ("S3MachineLearningModelResourceData", "SageMakerMachineLearningModelResourceData",
                  "LocalVolumeResourceData", "LocalDeviceResourceData",
                  "SecretsManagerSecretResourceData")
ML_RESOURCE_TYPES = RESOURCE_TYPES[:2]

_ARN = re.compile(r"^arn:(aws[a-z-]*):(greengrass|lambda|iot):([a-z0-9-]*):([0-9]{12})?:")
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"
_CONNECTOR_ARN = re.compile(
    r"^arn:aws[a-z-]*:greengrass:([a-z0-9-]*)::/connectors/([A-Za-z0-9_.-]+)/versions/([0-9]+)$")


@dataclass(frozen=True)
class Connector:
    where: str
    id: str
    arn: str
    name: str            # e.g. ObjectDetectionx86-64; "" when the ARN is not a connector ARN
    version: str
    parameters: Dict[str, Any]


@dataclass(frozen=True)
class Function:
    where: str
    id: str
    arn: str
    executable: Optional[str]
    settings: Dict[str, Any]          # Pinned, MemorySize, Timeout, EncodingType, IsolationMode
    variables: Dict[str, str]
    resource_ids: Tuple[str, ...]


@dataclass(frozen=True)
class Resource:
    where: str
    id: str
    name: str
    type: str                          # the ResourceDataContainer key
    data: Dict[str, Any]               # its object: DestinationPath, SourcePath, S3Uri, ...


@dataclass(frozen=True)
class Subscription:
    where: str
    id: str
    source: str
    subject: str
    target: str


@dataclass(frozen=True)
class Document:
    path: str
    kind: str                          # how the report names it
    kinds: Tuple[str, ...]


@dataclass
class V1Group:
    documents: List[Document] = field(default_factory=list)
    connectors: List[Connector] = field(default_factory=list)
    functions: List[Function] = field(default_factory=list)
    resources: List[Resource] = field(default_factory=list)
    subscriptions: List[Subscription] = field(default_factory=list)
    origin: Dict[str, str] = field(default_factory=dict)        # kind -> the file that gave it
    partitions: Set[str] = field(default_factory=set)
    regions: Set[str] = field(default_factory=set)
    accounts: Set[str] = field(default_factory=set)


def key(obj: Dict[str, Any], name: str) -> Optional[str]:
    """The key of `obj` that is `name`, exactly or else ignoring case; None when absent."""
    if name in obj:
        return name
    low = name.lower()
    return next((k for k in obj if isinstance(k, str) and k.lower() == low), None)


def get(obj: Dict[str, Any], name: str, default: Any = None) -> Any:
    found = key(obj, name)
    return default if found is None else obj[found]


def _type(where: str, value: Any, kind: type, what: str) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise MigrationError("{} must be {}, not {}".format(where, what, type(value).__name__))
    return value


def _string(obj: Dict[str, Any], name: str, where: str, required: bool = True) -> Optional[str]:
    value = get(obj, name)
    if value is None and not required:
        return None
    return _type("{}.{}".format(where, name), value, str, "a string")


def _object(obj: Dict[str, Any], name: str, where: str) -> Dict[str, Any]:
    value = get(obj, name)
    return {} if value is None else _type("{}.{}".format(where, name), value, dict, "an object")


def _list(value: Any, where: str) -> List[Dict[str, Any]]:
    _type(where, value, list, "a list")
    return [_type("{}[{}]".format(where, i), item, dict, "an object") for i, item in enumerate(value)]


def note_arn(group: V1Group, arn: Optional[str]) -> None:
    """Remember the partition, region and account an ARN names (only well-formed ones)."""
    match = _ARN.match(arn or "")
    if not match:
        return
    group.partitions.add(match.group(1))
    if re.fullmatch(REGION_PATTERN, match.group(3)):
        group.regions.add(match.group(3))
    if match.group(4):
        group.accounts.add(match.group(4))


def _connector(entry: Dict[str, Any], where: str) -> Connector:
    arn = _string(entry, "ConnectorArn", where) or ""
    params = _object(entry, "Parameters", where)
    match = _CONNECTOR_ARN.match(arn)
    return Connector(where, _string(entry, "Id", where, False) or "", arn,
                     match.group(2) if match else "", match.group(3) if match else "", params)


def _function(entry: Dict[str, Any], where: str, default_isolation: Any) -> Function:
    config = _object(entry, "FunctionConfiguration", where)
    env = _object(config, "Environment", where + ".FunctionConfiguration")
    env_where = where + ".FunctionConfiguration.Environment"
    variables = _object(env, "Variables", env_where)
    for name, value in variables.items():
        _type("{}.Variables.{}".format(env_where, show(name, 60)), value, str, "a string")
    policies = _list(get(env, "ResourceAccessPolicies", []), env_where + ".ResourceAccessPolicies")
    ids = tuple(_string(p, "ResourceId", "{}.ResourceAccessPolicies[{}]".format(env_where, i)) or ""
                for i, p in enumerate(policies))
    execution = get(env, "Execution") or {}
    settings = {name: get(config, name) for name in ("Pinned", "MemorySize", "Timeout",
                                                     "EncodingType")}
    settings["IsolationMode"] = (get(execution, "IsolationMode") if isinstance(execution, dict)
                                 else None) or default_isolation
    executable = (_string(config, "Executable", where + ".FunctionConfiguration", False)
                  or _string(entry, "Handler", where, False))
    return Function(where, _string(entry, "Id", where, False) or "",
                    _string(entry, "FunctionArn", where) or "", executable, settings,
                    dict(variables), ids)


def _resource(entry: Dict[str, Any], where: str) -> Resource:
    container = _object(entry, "ResourceDataContainer", where)
    present = [(t, k) for t, k in ((t, key(container, t)) for t in RESOURCE_TYPES) if k]
    if len(present) != 1:
        raise MigrationError("{}.ResourceDataContainer must hold exactly one of {}".format(
            where, ", ".join(RESOURCE_TYPES)))
    rtype, found = present[0]
    data = _type("{}.ResourceDataContainer.{}".format(where, found), container[found], dict,
                 "an object")
    for name in ("DestinationPath", "SourcePath"):
        _string(data, name, "{}.ResourceDataContainer.{}".format(where, rtype), False)
    return Resource(where, _string(entry, "Id", where) or "",
                    _string(entry, "Name", where, False) or "", rtype, data)


def _subscription(entry: Dict[str, Any], where: str) -> Subscription:
    return Subscription(where, _string(entry, "Id", where, False) or "",
                        *(_string(entry, name, where) or "" for name in ("Source", "Subject",
                                                                         "Target")))


Found = Dict[str, Tuple[Any, str, Dict[str, Any]]]


def _bodies(data: Dict[str, Any]) -> Tuple[str, Found, List[str], bool]:
    """(layout, {kind: (its list, where, the object holding it)}, ARNs of the document itself,
    whether group-level keys are present)."""
    found: Found = {}
    arns: List[str] = []
    for wrapper in ("Definition", "InitialVersion"):
        body = get(data, wrapper)
        if isinstance(body, dict):
            arns.append(get(data, "Arn") if isinstance(get(data, "Arn"), str) else "")
            for kind in KINDS + OTHER_KINDS:
                if key(body, kind):
                    found[kind] = (body[key(body, kind)], "{}.{}".format(key(data, wrapper),
                                                                        key(body, kind)), body)
            return "definition", found, arns, False
    markers = any(key(data, name) for name in ("Group",) + OTHER_KINDS)
    for kind in KINDS + OTHER_KINDS:
        wrapper = key(data, kind[:-1] + "DefinitionVersion")
        direct = [k for k in (key(data, n) for n in ALIASES.get(kind, (kind,))) if k]
        if wrapper and direct:
            raise MigrationError("both {} and {} are given; a group holds one of them".format(
                wrapper, direct[0]))
        if direct:
            found[kind] = (data[direct[0]], direct[0], data)
        elif wrapper:
            markers = True
            body = _type(wrapper, data[wrapper], dict, "an object")
            if isinstance(get(body, "Definition"), dict):
                arns.append(get(body, "Arn") if isinstance(get(body, "Arn"), str) else "")
                body, wrapper = get(body, "Definition"), wrapper + ".Definition"
            if key(body, kind):
                found[kind] = (body[key(body, kind)], "{}.{}".format(wrapper, key(body, kind)), body)
    group = get(data, "Group")
    if isinstance(group, dict) and isinstance(get(group, "Arn"), str):
        arns.append(get(group, "Arn"))
    return "group", found, arns, markers


def _kind_label(layout: str, kinds: List[str], markers: bool) -> str:
    if layout == "group" and (markers or len(kinds) > 1):
        return "group document"
    if len(kinds) == 1:
        singular = kinds[0][:-1].lower()
        if layout == "definition":
            return "{} definition version".format(singular)
        return "{} definition (--initial-version document)".format(singular)
    return "group document"


def _refuse_foreign(path: str, data: Dict[str, Any], found: Dict[str, Any]) -> None:
    others = [k for k in OTHER_KINDS if k in found]
    if others:
        raise MigrationError("{}: a {} definition document: nothing of it maps; give the group.json "
                             "or the connector, function, resource and subscription definition "
                             "versions".format(path, others[0][:-1].lower()))
    if not data:
        raise MigrationError("{}: an empty group document ({{}}): the core has no deployment to "
                             "migrate".format(path))
    keys = ", ".join(show(k, 40) for k in list(data)[:8])
    raise MigrationError("{}: not a Greengrass V1 group or definition document: it holds none of "
                         "Connectors, Functions, Resources, Subscriptions (top-level keys: {})"
                         .format(path, keys))


def add_document(group: V1Group, path: str, data: Any) -> Document:
    """Recognise `data` (the JSON of the file `path`) and add its entries to `group`."""
    where = show(path)
    if not isinstance(data, dict):
        raise MigrationError("{}: a JSON {}, not an object; not a Greengrass V1 group or definition "
                             "document".format(where, type(data).__name__))
    try:
        layout, found, arns, markers = _bodies(data)
    except MigrationError as exc:
        raise MigrationError("{}: {}".format(where, exc)) from None
    kinds = [k for k in KINDS if k in found]
    if not kinds:
        _refuse_foreign(where, data, found)
    for kind in kinds:
        if kind in group.origin:
            raise MigrationError("{}: its {} were already given by {}; give each kind once (one "
                                 "group.json, or one definition version of each kind)".format(
                                     where, kind.lower(), group.origin[kind]))
        group.origin[kind] = where
    for arn in arns:
        note_arn(group, arn)
    _add_entries(group, where, found, kinds)
    document = Document(where, _kind_label(layout, kinds, markers), tuple(kinds))
    group.documents.append(document)
    return document


def _default_isolation(body: Dict[str, Any]) -> Any:
    """DefaultConfig.Execution.IsolationMode of a function definition: what its functions without
    their own IsolationMode run with."""
    default = get(body, "DefaultConfig")
    execution = get(default, "Execution") if isinstance(default, dict) else None
    return get(execution, "IsolationMode") if isinstance(execution, dict) else None


def _add_entries(group: V1Group, path: str, found: Found, kinds: List[str]) -> None:
    """Add the entries of each kind; every `where` (and so every error) starts with the file."""
    for kind in kinds:
        value, where, body = found[kind]
        isolation = _default_isolation(body)
        where = "{}: {}".format(path, where)
        for i, entry in enumerate(_list(value, where)):
            at = "{}[{}]".format(where, i)
            if kind == "Connectors":
                group.connectors.append(_connector(entry, at))
                note_arn(group, group.connectors[-1].arn)
            elif kind == "Functions":
                group.functions.append(_function(entry, at, isolation))
                note_arn(group, group.functions[-1].arn)
            elif kind == "Resources":
                group.resources.append(_resource(entry, at))
            else:
                group.subscriptions.append(_subscription(entry, at))
