"""manifests/kubernetes: every resource, base and overlay, validates offline against the schemas of
a current Kubernetes release (kubernetes-validate, strict: unknown fields are errors).

No kubectl or kustomize here, so `render` below builds what `kubectl apply -k` would send, for
what these kustomizations use and nothing more: `resources` (files and directories), `namespace`
(set on namespaced resources), `labels` (metadata labels), and strategic-merge `patches` matched by
kind and name, where maps merge key by key and anything else replaces (the patches here change
maps and scalars only; a patch that would touch a list is refused, not guessed at).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from connector.tools.deploy import outer_memory_kb
from connector.params import parse_parameters
from tests.service_process import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = ROOT / "manifests" / "kubernetes"
CLUSTER_SCOPED = {"Namespace", "RuntimeClass"}
KUSTOMIZE_KEYS = {"apiVersion", "kind", "namespace", "resources", "labels", "patches"}


def _merge_patch(target: Dict[str, Any], patch: Dict[str, Any], where: str = "") -> Dict[str, Any]:
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_patch(out[key], value, where + "." + key)
        elif isinstance(value, list) or isinstance(out.get(key), list):
            raise AssertionError("patch touches the list {}{}: this renderer does not merge lists"
                                 .format(where, "." + key))
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(directory: Path) -> List[Dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= KUSTOMIZE_KEYS, set(kustomization) - KUSTOMIZE_KEYS
    docs: List[Dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, patch_entry
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        matches = [i for i, d in enumerate(docs) if d["kind"] == patch["kind"]
                   and d["metadata"]["name"] == patch["metadata"]["name"]]
        assert len(matches) == 1, "patch {} matches {} resources".format(patch_entry["path"], len(matches))
        docs[matches[0]] = _merge_patch(docs[matches[0]], patch)
    for doc in docs:
        if "namespace" in kustomization and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = kustomization["namespace"]
        if doc["kind"] == "Namespace" and "namespace" in kustomization:
            doc["metadata"]["name"] = kustomization["namespace"]
        for label in kustomization.get("labels", []):
            assert set(label) == {"pairs"}, label  # metadata labels only, as kustomize's default
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    return docs


def by_kind(docs: List[Dict[str, Any]], kind: str) -> Dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def params_of(docs: List[Dict[str, Any]]):
    return parse_parameters(yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["params.yaml"]))


VERSION = kubernetes_validate.latest_version()
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "jetson-gpu"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_every_rendered_resource_validates(directory):
    docs = render(directory)
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "DaemonSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_catches_mistakes():
    daemonset = by_kind(render(K8S / "base"), "DaemonSet")
    bad = copy.deepcopy(daemonset)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["hots"] = "127.0.0.1"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)
    bad = copy.deepcopy(daemonset)
    bad["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_daemonset_serves_on_the_node_loopback_as_non_root():
    docs = render(K8S / "base")
    pod = by_kind(docs, "DaemonSet")["spec"]["template"]
    spec, [container] = pod["spec"], pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["GG_DAEMON_PORT"])
    assert spec["hostNetwork"] is True and spec["hostPID"] is True
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
        get = container[probe]["httpGet"]
        assert (get["host"], get["path"], get["port"]) == ("127.0.0.1", path, port), probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "add" not in container["securityContext"]["capabilities"]
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    arches = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert {"amd64", "arm64", "arm"} == set(next(e for e in arches if e["key"] == "kubernetes.io/arch")["values"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert env["GG_ML_IPC_FILE"].startswith("/run/gg-ml/") and "/run/gg-ml" in mounts
    assert mounts["/models/site"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/run/gg-ml"]["name"]]["hostPath"]["path"] == "/run/gg-ml"


def test_memory_follows_the_memory_parameter():
    docs = render(K8S / "base")
    [container] = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    params = params_of(docs)
    # The same file as examples/params.yaml, which the image serves with nothing mounted.
    assert yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["params.yaml"]) == \
        yaml.safe_load((ROOT / "examples" / "params.yaml").read_text())
    assert container["resources"]["limits"]["memory"] == "{}Ki".format(outer_memory_kb(params.memory_limit_kb))
    request = int(container["resources"]["requests"]["memory"][:-2])
    assert request == params.memory_limit_kb + (outer_memory_kb(params.memory_limit_kb) - 2 * params.memory_limit_kb)


def test_jetson_overlay_uses_the_nvidia_runtime_and_the_gpu():
    docs = render(K8S / "overlays" / "jetson-gpu")
    spec = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia" == by_kind(docs, "RuntimeClass")["handler"]
    assert spec["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    assert params_of(docs).gpu is True and params_of(render(K8S / "base")).gpu is False
    # Everything else is the base's.
    base = by_kind(render(K8S / "base"), "DaemonSet")["spec"]["template"]["spec"]
    assert {k: v for k, v in spec.items() if k not in ("runtimeClassName", "nodeSelector")} == base


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "r.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: y}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: [1]\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [r.yaml]\npatches: [{path: p.yaml}]\n")
    with pytest.raises(AssertionError, match="list"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [r.yaml]\nreplicas: []\n")
    with pytest.raises(AssertionError):
        render(tmp_path)
