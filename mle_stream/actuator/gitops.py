"""A RoutingBackend that writes Gateway API HTTPRoute manifests into a Git repository (GitOps).

Argo CD or Flux deploys what is committed; this adapter only edits and commits (and pushes when
the repository has an `origin`), so Git, the registry and the cluster can agree.

The manifest (one per model, at `manifest_template`) is an HTTPRoute whose first rule lists one
backendRef per version; httproute.py reads and rewrites the weights (the same code patches a live
HTTPRoute in kubernetes_routing.py). Fields a human put in the manifest (hostnames, matches,
filters, other rules, extra backendRef fields) are kept, but YAML comments are not: PyYAML does
not round-trip them.

What counts as applied is what is committed, and pushed when there is an `origin`: reads use the
manifest at HEAD, and `last_applied` answers None while HEAD is not on origin, so the actuator
re-runs `set_weights`, which then only pushes. The manifest's annotations record the last applied
command: its id, reason and issued_at (httproute.py).

`repo_dir` must be the top level of its own repository (it is `git init`-ed on the first write
otherwise): a directory inside another checkout is never committed into that outer repository.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mle_stream.actuator.httproute import (
    API_VERSION,
    KIND,
    LAST_COMMAND_ANNOTATION,
    LAST_ISSUED_AT_ANNOTATION,
    LAST_REASON_ANNOTATION,
    VERSIONS_ANNOTATION,
    HTTPRouteWeights,
    applied_marker,
    command_annotations,
    is_object_name,
    template_fields,
)
from mle_stream.actuator.ports import check_weights, describe_weights
from mle_stream.core.commands import AppliedMarker
from mle_stream.errors import ActuationError

log = logging.getLogger(__name__)

__all__ = ["GitOpsRouting", "LAST_COMMAND_ANNOTATION", "LAST_ISSUED_AT_ANNOTATION", "LAST_REASON_ANNOTATION",
           "VERSIONS_ANNOTATION"]

_GIT_IDENTITY = ("-c", "user.name=mle-stream", "-c", "user.email=mle-stream@localhost", "-c", "commit.gpgsign=false")


class GitOpsRouting:
    """Route traffic by committing HTTPRoute manifests; see the module docstring for the rules.

    repo_dir: top level of the GitOps checkout. manifest_template: the manifest's path inside it,
    with `{model}`. service_template: the Kubernetes Service of one version, with `{version}`
    (and optionally `{model}`). namespace, gateway: written into a new manifest.
    timeout_s: how long one git command may take (a push to a slow remote included).
    """

    def __init__(
        self,
        repo_dir: Path,
        manifest_template: str = "routes/{model}.yaml",
        service_template: str = "{model}-v{version}",
        namespace: str = "default",
        gateway: str = "ml-gateway",
        *,
        timeout_s: float = 60.0,
    ) -> None:
        manifest_fields = template_fields(manifest_template)
        if manifest_fields != {"model"}:
            raise ValueError(f"manifest_template {manifest_template!r} must use {{model}} and no other field")
        self._routes = HTTPRouteWeights(service_template)
        if not namespace or not gateway:
            raise ValueError("namespace and gateway must be non-empty")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.repo_dir = Path(repo_dir).resolve()
        self.manifest_template = manifest_template
        self.service_template = service_template
        self.namespace = namespace
        self.gateway = gateway
        self.timeout_s = timeout_s

    # -- RoutingBackend ------------------------------------------------------------------------

    def get_weights(self, model: str) -> dict[str, int]:
        path = self.manifest_path(model)
        manifest = self._committed_manifest(model)
        if manifest is None:
            raise ActuationError(
                f"no committed route manifest for model {model!r} at {path} (repository {self.repo_dir}); "
                "create it with GitOpsRouting.init_route or commit one"
            )
        return self._routes.weights(model, manifest, self._where(model))

    def set_weights(self, model: str, weights: dict[str, int], *, command_id: str, reason: str,
                    issued_at: int = 0) -> str:
        weights = check_weights(model, weights)
        if not command_id:
            raise ActuationError(f"route of model {model!r}: set_weights needs a command id to record")
        self._ensure_repo()
        existing = self._committed_manifest(model)
        if existing is None:
            raise ActuationError(
                f"no committed route manifest for model {model!r} at {self.manifest_path(model)} "
                f"(repository {self.repo_dir}); create it with GitOpsRouting.init_route first"
            )
        manifest = self._render(model, weights, existing)
        annotations = manifest["metadata"]["annotations"]
        for name, value in command_annotations(command_id, reason, issued_at).items():
            if value is None:
                annotations.pop(name, None)
            else:
                annotations[name] = value
        message = f"route {model}: {describe_weights(weights)} (command {command_id})\n\n{reason}\n"
        return self._write_commit_push(model, manifest, message)

    def last_applied(self, model: str) -> AppliedMarker | None:
        manifest = self._committed_manifest(model)
        if manifest is None:
            return None
        marker = applied_marker(manifest, self._where(model))
        if marker is not None and self._has_origin() and self._unpushed():
            log.info("route of %s records command %s but HEAD is not on origin yet: not applied", model,
                     marker.command_id)
            return None
        return marker

    # -- beyond the port -----------------------------------------------------------------------

    def init_route(self, model: str, weights: dict[str, int]) -> str:
        """Create the model's manifest (or reset its weights) and commit it; returns the commit sha.

        A reset also clears the last command recorded with the route: the route no longer
        reflects it, so re-delivering that command must apply it again.
        """
        weights = check_weights(model, weights)
        self._ensure_repo()
        manifest = self._render(model, weights, self._committed_manifest(model))
        annotations = manifest["metadata"]["annotations"]
        for name in command_annotations("", "", 0):
            annotations.pop(name, None)
        message = f"init route {model}: {describe_weights(weights)}\n"
        return self._write_commit_push(model, manifest, message)

    def manifest_path(self, model: str) -> Path:
        """Where the model's manifest lives; refuses names that are not valid Kubernetes names."""
        # metadata.name of the HTTPRoute is the model name; this also keeps a model name from
        # walking out of the repository through the manifest path.
        if not is_object_name(model):
            raise ActuationError(
                f"model name {model!r} cannot name an HTTPRoute: use lower-case letters, digits, '-' and '.' "
                "(a DNS-1123 subdomain, at most 253 characters)"
            )
        path = (self.repo_dir / self.manifest_template.format(model=model)).resolve()
        if not path.is_relative_to(self.repo_dir):
            raise ActuationError(f"manifest path {path} for model {model!r} lies outside the repository {self.repo_dir}")
        return path

    def service_name(self, model: str, version: str) -> str:
        return self._routes.service_name(model, version)

    def version_of_service(self, model: str, service: str) -> str | None:
        """Reverse `service_template`: the version a Service name stands for, None if it does not match."""
        return self._routes.version_of_service(model, service)

    # -- manifest ------------------------------------------------------------------------------

    def _render(self, model: str, weights: dict[str, int], existing: dict[str, Any] | None) -> dict[str, Any]:
        """The manifest routing by `weights`, keeping whatever else `existing` says (a new one if None)."""
        manifest: dict[str, Any] = existing or {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": model,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "mle-stream"},
                "annotations": {},
            },
            "spec": {"parentRefs": [{"name": self.gateway}], "rules": [{"backendRefs": []}]},
        }
        return self._routes.with_weights(model, manifest, weights, self._where(model))

    def _where(self, model: str) -> str:
        return f"{self.manifest_path(model)} at HEAD"

    def _committed_manifest(self, model: str) -> dict[str, Any] | None:
        """The manifest as committed at HEAD, None when the repository or the file does not exist."""
        path = self.manifest_path(model)
        if not (self.repo_dir / ".git").exists():
            return None
        relative = path.relative_to(self.repo_dir).as_posix()
        found = self._git("rev-parse", "-q", "--verify", f"HEAD:{relative}", check=False)
        if found.returncode != 0:
            return None
        text = self._git("cat-file", "blob", found.stdout.strip()).stdout
        try:
            manifest = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ActuationError(f"{path} at HEAD is not valid YAML: {exc}") from exc
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        if not isinstance(manifest, dict) or kind != KIND:
            raise ActuationError(f"{path} at HEAD is not an HTTPRoute manifest (kind is {kind!r})")
        return manifest

    # -- git -----------------------------------------------------------------------------------

    def _write_commit_push(self, model: str, manifest: dict[str, Any], message: str) -> str:
        path = self.manifest_path(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False), encoding="utf-8")
        os.replace(tmp, path)  # never leave a half-written manifest for a concurrent reader
        relative = path.relative_to(self.repo_dir).as_posix()
        self._git("add", "--", relative)
        # The index, not the file text, decides: a manifest written before a crash but never
        # committed is committed now, and one that matches HEAD makes no empty commit.
        if self._git("diff", "--cached", "--quiet", "--", relative, check=False).returncode != 0:
            self._git("commit", "-q", "-m", message, "--", relative)
        else:
            log.info("route of %s at %s already as requested: nothing to commit", model, relative)
        if self._has_origin():
            # Pushed even without a new commit: an earlier push may have failed after the commit.
            branch = self._branch()
            try:
                self._git("push", "-q", "origin", f"HEAD:refs/heads/{branch}")
            except ActuationError as exc:
                raise ActuationError(
                    f"{exc}; the change is committed locally in {self.repo_dir} but not on origin: reconcile "
                    "(e.g. git pull --rebase origin) and deliver the command again, which then only pushes"
                ) from exc
        return self._git("rev-parse", "HEAD").stdout.strip()

    def _ensure_repo(self) -> None:
        if (self.repo_dir / ".git").exists():
            return
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        log.info("%s is not a git repository: running git init", self.repo_dir)
        self._git("init", "-q")

    def _has_origin(self) -> bool:
        return self._git("remote", "get-url", "origin", check=False).returncode == 0

    def _branch(self) -> str:
        head = self._git("symbolic-ref", "-q", "--short", "HEAD", check=False)
        if head.returncode != 0:
            raise ActuationError(f"{self.repo_dir}: HEAD is detached; check out the branch Argo CD/Flux deploys from")
        return head.stdout.strip()

    def _unpushed(self) -> bool:
        tracking = f"refs/remotes/origin/{self._branch()}"
        if self._git("rev-parse", "-q", "--verify", tracking, check=False).returncode != 0:
            return True
        return int(self._git("rev-list", "--count", f"{tracking}..HEAD").stdout.strip() or 0) > 0

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["git", *_GIT_IDENTITY, *args]
        # No prompt for credentials (it would hang the actuator); C locale for stable stderr.
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        try:
            proc = subprocess.run(
                cmd, cwd=self.repo_dir, capture_output=True, text=True, timeout=self.timeout_s, env=env, check=False
            )
        except FileNotFoundError as exc:
            raise ActuationError(f"git is not installed or not on PATH (needed for the GitOps repository {self.repo_dir})") from exc
        except subprocess.TimeoutExpired as exc:
            raise ActuationError(f"`git {' '.join(args)}` in {self.repo_dir} took longer than {self.timeout_s} s") from exc
        if check and proc.returncode != 0:
            raise ActuationError(
                f"`git {' '.join(args)}` in {self.repo_dir} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc
