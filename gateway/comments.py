"""The contracts' comments, by full name, for the OpenAPI document and the docs page.

Oneofs are named like fields (`emma.command.v1.FleetDispatch.targets`).

The generated _pb2 modules carry descriptors without source info; `make gen` also writes
gen/emma/descriptors.binpb with it, and this module reads the leading comment of every service,
method, message, field, enum and enum value from there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from importlib import resources

from google.protobuf import descriptor_pb2

DESCRIPTOR_SET = "descriptors.binpb"

# FileDescriptorProto / DescriptorProto field numbers used in source-info paths.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM, _ONEOF, _METHOD, _VALUE = 2, 3, 4, 8, 2, 2


def _clean(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines())


def _names(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """(source path, full name) of everything in one file that can carry a comment."""
    pkg = file.package

    def messages(
        ms: Iterable[descriptor_pb2.DescriptorProto], path: tuple[int, ...], prefix: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        for i, m in enumerate(ms):
            here, name = (*path, i), f"{prefix}.{m.name}"
            yield here, name
            for j, f in enumerate(m.field):
                yield (*here, _FIELD, j), f"{name}.{f.name}"
            for j, o in enumerate(m.oneof_decl):
                yield (*here, _ONEOF, j), f"{name}.{o.name}"
            yield from messages(m.nested_type, (*here, _NESTED), name)
            yield from enums(m.enum_type, (*here, _NESTED_ENUM), name)

    def enums(
        es: Iterable[descriptor_pb2.EnumDescriptorProto], path: tuple[int, ...], prefix: str
    ) -> Iterator[tuple[tuple[int, ...], str]]:
        for i, e in enumerate(es):
            here, name = (*path, i), f"{prefix}.{e.name}"
            yield here, name
            for j, v in enumerate(e.value):
                yield (*here, _VALUE, j), f"{name}.{v.name}"

    yield from messages(file.message_type, (_MESSAGE,), pkg)
    yield from enums(file.enum_type, (_ENUM,), pkg)
    for i, s in enumerate(file.service):
        yield (_SERVICE, i), f"{pkg}.{s.name}"
        for j, m in enumerate(s.method):
            yield (_SERVICE, i, _METHOD, j), f"{pkg}.{s.name}.{m.name}"


@functools.cache
def comments() -> dict[str, str]:
    """Full name -> leading comment; empty when the descriptor set is missing (then no descriptions)."""
    try:
        data = resources.files("emma").joinpath(DESCRIPTOR_SET).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        return {}
    out: dict[str, str] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        by_path = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for path, name in _names(file):
            text = by_path.get(path, "")
            if text.strip():
                out[name] = _clean(text)
    return out


def comment(full_name: str) -> str:
    return comments().get(full_name, "")
