"""A small kustomize renderer for the features `k8s/` uses, so tests need no binary.

Supported: `resources` (files and directories holding a kustomization.yaml),
`namespace`, `labels` (metadata labels only), `images`, and `patches` (strategic merge
for maps, or JSON 6902 operations with a kind/name target). Anything else in a
kustomization is refused, so a manifest change that needs more is noticed here
instead of being rendered wrongly. When `kubectl` is installed, the tests also
compare this output with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}

Resource = dict[str, Any]


class KustomizeError(Exception):
    pass


def load_documents(path: Path) -> list[Resource]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def render(directory: Path) -> list[Resource]:
    """The resources `kubectl kustomize directory` would print (order aside)."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += render(path) if path.is_dir() else load_documents(path)
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError(f"{directory}: labels into selectors/templates not supported")
        for resource in resources:
            resource.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for patch in kustomization.get("patches", []):
        _patch(directory, resources, patch)
    for image in kustomization.get("images", []):
        for container in _containers(resources):
            _set_image(container, image)
    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    return resources


def _patch(directory: Path, resources: list[Resource], patch: dict[str, Any]) -> None:
    if "path" in patch:
        body = load_documents(directory / patch["path"])[0]
        matches = [
            r
            for r in resources
            if r["kind"] == body["kind"] and r["metadata"]["name"] == body["metadata"]["name"]
        ]
        if len(matches) != 1:
            raise KustomizeError(f"patch {patch['path']} matches {len(matches)} resources")
        _merge(matches[0], body)
        return
    target = patch["target"]
    matches = [
        r
        for r in resources
        if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
    ]
    if len(matches) != 1:
        raise KustomizeError(f"patch target {target} matches {len(matches)} resources")
    for op in yaml.safe_load(patch["patch"]):
        _json6902(matches[0], op)


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, list):
            raise KustomizeError(f"strategic merge of the list {key!r} is not supported")
        else:
            into[key] = copy.deepcopy(value)


def _json6902(resource: Resource, op: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent: Any = resource
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
    if op["op"] in ("replace", "add"):
        if op["op"] == "replace" and (
            last not in parent if isinstance(parent, dict) else last >= len(parent)
        ):
            raise KustomizeError(f"replace of a missing path {op['path']}")
        parent[last] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del parent[last]
    else:
        raise KustomizeError(f"JSON patch op {op['op']!r} is not supported")


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, Job, CronJob), else None."""
    spec = resource.get("spec", {})
    if resource["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if resource["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec["template"]["spec"]
    return None


def _containers(resources: list[Resource]) -> list[dict[str, Any]]:
    found = []
    for resource in resources:
        spec = pod_spec(resource)
        if spec is not None:
            found += spec.get("containers", []) + spec.get("initContainers", [])
    return found


def _set_image(container: dict[str, Any], image: dict[str, Any]) -> None:
    name, _, _tag = container["image"].partition(":")
    if name != image["name"]:
        return
    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
