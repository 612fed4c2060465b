"""The pods' CPU resources on the bench machine, set the way the kubelet sets them.

A Deployment's `requests.cpu` becomes the weight its container gets when the CPU is
contended (cgroup v1 `cpu.shares` = millicores x 1024 / 1000; cgroup v2 `cpu.weight` by
the kubelet's conversion of those shares), and its `limits.cpu` a CFS quota over a
100 ms period (v1 `cpu.cfs_quota_us`, v2 `cpu.max`). The values are read from the
manifests in k8s/base, so the bench cannot model other resources than those deployed.
Kubernetes' source of these formulas: pkg/kubelet/cm/helpers_linux.go
(MilliCPUToShares, MilliCPUToQuota) and the runc/kubelet shares-to-weight conversion
(https://github.com/kubernetes/kubernetes/blob/master/pkg/kubelet/cm/helpers_linux.go).

One run gets a cgroup of its own (the "node", weighted like the kubelet's `kubepods`
group: the machine's CPUs) with a child per pod and one for the harness: the bench
itself, the load generator, PostgreSQL and the SMTP sink, which in production run on
other machines. The harness is weighted like a whole node, so it is served before the
pods under contention; the pods share the rest by their requests, each capped by its
limit. Without a writable cgroup the pods get `nice` levels in their requests' ratio
instead (no limits then); the `model` attribute says which was used.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = {
    "web": ROOT / "k8s" / "base" / "deployment.yaml",
    "worker": ROOT / "k8s" / "base" / "worker-deployment.yaml",
}
PERIOD_US = 100_000  # the kubelet's CFS period
HARNESS = "harness"


@dataclass(frozen=True)
class PodCPU:
    request_m: int
    limit_m: int | None

    def __str__(self) -> str:
        limit = f"{self.limit_m}m" if self.limit_m else "none"
        return f"request {self.request_m}m, limit {limit}"


def millicores(quantity: str | int | float) -> int:
    """A Kubernetes CPU quantity ("500m", "1", "1.5") in millicores."""
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def manifest_cpu(path: Path) -> PodCPU:
    """The CPU resources of a Deployment's (only) container."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    limit = resources.get("limits", {}).get("cpu")
    return PodCPU(millicores(resources["requests"]["cpu"]), millicores(limit) if limit else None)


def deployed_pods() -> dict[str, PodCPU]:
    return {name: manifest_cpu(path) for name, path in MANIFESTS.items()}


def shares(request_m: int) -> int:
    return max(2, request_m * 1024 // 1000)


def weight(cpu_shares: int) -> int:
    return 1 + ((cpu_shares - 2) * 9999) // 262142


def quota_us(limit_m: int) -> int:
    return max(1000, limit_m * PERIOD_US // 1000)


def _mounts() -> list[tuple[str, str, set[str]]]:
    rows = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, path, fstype, options, *_ = line.split()
        rows.append((fstype, path, set(options.split(","))))
    return rows


def _own_cgroup(v2: bool) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (v2 and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
            return path
    return "/"


class Node:
    """A cgroup per pod plus one for the harness, removed again on exit.

    Enter it before starting PostgreSQL and the sink: the bench process moves into the
    harness group and everything it starts inherits that; start a pod's process with
    `preexec_fn=node.enter(name)`.
    """

    def __init__(self, pods: dict[str, PodCPU]) -> None:
        self.pods = pods
        self.cpus = len(os.sched_getaffinity(0))
        self.model = "nice"
        self.base: Path | None = None  # the node's cgroup directory
        self.home: Path | None = None  # where the bench process was, to go back
        self.enabled: Path | None = None  # a v2 group whose cpu controller we enabled

    def __enter__(self) -> Node:
        for model, setup in (("cgroup v1", self._v1), ("cgroup v2", self._v2)):
            try:
                if setup():
                    self._join(HARNESS)
                    self.model = model
                    break
            except OSError:
                self._remove()
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def describe(self, name: str) -> str:
        pod = self.pods[name]
        if self.model == "nice":
            return f"{self.model} {self._nice(name)} ({pod})"
        return f"{self.model} ({pod})"

    def enter(self, name: str) -> Callable[[], None]:
        """A preexec_fn putting the new process into the pod `name`."""
        if self.base is None:
            level = self._nice(name)

            def lower() -> None:
                os.nice(level)

            return lower
        return lambda: self._join(name)

    # -- setting up -------------------------------------------------------------------
    def _groups(self) -> dict[str, tuple[int, int | None]]:
        """Each group's shares and quota: the pods' from their resources, the harness
        weighted like the whole node and unlimited."""
        groups = {
            n: (shares(p.request_m), p.limit_m and quota_us(p.limit_m))
            for n, p in self.pods.items()
        }
        groups[HARNESS] = (shares(self.cpus * 1000), None)
        return groups

    def _v1(self) -> bool:
        mount = next((p for t, p, o in _mounts() if t == "cgroup" and "cpu" in o), None)
        if mount is None or not os.access(mount, os.W_OK):
            return False
        self.home = Path(mount) / _own_cgroup(v2=False).lstrip("/")
        self.base = Path(mount) / f"newsletter-bench-{os.getpid()}"
        self.base.mkdir()
        (self.base / "cpu.shares").write_text(str(shares(self.cpus * 1000)))
        for name, (cpu_shares, quota) in self._groups().items():
            group = self.base / name
            group.mkdir()
            (group / "cpu.shares").write_text(str(cpu_shares))
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota or -1))
        return True

    def _v2(self) -> bool:
        mount = next((p for t, p, _ in _mounts() if t == "cgroup2"), None)
        if mount is None:
            return False
        root = Path(mount)
        if "cpu" not in (root / "cgroup.controllers").read_text().split():
            return False
        self.home = root / _own_cgroup(v2=True).lstrip("/")
        # At the hierarchy's root: a group holding processes (the bench's own) may not
        # hand controllers to children.
        if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
            (root / "cgroup.subtree_control").write_text("+cpu")
            self.enabled = root  # handed back on exit
        self.base = root / f"newsletter-bench-{os.getpid()}"
        self.base.mkdir()
        (self.base / "cpu.weight").write_text(str(weight(shares(self.cpus * 1000))))
        (self.base / "cgroup.subtree_control").write_text("+cpu")
        for name, (cpu_shares, quota) in self._groups().items():
            group = self.base / name
            group.mkdir()
            (group / "cpu.weight").write_text(str(weight(cpu_shares)))
            (group / "cpu.max").write_text(f"{quota or 'max'} {PERIOD_US}")
        return True

    def _join(self, name: str) -> None:
        assert self.base is not None
        (self.base / name / "cgroup.procs").write_text(str(os.getpid()))

    def _nice(self, name: str) -> int:
        """Nice levels in the ratio of the requests: each level weighs about 1.25x less
        (the kernel's sched_prio_to_weight); the largest request keeps 0."""
        top = max(p.request_m for p in self.pods.values())
        return min(19, round(math.log(top / self.pods[name].request_m, 1.25)))

    # -- cleaning up ------------------------------------------------------------------
    def _remove(self) -> None:
        """Move every process left in the node's groups back home, then remove them."""
        if self.base is not None and self.base.exists():
            home = self.home if self.home and self.home.exists() else self.base.parent
            groups = [g for g in self.base.iterdir() if g.is_dir()]
            for group in [*groups, self.base]:
                for _ in range(50):
                    for pid in (group / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):  # gone meanwhile
                            (home / "cgroup.procs").write_text(pid)
                    try:
                        group.rmdir()
                        break
                    except OSError:
                        time.sleep(0.1)  # a process still exiting
                else:
                    print(f"bench/pods.py: could not remove {group}", file=sys.stderr)
        self.base = None
        if self.enabled is not None:
            with contextlib.suppress(OSError):  # other groups use it meanwhile
                (self.enabled / "cgroup.subtree_control").write_text("-cpu")
            self.enabled = None
