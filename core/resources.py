"""Config documents in Kubernetes resource form, read from YAML with precise error reports.

Every meshfed config kind (ServiceEntry, WorkloadEntry, and Pilot's routing kinds) is a YAML
document with ``apiVersion``, ``kind``, ``metadata`` and ``spec``, so one file works with both
``kubectl apply`` and the file store. This module loads such documents and offers
:class:`FieldReader`, which turns a raw mapping into typed values while collecting errors that name
the file, the object, the field path and what was expected. Nothing here raises on the first bad
field: a user fixing a file sees every problem at once.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import yaml

from meshfed.core import validators
from meshfed.core.files import FileRefused, decode_config, read_config_file
from meshfed.core.validators import Invalid, clip, show

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")

# What alias expansion may add to one document, in nodes, beyond the nodes written: real
# configs use a few anchors for shared labels; a "billion laughs" asks for 10^9 and is
# refused before it is built.
MAX_ALIAS_NODES = 100_000
MAX_DEPTH = 100  # nesting levels; Kubernetes resources need a few dozen at most

# libyaml's loader parses ~8x faster (a 1,000-service file: 0.56 s instead of 4-5 s); the pure
# Python one is the fallback where PyYAML was built without libyaml.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _line(text: str, limit: int = validators.MAX_SHOWN) -> str:
    text = clip(str(text), limit)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@attrs.frozen(slots=True)
class ConfigError:
    """One problem in one config document."""

    # Clipped and made printable here, the one place every error passes: no error repeats
    # more than a few hundred characters of an input value, however a parser quoted it, and
    # each stays one line (a key may hold a line break).
    file: str = attrs.field(converter=lambda f: _line(f, 4096))  # a path, not an input value
    # "Kind namespace/name", or "document N" when the document has no identity
    obj: str = attrs.field(converter=_line)
    field: str = attrs.field(converter=_line)
    message: str = attrs.field(converter=lambda m: _line(m, 2 * validators.MAX_SHOWN + 200))

    def __str__(self) -> str:
        where = f"{self.file}: {self.obj}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigErrors(Exception):
    """Raised by loaders with every error found in a file or a set of files."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@attrs.frozen(slots=True)
class Document:
    """One YAML document in resource form, before its spec is interpreted."""

    file: str
    index: int
    api_version: str
    kind: str
    name: str
    namespace: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    # metadata.annotations as written (values unchecked: a kind that reads one validates it,
    # e.g. an Ingress's kubernetes.io/ingress.class; other annotations are never an error).
    annotations: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def load_documents(
    path: Path, default_namespace: str = "default"
) -> tuple[list[Document], list[ConfigError]]:
    """Read every resource document of a YAML file; return the documents and the errors.

    The file is read by :func:`meshfed.core.files.read_config_file` (regular files only, size
    limit) and decoded by :func:`load_bytes`; like any file read it blocks, so code on an
    event loop calls this in a worker thread.
    """
    file = str(path)
    try:
        data = read_config_file(path)
    except FileRefused as exc:
        return [], [ConfigError(file, "file", "", exc.reason)]
    return load_bytes(file, data, default_namespace)


def load_bytes(
    file: str, data: bytes | str, default_namespace: str = "default"
) -> tuple[list[Document], list[ConfigError]]:
    """The resource documents of a file's content (``file`` only names it in errors)."""
    raw_docs, errors = parse_yaml(file, data)
    docs, doc_errors = parse_documents(file, raw_docs, default_namespace)
    return docs, errors + doc_errors


def parse_yaml(file: str, data: bytes | str) -> tuple[list[Any], list[ConfigError]]:
    """The documents of a YAML stream, as plain data; never raises on bad input.

    A document that cannot be built (a duplicate key, an alias expansion over
    :data:`MAX_ALIAS_NODES`, nesting deeper than :data:`MAX_DEPTH`, a scalar Python cannot
    represent) is None in the list, with its error; the documents around it are kept. A syntax
    error ends the stream there: the documents before it are kept.
    """
    if isinstance(data, bytes):
        try:
            text = decode_config(file, data)  # the one UTF-8 check, with the byte position
        except FileRefused as exc:
            return [], [ConfigError(file, "file", "", exc.reason)]
    else:
        text = data
    text = text.removeprefix("\ufeff")
    docs: list[Any] = []
    errors: list[ConfigError] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            problem = _too_big(node)
            if problem:
                errors.append(_at(file, node.start_mark, problem))
                docs.append(None)
                continue
            try:
                docs.append(loader.construct_document(node))
            except yaml.MarkedYAMLError as exc:
                mark = exc.problem_mark or node.start_mark
                errors.append(_at(file, mark, f"invalid YAML: {exc.problem or exc}"))
                docs.append(None)
            except RecursionError:
                errors.append(_at(file, node.start_mark, "invalid YAML: nested too deeply"))
                docs.append(None)
            finally:
                _reset(loader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        errors.append(
            ConfigError(
                file,
                f"line {line}",
                "",
                f"invalid YAML: character {_codepoint(exc.character)} is not allowed "
                f"(at character {exc.position})",
            )
        )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(_at(file, mark, f"invalid YAML: {problem}"))
    except RecursionError:  # the pure-Python parser, on very deep nesting
        errors.append(_at(file, None, f"invalid YAML: nested deeper than {MAX_DEPTH} levels"))
    finally:
        loader.dispose()
    return docs, errors


def _codepoint(character: int | str) -> str:
    return f"U+{character if isinstance(character, int) else ord(character):04X}"


def _at(file: str, mark: Any, message: str) -> ConfigError:
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "document"
    return ConfigError(file, where, "", message)


def _reset(loader: Any) -> None:
    # construct_document clears these only when it succeeds
    loader.constructed_objects = {}
    loader.recursive_objects = {}
    loader.state_generators = []
    loader.deep_construct = False


def _too_big(root: yaml.Node) -> str:
    """Why a composed document must not be built, or "".

    The node graph keeps an alias as a second reference to its anchor's node, so it is as
    small as the text; what it would expand to (and what any later walk over the data would
    visit) is counted here, once per distinct node, before anything is built.
    """
    expanded: dict[int, int] = {}  # node id -> nodes in its expansion
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if expanded[key] - len(expanded) > MAX_ALIAS_NODES:
                return (
                    f"invalid YAML: aliases expand to more than {MAX_ALIAS_NODES} extra nodes "
                    "(refused, as an alias bomb)"
                )
            if height[key] > MAX_DEPTH:
                return f"invalid YAML: nested deeper than {MAX_DEPTH} levels"
            continue
        if key in expanded:
            continue
        if key in on_path:
            return "invalid YAML: an alias refers to a node that contains it (recursive alias)"
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in expanded)
    return ""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _Loader(SAFE_LOADER):  # type: ignore[misc,valid-type]
    """The safe loader, refusing duplicate mapping keys (YAML forbids them; PyYAML would keep
    the last silently, so a user's first value would never apply)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            # e.g. a timestamp 2024-13-45, an integer of 5,000 digits: named where it is
            if isinstance(exc, ValueError | OverflowError):
                detail = str(exc)
            else:
                detail = f"not a valid {str(node.tag).rsplit(':', 1)[-1]}"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {clip(detail)}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {show(key)} (first at line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def parse_documents(
    file: str, raw_docs: list[Any], default_namespace: str = "default"
) -> tuple[list[Document], list[ConfigError]]:
    docs: list[Document] = []
    errors: list[ConfigError] = []
    for index, raw in enumerate(raw_docs):
        if raw is None:
            continue
        obj = f"document {index + 1}"
        if not isinstance(raw, Mapping):
            errors.append(ConfigError(file, obj, "", "expected a mapping with apiVersion and kind"))
            continue
        reader = FieldReader(file, obj, raw)
        kind = reader.str("kind", required=True)
        meta = reader.reader("metadata", required=True)
        name = meta.checked("name", validators.resource_name, required=True) if meta else ""
        namespace = (meta.checked("namespace", validators.dns1123_label) if meta else "") or (
            default_namespace
        )
        labels = meta.labels("labels") if meta else {}
        if name and kind:
            reader.obj = meta.obj = f"{kind} {namespace}/{name}"  # type: ignore[union-attr]
        api_version = reader.str("apiVersion", required=True)
        spec = raw.get("spec", {})
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            reader.error("spec", f"expected a mapping, got {_describe(spec)}")
            spec = {}
        annotations = meta.data.get("annotations") if meta else None
        errors.extend(reader.errors)
        if not reader.errors:
            docs.append(
                Document(
                    file,
                    index,
                    api_version,
                    kind,
                    name,
                    namespace,
                    labels,
                    spec,
                    annotations if isinstance(annotations, Mapping) else {},
                )
            )
    return docs, errors


class FieldReader:
    """Typed access to a mapping's fields, collecting errors with their full field path.

    Scalars are read strictly: an integer is an int or a string of ASCII digits (never a bool,
    a float or ``"²"``); a bool is a YAML boolean (``true``/``false``, and YAML 1.1's
    ``yes``/``no``/``on``/``off``, which the loader already reads as booleans, as kubectl's
    does), never a string; numbers are finite. Values with a shape of their own (hosts, names,
    addresses, durations, regexes) are read with :meth:`checked` and a check from
    :mod:`meshfed.core.validators`.
    """

    def __init__(
        self,
        file: str,
        obj: str,
        data: Mapping[str, Any],
        path: str = "",
        errors: list[ConfigError] | None = None,
    ) -> None:
        self.file = file
        self.obj = obj
        self.data = data
        self.path = path
        self.errors: list[ConfigError] = [] if errors is None else errors

    def field_path(self, name: str | int) -> str:
        if isinstance(name, int):
            return f"{self.path}[{name}]"
        if not name:
            return self.path
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | int, message: str) -> None:
        self.errors.append(ConfigError(self.file, self.obj, self.field_path(name), message))

    def _get(self, name: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            self.error(name, "is required")
        return value

    def str(self, name: str, required: bool = False, default: str = "") -> str:
        value = self._get(name, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(name, f"expected a string, got {_describe(value)}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.error(name, f"expected a string, got {value!r}")
            return default
        return str(value)

    def int(
        self,
        name: str,
        required: bool = False,
        default: int = 0,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._get(name, required)
        if value is None:
            return default
        try:
            number = validators.ascii_int(value)
        except Invalid as exc:
            self.error(name, str(exc))
            return default
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            low = "" if minimum is None else minimum
            high = "" if maximum is None else maximum
            self.error(name, f"expected an integer in {low}..{high}, got {show(value)}")
            return default
        return number

    def number(
        self, name: str, default: float = 0.0, minimum: float = 0.0, maximum: float = math.inf
    ) -> float:
        """A finite int or float (not a bool, not a string) within ``minimum``..``maximum``."""
        value = self._get(name, False)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not minimum <= value <= maximum
        ):
            high = "" if maximum == math.inf else f"{maximum:g}"
            self.error(name, f"expected a number {minimum:g}..{high}, got {_describe(value)}")
            return default
        return float(value)

    def port(self, name: str, required: bool = False) -> int:
        return self.int(name, required=required, minimum=1, maximum=65535)

    def bool(self, name: str, default: bool = False) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(name, f"expected true or false, got {_describe(value)}")
            return default
        return value

    def enum(self, name: str, enum_type: type[E], default: E, aliases: Mapping[str, E] = {}) -> E:
        value = self._get(name, False)
        if value is None:
            return default
        key = value.strip().upper() if isinstance(value, str) else None
        if key is not None and key in aliases:
            return aliases[key]
        try:
            if key is None:
                raise ValueError(key)
            return enum_type(key)
        except ValueError:
            allowed = sorted({m.value for m in enum_type} | set(aliases))
            self.error(name, f"expected one of {', '.join(allowed)}, got {_describe(value)}")
            return default

    def checked(
        self,
        name: str,
        check: Callable[[Any], T],
        required: bool = False,
        default: Any = "",
    ) -> Any:
        """A string field passed through ``check`` (a :mod:`~meshfed.core.validators`
        function); its :class:`~meshfed.core.validators.Invalid` becomes this field's error."""
        value = self._get(name, required)
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(name, f"expected a string, got {_describe(value)}")
            return default
        try:
            return check(value)
        except Invalid as exc:
            self.error(name, str(exc))
            return default

    def checked_list(self, name: str, check: Callable[[Any], T], required: bool = False) -> list[T]:
        """:meth:`str_list` with each entry passed through ``check``."""
        out = []
        self.str_list(name, required=required)  # reports what is not a non-empty string
        value = self.data.get(name)
        for index, item in enumerate(value if isinstance(value, list) else ()):
            if not isinstance(item, str) or not item:
                continue
            try:
                out.append(check(item))
            except Invalid as exc:
                self.error(f"{name}[{index}]", str(exc))
        return out

    def str_list(self, name: str, required: bool = False) -> list[str]:
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(name, f"expected a list of strings, got {_describe(value)}")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.error(f"{name}[{i}]", f"expected a non-empty string, got {_describe(item)}")
            else:
                out.append(item)
        if required and not value:
            self.error(name, "expected at least one entry")
        return out

    def str_map(self, name: str) -> dict[str, str]:
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(name, f"expected a mapping of strings, got {_describe(value)}")
            return {}
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k or "\0" in k:
                self.error(name, f"expected string keys, got {_describe(k)}")
            elif isinstance(v, bool) or not isinstance(v, str | int | float):
                self.error(f"{name}.{k}", f"expected a string, got {_describe(v)}")
            elif isinstance(v, float) and not math.isfinite(v):
                self.error(f"{name}.{k}", f"expected a string, got {v!r}")
            else:
                out[k] = str(v)
        return out

    def labels(self, name: str) -> dict[str, str]:
        """:meth:`str_map` whose keys and values are Kubernetes label keys and values."""
        out = {}
        for key, value in self.str_map(name).items():
            try:
                out[validators.label_key(key)] = validators.label_value(value)
            except Invalid as exc:
                self.error(f"{name}.{key}", str(exc))
        return out

    def reader(self, name: str, required: bool = False) -> FieldReader | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.error(name, f"expected a mapping, got {_describe(value)}")
            return None
        return FieldReader(self.file, self.obj, value, self.field_path(name), self.errors)

    def readers(self, name: str, required: bool = False) -> Iterator[FieldReader]:
        value = self._get(name, required)
        if value is None:
            return
        if not isinstance(value, list):
            self.error(name, f"expected a list, got {_describe(value)}")
            return
        if required and not value:
            self.error(name, "expected at least one entry")
        for i, item in enumerate(value):
            path = f"{self.field_path(name)}[{i}]"
            if not isinstance(item, Mapping):
                self.errors.append(
                    ConfigError(
                        self.file, self.obj, path, f"expected a mapping, got {_describe(item)}"
                    )
                )
                continue
            yield FieldReader(self.file, self.obj, item, path, self.errors)

    def unknown_fields(self, known: set[str]) -> None:
        """Report fields this kind does not have (typos are the commonest config mistake)."""
        for key in self.data:
            if key not in known:
                self.error(
                    show(key) if not isinstance(key, str) else key,
                    f"unknown field (expected one of {', '.join(sorted(known))})",
                )


def _describe(value: Any) -> str:
    """A value as error messages quote it: its kind for a structure, else a bounded repr."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return show(value)


describe = _describe
