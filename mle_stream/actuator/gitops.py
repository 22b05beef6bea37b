"""A RoutingBackend that writes Gateway API HTTPRoute manifests into a Git repository (GitOps).

Argo CD or Flux deploys what is committed; this adapter only edits and commits (and pushes when
the repository has an `origin`), so Git, the registry and the cluster can agree.

The manifest (one per model, at `manifest_template`) is an HTTPRoute whose first rule lists one
backendRef per version; httproute.py reads and rewrites the weights (the same code patches a live
HTTPRoute in kubernetes_routing.py). Fields a human put in the manifest (hostnames, matches,
filters, other rules, extra backendRef fields) are kept, but YAML comments are not: PyYAML does
not round-trip them.

With an `origin`, the branch is shared: people and other tools may push to it too. Each change is
made the way Flux's image automation and Argo CD Image Updater make theirs: fetch the branch, reset
the checkout to it, render the new weights on top of origin's latest manifest, commit, push. A push
refused because origin moved in between is redone from a new fetch, up to `push_attempts` times.
Commits of earlier attempts that never reached origin are dropped by the reset, never pushed later:
such a command either FAILED (and its event said so) or is delivered again, and then re-rendered.

What counts as applied is what is pushed: with an `origin`, reads use the manifest on origin's
branch as last fetched or pushed (`refs/remotes/origin/<branch>`), so `last_applied` answers None
while a change is committed but not on origin, and the actuator re-runs `set_weights`. Without an
`origin` they use HEAD. The manifest's annotations record the last applied command: its id,
reason and issued_at (httproute.py).

Failures of fetch and push are transient (the command is delivered again later) unless git's
output says what a person must fix first: authentication or permission refused (`Authentication
failed`, `could not read Username`, `Permission denied`, HTTP 401/403, `Host key verification
failed`), the repository or the branch not found, or the server refusing the push for another
reason than origin having moved (a protected branch, a pre-receive hook). git exits 128 or 1 for
all of these alike, so its message is all there is to tell them apart; anything it does not
explain (a refused connection, DNS, a timeout, HTTP 5xx, a hung-up remote) counts as transient,
since a rollback lost is worse than commands held back while the actuator keeps reporting why.

`repo_dir` must be the top level of its own repository (it is `git init`-ed on the first write
otherwise): a directory inside another checkout is never committed into that outer repository.
With an `origin` the checkout belongs to the actuator: uncommitted edits in it are discarded.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable
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
from mle_stream.redact import redact_text, redact_uri

log = logging.getLogger(__name__)

__all__ = ["GitOpsRouting", "LAST_COMMAND_ANNOTATION", "LAST_ISSUED_AT_ANNOTATION", "LAST_REASON_ANNOTATION",
           "VERSIONS_ANNOTATION"]

_GIT_IDENTITY = ("-c", "user.name=mle-stream", "-c", "user.email=mle-stream@localhost", "-c", "commit.gpgsign=false")

# What git prints (LC_ALL=C) when a push lost a race: refused by the client as behind origin
# ("[rejected] ... (fetch first)" / "(non-fast-forward)"), or by the server because the branch moved
# while the push was being received ("cannot lock ref ... is at X but expected Y").
_ORIGIN_MOVED = re.compile(r"\[rejected\].*\((fetch first|non-fast-forward)\)|cannot lock ref|failed to update ref|"
                           r"incorrect old value|stale info")
_MISSING_BRANCH = re.compile(r"couldn't find remote ref")
_REFUSED_ACCESS = re.compile(r"authentication failed|could not read (username|password)|permission denied|"
                             r"access denied|returned error: 40[134]|host key verification failed|"
                             r"invalid username or password|repository .*not found|does not appear to be a git "
                             r"repository")
_REFUSED_PUSH = re.compile(r"\[remote rejected\]")

Render = Callable[[dict[str, Any] | None], dict[str, Any]]


class GitOpsRouting:
    """Route traffic by committing HTTPRoute manifests; see the module docstring for the rules.

    repo_dir: top level of the GitOps checkout. manifest_template: the manifest's path inside it,
    with `{model}`. service_template: the Kubernetes Service of one version, with `{version}`
    (and optionally `{model}`). namespace, gateway: written into a new manifest.
    timeout_s: how long one git command may take (a push to a slow remote included).
    push_attempts: how often a change is fetched, rendered and pushed again when origin moved meanwhile.
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
        push_attempts: int = 3,
    ) -> None:
        manifest_fields = template_fields(manifest_template)
        if manifest_fields != {"model"}:
            raise ValueError(f"manifest_template {manifest_template!r} must use {{model}} and no other field")
        self._routes = HTTPRouteWeights(service_template)
        if not namespace or not gateway:
            raise ValueError("namespace and gateway must be non-empty")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if push_attempts < 1:
            raise ValueError(f"push_attempts must be >= 1, got {push_attempts!r}")
        self.repo_dir = Path(repo_dir).resolve()
        self.manifest_template = manifest_template
        self.service_template = service_template
        self.namespace = namespace
        self.gateway = gateway
        self.timeout_s = timeout_s
        self.push_attempts = push_attempts

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

        def render(existing: dict[str, Any] | None) -> dict[str, Any]:
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
            return manifest

        message = f"route {model}: {describe_weights(weights)} (command {command_id})\n\n{reason}\n"
        return self._change(model, render, message)

    def last_applied(self, model: str) -> AppliedMarker | None:
        manifest = self._committed_manifest(model)
        if manifest is None:
            return None
        return applied_marker(manifest, self._where(model))

    # -- beyond the port -----------------------------------------------------------------------

    def init_route(self, model: str, weights: dict[str, int]) -> str:
        """Create the model's manifest (or reset its weights) and commit it; returns the commit sha.

        A reset also clears the last command recorded with the route: the route no longer
        reflects it, so re-delivering that command must apply it again.
        """
        weights = check_weights(model, weights)

        def render(existing: dict[str, Any] | None) -> dict[str, Any]:
            manifest = self._render(model, weights, existing)
            annotations = manifest["metadata"]["annotations"]
            for name in command_annotations("", "", 0):
                annotations.pop(name, None)
            return manifest

        return self._change(model, render, f"init route {model}: {describe_weights(weights)}\n")

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
            raise ActuationError(f"manifest path {path} for model {model!r} lies outside the repository "
                                 f"{self.repo_dir}")
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
        return f"{self.manifest_path(model)} at {self._applied_ref()}"

    def _applied_ref(self) -> str:
        """The commit whose manifests count as applied: origin's branch if there is an origin, else HEAD."""
        return f"refs/remotes/origin/{self._branch()}" if self._has_origin() else "HEAD"

    def _committed_manifest(self, model: str) -> dict[str, Any] | None:
        """The manifest as committed at `_applied_ref`, None when the repository, the ref or the file
        does not exist."""
        path = self.manifest_path(model)
        if not (self.repo_dir / ".git").exists():
            return None
        relative = path.relative_to(self.repo_dir).as_posix()
        ref = self._applied_ref()
        found = self._git("rev-parse", "-q", "--verify", f"{ref}:{relative}", check=False)
        if found.returncode != 0:
            return None
        text = self._git("cat-file", "blob", found.stdout.strip()).stdout
        try:
            manifest = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ActuationError(f"{path} at {ref} is not valid YAML: {exc}") from exc
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        if not isinstance(manifest, dict) or kind != KIND:
            raise ActuationError(f"{path} at {ref} is not an HTTPRoute manifest (kind is {kind!r})")
        return manifest

    # -- git -----------------------------------------------------------------------------------

    def _change(self, model: str, render: Render, message: str) -> str:
        """Commit the manifest `render` makes of the applied one (and push it); returns HEAD's sha."""
        self._ensure_repo()
        if not self._has_origin():
            return self._write_commit(model, render(self._committed_manifest(model)), message)
        branch = self._branch()
        tracking = f"refs/remotes/origin/{branch}"
        for attempt in range(1, self.push_attempts + 1):
            self._remote("fetch", branch, "fetch", "-q", "origin", f"+refs/heads/{branch}:{tracking}")
            # Dropping unpushed commits of earlier attempts is safe: see the module docstring.
            self._git("reset", "-q", "--hard", tracking)
            sha = self._write_commit(model, render(self._committed_manifest(model)), message)
            if sha == self._git("rev-parse", tracking).stdout.strip():
                return sha  # origin already routes as asked: nothing to push
            if self._remote("push", branch, "push", "-q", "origin", f"HEAD:refs/heads/{branch}", moved_ok=True):
                # Pushed: origin's branch is HEAD now, whether or not the remote's refspec updates the ref.
                self._git("update-ref", tracking, sha)
                return sha
            log.warning("push of route %s to %s (branch %s) refused: the branch moved meanwhile; fetching and "
                        "rendering again (attempt %d of %d)", model, self._origin(), branch, attempt,
                        self.push_attempts)
        raise ActuationError(
            f"could not push the route of model {model!r} to {self._origin()} (branch {branch}): the branch moved "
            f"between fetch and push {self.push_attempts} times in a row; check what else pushes to it so often. "
            "Nothing is on origin yet; the command is delivered again later",
            transient=True,
        )

    def _write_commit(self, model: str, manifest: dict[str, Any], message: str) -> str:
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
        return self._git("rev-parse", "HEAD").stdout.strip()

    def _remote(self, what: str, branch: str, *args: str, moved_ok: bool = False) -> bool:
        """Run a git command that talks to origin: True when it succeeded, False when (`moved_ok`) the
        push was refused because origin's branch moved; any other failure raises (see the module
        docstring for which ones are transient)."""
        url = self._git("remote", "get-url", "origin").stdout.strip()
        where = f"{what} of branch {branch} at {redact_uri(url)} (checkout {self.repo_dir})"
        try:
            proc = self._git(*args, check=False)
        except ActuationError as exc:  # timed out
            raise ActuationError(f"{where}: {exc}", transient=exc.transient) from exc
        if proc.returncode == 0:
            return True
        said = redact_text(proc.stderr.strip() or proc.stdout.strip(), url)
        lowered = said.lower()
        if moved_ok and _ORIGIN_MOVED.search(lowered):
            return False
        if _MISSING_BRANCH.search(lowered):
            raise ActuationError(f"{where} failed: origin has no branch {branch}; create it with at least one "
                                 "commit, or check out the branch Argo CD/Flux deploys from")
        if _REFUSED_ACCESS.search(lowered):
            raise ActuationError(f"{where} was refused (exit {proc.returncode}): {said}; check the repository URL "
                                 "and that the credentials the checkout uses may write to it, then deliver the "
                                 "command again")
        if _REFUSED_PUSH.search(lowered):
            raise ActuationError(f"{where} was refused by the server (exit {proc.returncode}): {said}; allow the "
                                 "actuator's pushes to this branch (protected branch or pre-receive hook rules), "
                                 "then deliver the command again")
        raise ActuationError(f"{where} failed (exit {proc.returncode}): {said}; check that the Git host is up and "
                             "reachable (network, DNS, proxy); the command is delivered again later", transient=True)

    def _ensure_repo(self) -> None:
        if (self.repo_dir / ".git").exists():
            return
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        log.info("%s is not a git repository: running git init", self.repo_dir)
        self._git("init", "-q")

    def _has_origin(self) -> bool:
        return self._git("remote", "get-url", "origin", check=False).returncode == 0

    def _origin(self) -> str:
        return redact_uri(self._git("remote", "get-url", "origin", check=False).stdout.strip())

    def _branch(self) -> str:
        head = self._git("symbolic-ref", "-q", "--short", "HEAD", check=False)
        if head.returncode != 0:
            raise ActuationError(f"{self.repo_dir}: HEAD is detached; check out the branch Argo CD/Flux deploys from")
        return head.stdout.strip()

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["git", *_GIT_IDENTITY, *args]
        # No prompt for credentials (it would hang the actuator); C locale for stable stderr.
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        try:
            proc = subprocess.run(
                cmd, cwd=self.repo_dir, capture_output=True, text=True, timeout=self.timeout_s, env=env, check=False
            )
        except FileNotFoundError as exc:
            raise ActuationError(f"git is not installed or not on PATH (needed for the GitOps repository "
                                 f"{self.repo_dir})") from exc
        except subprocess.TimeoutExpired as exc:
            # A remote that stops answering: a later delivery may find it back.
            raise ActuationError(f"`git {' '.join(args)}` in {self.repo_dir} took longer than {self.timeout_s} s; "
                                 "check that the Git host is up and reachable", transient=True) from exc
        if check and proc.returncode != 0:
            raise ActuationError(
                f"`git {' '.join(args)}` in {self.repo_dir} failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc
