"""Field masks of the registry's Update methods (AIP-134), in one place."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from services.errors import invalid_field

M = TypeVar("M", bound=Message)

# Output-only fields of the registry's resources: named in a mask, they are ignored, not refused.
OUTPUT_ONLY = frozenset(
    {
        "name",
        "create_time",
        "update_time",
        "kind",
        "connection_state",
        "last_seen_time",
        "agent_version",
        "clock_offset_ms",
    }
)


def apply_mask(current: M, patch: M, mask: field_mask_pb2.FieldMask, updatable: set[str], field: str) -> M:
    """`current` with the masked fields taken from `patch`; empty or "*" means all updatable.

    Output-only fields in the mask are ignored; anything else that is not updatable is refused.
    """
    paths = list(mask.paths)
    if not paths or paths == ["*"]:
        paths = sorted(updatable)
    chosen = []
    for path in paths:
        top = path.split(".", 1)[0]
        if top in updatable:
            chosen.append(path)
        elif top in OUTPUT_ONLY:
            continue
        else:
            raise invalid_field("update_mask", f"{path!r} cannot be updated")
    fm = field_mask_pb2.FieldMask(paths=chosen)
    if not fm.IsValidForDescriptor(current.DESCRIPTOR):  # type: ignore[arg-type]
        raise invalid_field("update_mask", f"{', '.join(chosen)} does not name fields of {field}")
    merged = type(current)()
    merged.CopyFrom(current)
    fm.MergeMessage(patch, merged, replace_message_field=True, replace_repeated_field=True)
    return merged


def masked_fields(mask: field_mask_pb2.FieldMask) -> set[str] | None:
    """The top-level fields the mask names; None when it means every field (empty or "*")."""
    paths = list(mask.paths)
    return None if not paths or paths == ["*"] else {p.split(".")[0] for p in paths}
