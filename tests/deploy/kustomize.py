"""A renderer for the subset of kustomize that deploy/k8s uses, so the manifests are proven here without
kubectl (docs/operations.md, "How the manifests are proven").

Supported kustomization fields: resources (files and directories), namespace, labels (pairs, added to
metadata.labels), configMapGenerator (literals; behavior create or merge; a content-hash name suffix
with every reference in pod specs rewritten), patches (strategic-merge files, the target named by the
patch's kind and name) and images (newName, newTag). Any other field fails the render, so a manifest can
never use a feature this renderer would silently ignore.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

Obj = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "patches", "images"}
# Kinds without a namespace among those the manifests use.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
GENERATED = "kustomize.emma/generated"  # a marker on generated ConfigMaps until the hash suffix is added


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not support, or is inconsistent."""


def load_documents(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[Obj]:
    """Every object of the kustomization in `directory`, as `kubectl kustomize` would print them."""
    objects = _build(directory)
    _add_hash_suffixes(objects)
    return objects


def _build(directory: Path) -> list[Obj]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: unsupported field(s) {', '.join(sorted(unknown))}")
    objects: list[Obj] = []
    for item in spec.get("resources", []):
        target = (directory / item).resolve()
        objects.extend(_build(target) if target.is_dir() else load_documents(target))
    for generator in spec.get("configMapGenerator", []):
        _generate(objects, generator, path)
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{path}: only patches with a path are supported, got {patch}")
        for doc in load_documents(directory / patch["path"]):
            _patch(objects, doc, path)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for entry in spec.get("labels", []):
        if set(entry) - {"pairs"}:
            raise KustomizeError(f"{path}: labels support only pairs (metadata.labels), got {entry}")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for image in spec.get("images", []):
        _set_image(objects, image)
    return objects


def _generate(objects: list[Obj], generator: Obj, path: Path) -> None:
    if set(generator) - {"name", "literals", "behavior"}:
        raise KustomizeError(f"{path}: configMapGenerator supports name, literals and behavior only")
    data = dict(literal.split("=", 1) for literal in generator.get("literals", []))
    behavior = generator.get("behavior", "create")
    existing = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == generator["name"]]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{path}: ConfigMap {generator['name']} exists already (use behavior: merge)")
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"], "annotations": {GENERATED: "true"}},
                "data": data,
            }
        )
    elif behavior == "merge":
        if not existing:
            raise KustomizeError(f"{path}: no ConfigMap {generator['name']} to merge into")
        existing[0]["data"].update(data)
    else:
        raise KustomizeError(f"{path}: configMapGenerator behavior {behavior!r} is not supported")


def _patch(objects: list[Obj], patch: Obj, path: Path) -> None:
    name = patch.get("metadata", {}).get("name")
    targets = [o for o in objects if o["kind"] == patch.get("kind") and o["metadata"]["name"] == name]
    if len(targets) != 1:
        raise KustomizeError(f"{path}: patch of {patch.get('kind')}/{name} matches {len(targets)} objects")
    merged = strategic_merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def strategic_merge(base: Any, patch: Any) -> Any:
    """Maps merge key by key; lists of maps that all have a `name` merge item by name (containers, env,
    ports, volumes); any other list or value is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out_list = copy.deepcopy(base)
        for item in patch:
            index = next((i for i, b in enumerate(out_list) if b["name"] == item["name"]), None)
            if index is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[index] = strategic_merge(out_list[index], item)
        return out_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def pod_specs(obj: Obj) -> Iterator[Obj]:
    if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        yield obj["spec"]["template"]["spec"]


def containers(obj: Obj) -> Iterator[Obj]:
    for spec in pod_specs(obj):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def _set_image(objects: list[Obj], image: Obj) -> None:
    for obj in objects:
        for container in containers(obj):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def _add_hash_suffixes(objects: list[Obj]) -> None:
    """Generated ConfigMaps get a name suffix from their content (so a changed config rolls the pods), and
    every reference to them follows. The hash is this renderer's own, not byte-identical to kustomize's."""
    renamed: dict[str, str] = {}
    for obj in objects:
        annotations = obj["metadata"].get("annotations", {})
        if obj["kind"] == "ConfigMap" and annotations.pop(GENERATED, None):
            if not annotations:
                del obj["metadata"]["annotations"]
            digest = hashlib.sha256(json.dumps(obj["data"], sort_keys=True).encode()).hexdigest()[:10]
            new = f"{obj['metadata']['name']}-{digest}"
            renamed[obj["metadata"]["name"]] = new
            obj["metadata"]["name"] = new
    for obj in objects:
        for spec in pod_specs(obj):
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                for source in container.get("envFrom", []):
                    ref = source.get("configMapRef")
                    if ref and ref["name"] in renamed:
                        ref["name"] = renamed[ref["name"]]
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("configMapKeyRef")
                    if ref and ref["name"] in renamed:
                        ref["name"] = renamed[ref["name"]]
            for volume in spec.get("volumes", []):
                ref = volume.get("configMap")
                if ref and ref["name"] in renamed:
                    ref["name"] = renamed[ref["name"]]
