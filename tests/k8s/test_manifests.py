"""Static checks of the Kubernetes deliverables: Dockerfile, .dockerignore and k8s/.

There is no cluster and no kustomize binary here, so these tests do what the API server and
`kubectl apply -k` would: render every overlay with a small kustomize subset (it refuses any
kustomization feature it does not implement), validate KubeRay objects against the CRD schemas
in ../shared/schemas/kuberay (plus a strict unknown-field walk, as the API server's strict
field validation does), validate core objects with kubernetes_validate(strict=True), and then
check what a user of the manifests relies on: the entrypoint is a valid `fuzzy-people run`
command line, Ray is told exactly the resources its pods have, GPU pods hold whole
segmentation actors, versions agree, every container runs as the image's non-root user, no
secret value is in the repository, and the CronJob launcher really waits for its RayJob.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
from fractions import Fraction
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.cli import build_parser, config_from_args
from pipeline.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMA_DIR = REPO.parent / "shared" / "schemas" / "kuberay"
OVERLAYS = ["gpu", "cpu-only", "cronjob-gpu", "cronjob-cpu-only"]
# The RayCronJob overlays and their CronJob twins must run the same RayJob.
TWINS = [("gpu", "cronjob-gpu"), ("cpu-only", "cronjob-cpu-only")]
# The oldest Kubernetes we support (CronJob timeZone is GA since 1.27) and the newest known.
K8S_VERSIONS = sorted({"1.29", ".".join(kubernetes_validate.latest_version().split(".")[:2])})
RAY_KINDS = {"RayJob", "RayCronJob", "RayCluster"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "allowPrivilegeEscalation": False}


# ------------------------------------------------------------------------------ helpers

def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def pinned_ray_version() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][0-9.]*)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml does not pin ray with ==")


def quantity(value) -> Fraction:
    """A Kubernetes resource quantity ("500m", "8", 8, "32Gi") as an exact number."""
    text = str(value)
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", text)
    assert m, f"not a resource quantity: {value!r}"
    scale = {None: 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return Fraction(m.group(1)) * scale


# ------------------------------------------------------------------------------ kustomize subset

class KustomizeError(AssertionError):
    pass


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches",
                      "configMapGenerator", "generatorOptions"}


def _inside(root: Path, path: Path) -> Path:
    # kustomize's default load restrictor: files (not bases) must lie under the kustomization
    resolved = path.resolve()
    if root.resolve() not in resolved.parents:
        raise KustomizeError(f"{path} is outside {root} (kustomize refuses to load it)")
    if not resolved.is_file():
        raise KustomizeError(f"{path} does not exist")
    return resolved


def _pointer(doc, path: str):
    """(parent, key) of an RFC 6901 pointer."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        return parent, (len(parent) if last == "-" else int(last))
    return parent, last


def json6902(doc: dict, ops: list[dict]) -> None:
    for op in ops:
        parent, key = _pointer(doc, op["path"])
        kind = op["op"]
        if kind == "test":
            if parent[key] != op["value"]:
                raise KustomizeError(f"JSON patch test failed at {op['path']}: {parent[key]!r} != {op['value']!r}")
        elif kind == "remove":
            del parent[key]
        elif kind == "replace":
            if isinstance(parent, dict) and key not in parent:
                raise KustomizeError(f"JSON patch replace of missing {op['path']}")
            parent[key] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(op["value"]))
            else:
                parent[key] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"JSON patch op {kind!r} is not implemented by this test's resolver")


def _merge(base, patch):
    # strategic merge for objects without merge keys (what kustomize does for CRDs): maps
    # merge, lists are replaced, null deletes
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(base.get(k), v)
    return out


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    checks = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"].get("name")}
    unknown = set(target) - set(checks)
    if unknown:
        raise KustomizeError(f"patch target selector {sorted(unknown)} not implemented")
    return all(checks[k] == v for k, v in target.items())


def build(directory: Path) -> list[dict]:
    """Render a kustomization directory (the subset of kustomize these manifests use)."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: {sorted(unknown)} not implemented by this test's resolver")
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization"), kfile

    objs: list[dict] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objs += build(path)
        else:
            objs += load_docs(_inside(directory, path))

    options = k.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash", "labels"}:
        raise KustomizeError(f"{kfile}: generatorOptions {sorted(options)} not implemented")
    for gen in k.get("configMapGenerator", []):
        if set(gen) - {"name", "behavior", "files"}:
            raise KustomizeError(f"{kfile}: configMapGenerator keys {sorted(gen)} not implemented")
        # with a hash suffix the ConfigMap's name would no longer be the one the CronJob mounts
        if options.get("disableNameSuffixHash") is not True:
            raise KustomizeError(f"{kfile}: configMapGenerator needs generatorOptions.disableNameSuffixHash: true")
        data = {}
        for f in gen.get("files", []):
            key, _, rel = f.rpartition("=") if "=" in f else (Path(f).name, "", f)
            data[key] = _inside(directory, directory / rel).read_text()
        existing = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == gen["name"]]
        behavior = gen.get("behavior", "create")
        if behavior == "create":
            if existing:
                raise KustomizeError(f"{kfile}: ConfigMap {gen['name']} already exists (use behavior: merge)")
            meta = {"name": gen["name"]}
            if options.get("labels"):
                meta["labels"] = dict(options["labels"])
            objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
        elif behavior in ("merge", "replace"):
            if len(existing) != 1:
                raise KustomizeError(f"{kfile}: no ConfigMap {gen['name']} to {behavior}")
            if behavior == "replace":
                existing[0]["data"] = {}
            existing[0].setdefault("data", {}).update(data)
        else:
            raise KustomizeError(f"{kfile}: behavior {behavior!r}")

    for patch in k.get("patches", []):
        if set(patch) - {"path", "target"}:
            raise KustomizeError(f"{kfile}: patch keys {sorted(patch)} not implemented")
        body = yaml.safe_load(_inside(directory, directory / patch["path"]).read_text())
        if isinstance(body, list):  # JSON 6902
            targets = [o for o in objs if _matches(o, patch["target"])]
            if not targets:
                raise KustomizeError(f"{kfile}: patch {patch['path']} matches nothing")
            for obj in targets:
                json6902(obj, body)
        else:  # strategic merge, identified by its own kind and name
            body = dict(body)
            delete = body.pop("$patch", None) == "delete"
            target = {"kind": body["kind"], "name": body["metadata"]["name"], **patch.get("target", {})}
            hits = [i for i, o in enumerate(objs) if _matches(o, target)]
            if len(hits) != 1:
                raise KustomizeError(f"{kfile}: patch {patch['path']} matches {len(hits)} objects")
            if delete:
                del objs[hits[0]]
            else:
                objs[hits[0]] = _merge(objs[hits[0]], body)

    if "namespace" in k:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]

    ids = [(o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"].get("name")) for o in objs]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise KustomizeError(f"{directory}: duplicate objects {sorted(map(str, dupes))}")
    return objs


_RENDERED: dict[str, list[dict]] = {}


def render(overlay: str) -> list[dict]:
    if overlay not in _RENDERED:
        _RENDERED[overlay] = build(K8S / "overlays" / overlay)
    return copy.deepcopy(_RENDERED[overlay])


def embedded_rayjobs(obj: dict) -> list[dict]:
    """RayJobs carried as YAML text in a ConfigMap (the CronJob launcher's template)."""
    if obj["kind"] != "ConfigMap":
        return []
    out = []
    for key, text in (obj.get("data") or {}).items():
        if key.endswith((".yaml", ".yml")):
            out += [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "RayJob"]
    return out


def objects_with_embedded(overlay: str) -> list[dict]:
    objs = render(overlay)
    return objs + [rj for o in objs for rj in embedded_rayjobs(o)]


def run_specs(overlay: str) -> list[tuple[str, dict]]:
    """Every RayJob spec an overlay would run: RayCronJob templates, RayJobs, embedded RayJobs."""
    out = []
    for obj in objects_with_embedded(overlay):
        label = f"{overlay}: {obj['kind']} {obj['metadata'].get('name') or obj['metadata'].get('generateName')}"
        if obj["kind"] == "RayCronJob":
            out.append((label, obj["spec"]["jobTemplate"]))
        elif obj["kind"] == "RayJob":
            out.append((label, obj["spec"]))
    return out


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod template) for every pod an object would create."""
    kind = obj["kind"]
    if kind == "CronJob":
        return [("CronJob", obj["spec"]["jobTemplate"]["spec"]["template"])]
    if kind not in ("RayJob", "RayCronJob"):
        return []
    spec = obj["spec"]["jobTemplate"] if kind == "RayCronJob" else obj["spec"]
    out = []
    if "submitterPodTemplate" in spec:
        out.append(("submitter", spec["submitterPodTemplate"]))
    cluster = spec["rayClusterSpec"]
    out.append(("head", cluster["headGroupSpec"]["template"]))
    out += [(g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    return out


def entrypoint_args(spec: dict) -> list[str]:
    tokens = shlex.split(spec["entrypoint"])
    assert tokens[:1] == ["python"], spec["entrypoint"]
    assert tokens[1] == f"{dockerfile_workdir()}/jobs/anonymize.py", (
        f"the entrypoint runs {tokens[1]}, but the image has the repository at {dockerfile_workdir()}")
    return tokens[2:]


def run_option_strings() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices["run"]._actions for s in a.option_strings}


def parse_run(spec: dict, where: str):
    args = entrypoint_args(spec)
    # argparse would accept an abbreviation (--batch for --batch-size) that a new flag can make
    # ambiguous later: the manifests spell every flag out
    spelled = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    unknown = spelled - run_option_strings()
    if unknown:
        pytest.fail(f"{where}: {sorted(unknown)} are not `fuzzy-people run` flags (spelled out)")
    try:
        return build_parser().parse_args(["run", *args])
    except SystemExit:
        pytest.fail(f"{where}: `fuzzy-people run` rejects the entrypoint's flags (argparse message above): {args}")


def groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["rayClusterSpec"].get("workerGroupSpecs", [])}


def ray_container(template: dict) -> dict:
    return template["spec"]["containers"][0]


# ------------------------------------------------------------------------------ Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    logical, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    out = []
    for line in logical:
        instr, _, rest = line.strip().partition(" ")
        out.append((instr.upper(), rest.strip()))
    return out


def dockerfile_args_before_from() -> dict[str, str]:
    args = {}
    for instr, rest in dockerfile_instructions():
        if instr == "FROM":
            break
        if instr == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def dockerfile_workdir() -> str:
    workdirs = [rest for instr, rest in dockerfile_instructions() if instr == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return workdirs[-1]


def test_dockerfile_builds_from_the_pinned_ray_image():
    args = dockerfile_args_before_from()
    assert args.get("RAY_VERSION") == pinned_ray_version(), "Dockerfile ARG RAY_VERSION != ray pin in pyproject.toml"
    assert args.get("VARIANT") in ("cpu", "gpu")
    froms = [rest for instr, rest in dockerfile_instructions() if instr == "FROM"]
    assert froms == ["rayproject/ray:${RAY_VERSION}-py311-${VARIANT}"]


def test_dockerfile_installs_package_prepares_model_and_drops_root():
    steps = dockerfile_instructions()
    runs = [rest for instr, rest in steps if instr == "RUN"]
    install = next(r for r in runs if "pip install" in r)
    assert 'pip install ".[gpu]"' in install and "pip install ." in install
    assert '"${VARIANT}" = "gpu"' in install, "the gpu extra must depend on the VARIANT build arg"

    env_at = next(i for i, (instr, rest) in enumerate(steps)
                  if instr == "ENV" and "FUZZY_PEOPLE_CACHE=" in rest)
    env = dict(tok.split("=", 1) for tok in shlex.split(steps[env_at][1]) if "=" in tok)
    cache = env["FUZZY_PEOPLE_CACHE"]
    assert cache.startswith("/opt/fuzzy-people/"), "the model cache must live inside the image"
    prepare_at = next(i for i, (instr, rest) in enumerate(steps)
                      if instr == "RUN" and "fuzzy-people models prepare" in rest)
    assert prepare_at > env_at, "models must be prepared after FUZZY_PEOPLE_CACHE is set"
    assert prepare_at > next(i for i, (instr, rest) in enumerate(steps) if instr == "RUN" and "pip install" in rest)

    for body in runs:  # docker runs each RUN with /bin/sh -c
        check = subprocess.run(["sh", "-n", "-c", body], capture_output=True, text=True)
        assert check.returncode == 0, f"RUN is not valid sh: {check.stderr}\n{body}"

    users = [rest for instr, rest in steps if instr == "USER"]
    assert users and users[-1] in ("ray", "1000", "1000:100"), "the image must end as the non-root user ray"
    copies = [rest for instr, rest in steps if instr == "COPY"]
    assert copies and all("--chown=1000:100" in c for c in copies)


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    pats = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").lstrip("/"))
        rx, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif line[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif line[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(line[i]), i + 1
        pats.append((negate, re.compile(rx)))
    return pats


def docker_context_includes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for negate, rx in _dockerignore_patterns():
        if any(rx.fullmatch(c) for c in candidates):
            included = negate
    return included


def test_dockerignore_sends_the_package_and_nothing_else():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = ["pyproject.toml", "jobs/anonymize.py", "pipeline/__init__.py", "pipeline/cli.py",
              "pipeline/config.py", "pipeline/models/fetch.py"]
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.append(readme)
    for path in needed:
        assert docker_context_includes(path), f".dockerignore leaves out {path}, which the image needs"
    tracked = subprocess.run(["git", "ls-files", "pipeline"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for path in tracked:
        assert docker_context_includes(path), f".dockerignore leaves out package file {path}"
    for path in ["tests/conftest.py", "k8s/base/raycronjob.yaml", ".git/HEAD", ".venv/bin/python",
                 "pipeline/__pycache__/cli.cpython-311.pyc", "bench/results.json", "shared/x", ".env"]:
        assert not docker_context_includes(path), f".dockerignore lets {path} into the image"


# ------------------------------------------------------------------------------ schemas

@pytest.fixture(scope="session")
def crd_schemas() -> dict[str, dict]:
    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {SCHEMA_DIR} (../shared/schemas/kuberay beside the repo)")
    import json
    return {kind: json.loads((SCHEMA_DIR / f"{kind.lower()}.v1.json").read_text()) for kind in RAY_KINDS}


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare: strict field validation rejects them."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(obj, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                out += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None or extra is False:
                out.append(f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            out += unknown_fields(value, schema["items"], f"{path}[{i}]")
    return out


def validate_core(obj: dict) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata'].get('name')} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def validate_ray_object(obj: dict, schemas: dict) -> None:
    what = f"{obj['kind']} {obj['metadata'].get('name') or obj['metadata'].get('generateName')}"
    assert obj["apiVersion"] == "ray.io/v1", what
    schema = schemas[obj["kind"]]
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{what}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
    assert not unknown_fields(obj, schema), f"{what}: unknown fields {unknown_fields(obj, schema)}"
    # metadata and embedded pod templates against Kubernetes' own schemas
    validate_core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})
    for where, template in pod_templates(obj):
        validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"check-{where}"},
                       "template": template})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resolver_agrees_with_real_kustomize(overlay):
    # `kubectl kustomize` renders offline; where it is installed, the subset above must give
    # exactly what `kubectl apply -k` would send
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key = lambda o: (o["apiVersion"], o["kind"], o["metadata"].get("name"))  # noqa: E731
    real = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key)
    assert real == sorted(render(overlay), key=key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_what_it_promises(overlay):
    kinds = sorted(o["kind"] for o in render(overlay))
    if overlay.startswith("cronjob-"):
        assert kinds == ["ConfigMap", "CronJob", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount"]
    else:
        assert kinds == ["RayCronJob", "ServiceAccount"]
    namespaces = {o["metadata"].get("namespace") for o in render(overlay)}
    assert len(namespaces) == 1 and None not in namespaces, f"{overlay}: namespaces {namespaces}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_objects_match_the_kuberay_crds(overlay, crd_schemas):
    ray_objects = [o for o in objects_with_embedded(overlay) if o["kind"] in RAY_KINDS]
    assert ray_objects
    for obj in ray_objects:
        validate_ray_object(obj, crd_schemas)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_match_kubernetes_schemas(overlay):
    for obj in render(overlay):
        if obj["kind"] not in RAY_KINDS:
            validate_core(obj)


def test_unknown_field_walk_catches_typos(crd_schemas):
    # the walk is what stands in for strict server-side validation: make sure it bites
    obj = _only(render("gpu"), "RayCronJob")
    obj["spec"]["jobTemplate"]["shutdownAfterJobFinish"] = True
    obj["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    found = unknown_fields(obj, crd_schemas["RayCronJob"])
    assert ".spec.jobTemplate.shutdownAfterJobFinish" in found
    assert ".spec.jobTemplate.rayClusterSpec.headGroupSpec.template.spec.containers[0].securityContex" in found


def test_every_file_under_k8s_is_used_and_parses():
    referenced = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        k = yaml.safe_load(kfile.read_text())
        entries = list(k.get("resources", [])) + [p["path"] for p in k.get("patches", [])]
        entries += [f.rpartition("=")[2] for g in k.get("configMapGenerator", []) for f in g.get("files", [])]
        for entry in entries:
            referenced.add((kfile.parent / entry).resolve())
        referenced.add(kfile.resolve())
    for path in K8S.rglob("*"):
        if path.is_dir():
            continue
        if path.suffix in (".yaml", ".yml"):
            assert load_docs(path), f"{path} is empty"
        if path.name in ("README.md", "secret.example.yaml") and path.parent == K8S:
            continue
        assert path.resolve() in referenced, f"{path.relative_to(REPO)} is not used by any kustomization"
    assert (K8S / "secret.example.yaml").resolve() not in referenced, "secret.example.yaml must stay out of kustomizations"


# ------------------------------------------------------------------------------ the run itself

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoint_is_a_valid_run_command(overlay):
    specs = run_specs(overlay)
    assert specs
    assert (REPO / "jobs" / "anonymize.py").is_file()
    for where, spec in specs:
        for token in entrypoint_args(spec):
            # KubeRay pastes the entrypoint into a `bash -c` string, and Ray runs it in a shell
            assert re.fullmatch(r"[A-Za-z0-9_./:=,@%+-]+", token), f"{where}: {token!r} needs shell quoting"
        ns = parse_run(spec, where)
        assert ns.input.startswith("s3://") and ns.output.startswith("s3://"), where
        assert not ns.output.startswith(ns.input) and not ns.input.startswith(ns.output), where
        # the secret file only exists in the pod: check it is mounted there, then let RunConfig
        # validate every other value as a run would
        assert ns.secret_file, f"{where}: runs must use the anonymization secret from its Secret"
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
        mounts = {m["name"]: m["mountPath"] for m in ray_container(head).get("volumeMounts", [])}
        secret_volumes = {v["name"]: v["secret"] for v in head["spec"].get("volumes", []) if "secret" in v}
        # readable by uid 1000 / fsGroup 100, by nobody else
        assert all(v.get("defaultMode") == 0o440 for v in secret_volumes.values()), where
        assert any(ns.secret_file.startswith(mounts[name] + "/") for name in secret_volumes if name in mounts), (
            f"{where}: --secret-file {ns.secret_file} is not under a Secret mounted in the head container")
        ns.secret_file = None
        try:
            config_from_args(ns)
        except ConfigError as exc:
            pytest.fail(f"{where}: {exc}")


def test_entrypoint_check_rejects_a_renamed_flag():
    spec = copy.deepcopy(run_specs("gpu")[0][1])
    spec["entrypoint"] = spec["entrypoint"].replace("--segment-actors", "--segmentation-actors")
    with pytest.raises(pytest.fail.Exception):
        parse_run(spec, "renamed flag")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_lifecycle_settings(overlay):
    for where, spec in run_specs(overlay):
        assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: ttlSecondsAfterFinished needs it"
        assert spec.get("ttlSecondsAfterFinished", -1) >= 0, where
        assert spec.get("activeDeadlineSeconds", 0) > 0, where
        assert "backoffLimit" in spec, f"{where}: choose backoffLimit explicitly"
        if spec["backoffLimit"] > 0:
            # a retry right after a crash meets the crashed attempt's unexpired lock
            assert parse_run(spec, where).wait_for_lock, f"{where}: retries need --wait-for-lock"
        # the driver runs on the head, which offers Ray no CPU or GPU
        assert not spec.get("entrypointNumCpus") and not spec.get("entrypointNumGpus"), where
        submitter = spec["submitterPodTemplate"]["spec"]
        assert submitter["restartPolicy"] == "Never", where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_is_told_exactly_what_each_pod_has(overlay):
    for where, spec in run_specs(overlay):
        cluster = spec["rayClusterSpec"]
        assert cluster.get("enableInTreeAutoscaling") is True, where
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", f"{where}: no work may land on the head"
        assert "nvidia.com/gpu" not in ray_container(head["template"])["resources"].get("limits", {}), where
        for name, group in groups(spec).items():
            assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0, f"{where}/{name}: must scale from 0"
            assert group["maxReplicas"] >= 1, f"{where}/{name}"
        for name, template in [("head", head["template"])] + [(n, g["template"]) for n, g in groups(spec).items()]:
            res = ray_container(template)["resources"]
            assert {"cpu", "memory"} <= set(res["limits"]), f"{where}/{name}: CPU and memory limits"
            for r in set(res["requests"]) | set(res["limits"]):
                assert quantity(res["requests"].get(r, 0)) == quantity(res["limits"].get(r, 0)), (
                    f"{where}/{name}: {r} requests != limits (Ray would count resources the pod may not get)")
        for name, group in groups(spec).items():
            limits = ray_container(group["template"])["resources"]["limits"]
            params = group["rayStartParams"]
            assert quantity(params["num-cpus"]) == quantity(limits["cpu"]), f"{where}/{name}: num-cpus != CPU limit"
            gpus = quantity(limits.get("nvidia.com/gpu", 0))
            assert quantity(params.get("num-gpus", 0)) == gpus, f"{where}/{name}: num-gpus != nvidia.com/gpu limit"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_pods_hold_whole_segmentation_actors(overlay):
    for where, spec in run_specs(overlay):
        ns = parse_run(spec, where)
        _, max_actors = ns.segment_actors
        gpu_groups = {n: g for n, g in groups(spec).items()
                      if "nvidia.com/gpu" in ray_container(g["template"])["resources"].get("limits", {})}
        if ns.num_gpus == 0:
            assert not gpu_groups, f"{where}: --num-gpus 0 but GPU pods are defined"
            assert "gpu" not in overlay.replace("cronjob-", "").split("-"), f"{where}: the GPU overlay runs on CPU"
            continue
        assert len(gpu_groups) == 1, f"{where}: --num-gpus {ns.num_gpus} needs exactly one GPU worker group"
        (name, group), = gpu_groups.items()
        per_pod = quantity(ray_container(group["template"])["resources"]["limits"]["nvidia.com/gpu"])
        actors_per_pod = per_pod / Fraction(str(ns.num_gpus))
        assert actors_per_pod.denominator == 1 and actors_per_pod >= 1, (
            f"{where}/{name}: {per_pod} GPUs per pod is not a whole number of --num-gpus {ns.num_gpus} actors")
        assert group["maxReplicas"] * actors_per_pod == max_actors, (
            f"{where}/{name}: maxReplicas {group['maxReplicas']} x {actors_per_pod} actors per pod != "
            f"--segment-actors max {max_actors}")
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_versions_and_images_agree_with_the_pin(overlay):
    ray = pinned_ray_version()
    for where, spec in run_specs(overlay):
        cluster = spec["rayClusterSpec"]
        assert cluster["rayVersion"] == ray, where
        head_image = ray_container(cluster["headGroupSpec"]["template"])["image"]
        images = [("head", head_image), ("submitter", ray_container(spec["submitterPodTemplate"])["image"])]
        images += [(n, ray_container(g["template"])["image"]) for n, g in groups(spec).items()]
        for name, image in images:
            m = re.fullmatch(r"(?:.+/)?fuzzy-people:[0-9.]+-ray([0-9.]+)-py311-(cpu|gpu)", image)
            assert m, f"{where}/{name}: image {image} is not one of ours"
            assert m.group(1) == ray, f"{where}/{name}: image {image} is not built on Ray {ray}"
            has_gpu = name in groups(spec) and "nvidia.com/gpu" in ray_container(groups(spec)[name]["template"])["resources"]["limits"]
            assert m.group(2) == ("gpu" if has_gpu else "cpu"), f"{where}/{name}: {image}"
        assert {i.rsplit(":", 1)[0] for _, i in images} == {head_image.rsplit(":", 1)[0]}, f"{where}: one image repository"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_as_the_images_non_root_user(overlay):
    seen = 0
    for obj in objects_with_embedded(overlay):
        contexts = [(f"{where}/{c['name']}", c.get("securityContext", {}))
                    for where, template in pod_templates(obj)
                    for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]]
        if obj["kind"] in ("RayJob", "RayCronJob"):
            spec = obj["spec"]["jobTemplate"] if obj["kind"] == "RayCronJob" else obj["spec"]
            if spec["rayClusterSpec"].get("enableInTreeAutoscaling"):
                contexts.append(("autoscaler sidecar", spec["rayClusterSpec"]["autoscalerOptions"]["securityContext"]))
        for where, ctx in contexts:
            seen += 1
            for key, value in SECURITY.items():
                assert ctx.get(key) == value, f"{overlay} {obj['kind']}: {where}: securityContext.{key} must be {value}"
            caps = ctx.get("capabilities", {})
            assert caps.get("drop") == ["ALL"] and not caps.get("add"), f"{overlay}: {where}: capabilities"
        for where, template in pod_templates(obj):
            pod = template["spec"].get("securityContext", {})
            assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{overlay}: {where}: pod seccompProfile"
    assert seen >= 4


def _walk_env(obj):
    if isinstance(obj, dict):
        if isinstance(obj.get("env"), list):
            yield from obj["env"]
        for v in obj.values():
            yield from _walk_env(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_env(v)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_manifests(overlay):
    objs = objects_with_embedded(overlay)
    assert not [o for o in objs if o["kind"] == "Secret"], "Secrets must not be part of a kustomization"
    secret_words = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "KEY_ID")
    for var in _walk_env(objs):
        if any(w in var["name"].upper() for w in secret_words):
            assert "value" not in var, f"{overlay}: {var['name']} has a literal value"
            ref = var["valueFrom"]["secretKeyRef"]
            # optional: clusters using IAM roles for service accounts have no such Secret
            assert ref["optional"] is True, f"{overlay}: {var['name']}"
    s3 = [v for v in _walk_env(objs) if v["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")]
    assert len(s3) >= 3 * 2, f"{overlay}: head and workers need the S3 settings from the Secret"
    for path in list(K8S.rglob("*")) + [REPO / "Dockerfile"]:
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"\bAKIA[0-9A-Z]{16}\b", text), f"{path}: an AWS access key id"
            assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*[A-Za-z0-9/+]{30,}", text), f"{path}: a secret key"


def test_secret_example_matches_what_the_manifests_reference():
    docs = {d["metadata"]["name"]: d for d in load_docs(K8S / "secret.example.yaml")}
    assert all(d["kind"] == "Secret" for d in docs.values())
    for d in docs.values():
        validate_core(d)
    for d in docs.values():
        for key, value in d["stringData"].items():
            assert value.startswith("REPLACE"), f"secret.example.yaml {d['metadata']['name']}.{key} holds a value"
    for overlay in OVERLAYS:
        objs = objects_with_embedded(overlay)
        refs = {(v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
                for v in _walk_env(objs) if "secretKeyRef" in v.get("valueFrom", {})}
        for name, key in refs:
            assert key in docs[name]["stringData"], f"{overlay} reads {name}.{key}, missing from secret.example.yaml"
        for where, spec in run_specs(overlay):
            ns = parse_run(spec, where)
            head = spec["rayClusterSpec"]["headGroupSpec"]["template"]
            volume = next(v for v in head["spec"]["volumes"] if "secret" in v
                          and v["secret"]["secretName"] in docs)
            mount = next(m for m in ray_container(head)["volumeMounts"] if m["name"] == volume["name"])
            key = os.path.relpath(ns.secret_file, mount["mountPath"])
            assert key in docs[volume["secret"]["secretName"]]["stringData"], f"{where}: --secret-file key {key}"


# ------------------------------------------------------------------------------ scheduling

def _only(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_raycronjob_name_and_schedule():
    cron = _only(render("gpu"), "RayCronJob")
    name = cron["metadata"]["name"]
    assert len(name) <= 36 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert set(cron["spec"]) <= {"schedule", "jobTemplate", "suspend"}, (
        "timeZone is KubeRay 1.7.0+ only; RayCronJob has no concurrency policy or history limit")
    assert len(cron["spec"]["schedule"].split()) == 5


@pytest.mark.parametrize("rayjob_overlay, cronjob_overlay", TWINS)
def test_cronjob_fallback_runs_the_same_rayjob(rayjob_overlay, cronjob_overlay):
    cron = _only(render(rayjob_overlay), "RayCronJob")
    objs = render(cronjob_overlay)
    embedded = [rj for o in objs for rj in embedded_rayjobs(o)]
    assert len(embedded) == 1
    assert embedded[0]["spec"] == cron["spec"]["jobTemplate"], (
        f"{cronjob_overlay}'s rayjob.yaml and {rayjob_overlay}'s RayCronJob jobTemplate differ")
    assert _only(objs, "CronJob")["spec"]["schedule"] == cron["spec"]["schedule"]
    meta = embedded[0]["metadata"]
    assert "namespace" not in meta, "the launcher creates it in its own namespace"
    assert "name" not in meta and re.fullmatch(r"[a-z][-a-z0-9]*-", meta["generateName"])
    assert len(meta["generateName"]) + 5 <= 47, "KubeRay limits RayJob names to 47 characters"


@pytest.mark.parametrize("overlay", ["cronjob-gpu", "cronjob-cpu-only"])
def test_cronjob_forbids_overlap_with_minimal_rbac(overlay):
    objs = render(overlay)
    cron = _only(objs, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "a retried launcher would create a second RayJob"
    (rayjob,) = [rj for o in objs for rj in embedded_rayjobs(o)]
    assert job["activeDeadlineSeconds"] > rayjob["spec"]["activeDeadlineSeconds"], (
        "the RayJob's own deadline must fire before the launcher's")
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never", "a launcher restarted in place would create a second RayJob"
    (container,) = pod["containers"]
    assert re.fullmatch(r"[^:@]+:[0-9][^:]*", container["image"]), f"pin the kubectl image: {container['image']}"

    sa = pod["serviceAccountName"]
    namespace = cron["metadata"]["namespace"]
    assert any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == sa for o in objs)
    binding = _only(objs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": _only(objs, "Role")["metadata"]["name"]}
    rules = _only(objs, "Role")["rules"]
    assert [(r["apiGroups"], r["resources"], sorted(r["verbs"])) for r in rules] == [
        (["ray.io"], ["rayjobs"], ["create", "delete", "get"])]

    # the pod mounts the ConfigMap that holds both the RayJob and the launcher script
    cm = _only(objs, "ConfigMap")
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])["mountPath"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAYJOB_TEMPLATE"]["value"] == f"{mount}/rayjob.yaml" and "rayjob.yaml" in cm["data"]
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert container["command"][-1] == f"{mount}/launch.sh" and "launch.sh" in cm["data"]


# ------------------------------------------------------------------------------ the launcher script

FAKE_KUBECTL = r"""#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$1" in
  create)
    [ -n "${FAKE_CREATE_FAIL:-}" ] && { echo "forbidden" >&2; exit 1; }
    echo "rayjob.ray.io/fuzzy-people-nightly-abcde" ;;
  get)
    case "$*" in *status.reason*) printf '%s' "DeadlineExceeded: past activeDeadlineSeconds"; exit 0 ;; esac
    line="$(head -n 1 "$FAKE_STATES")"
    if [ "$(wc -l < "$FAKE_STATES")" -gt 1 ]; then
      tail -n +2 "$FAKE_STATES" > "$FAKE_STATES.next" && mv "$FAKE_STATES.next" "$FAKE_STATES"
    fi
    [ "$line" = "API-ERROR" ] && { echo "connection refused" >&2; exit 1; }
    printf '%s' "$line" ;;
  delete) ;;
  *) exit 3 ;;
esac
"""


@pytest.fixture
def launcher(tmp_path):
    cm = _only(render("cronjob-gpu"), "ConfigMap")
    script = tmp_path / "launch.sh"
    script.write_text(cm["data"]["launch.sh"])
    (tmp_path / "rayjob.yaml").write_text(cm["data"]["rayjob.yaml"])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl = bindir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)

    def start(states, poll="0", **extra):
        (tmp_path / "states").write_text("".join(s + "\n" for s in states))
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "log"),
               "FAKE_STATES": str(tmp_path / "states"), "POD_NAMESPACE": "night",
               "RAYJOB_TEMPLATE": str(tmp_path / "rayjob.yaml"), "POLL_SECONDS": poll, **extra}
        return subprocess.Popen(["sh", str(script)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def calls():
        log = tmp_path / "log"
        return log.read_text().splitlines() if log.exists() else []

    return start, calls


def test_launcher_waits_for_success(launcher):
    start, calls = launcher
    proc = start([" ", "Initializing ", "API-ERROR", "Running RUNNING", "Running RUNNING", "Complete SUCCEEDED"])
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    log = calls()
    assert log[0].startswith("create --namespace night --filename ") and log[0].endswith("rayjob.yaml --output name")
    assert sum(c.startswith("get ") for c in log) == 6, "it must keep polling until the RayJob is Complete"
    assert not any(c.startswith("delete") for c in log)
    # everything it does is allowed by the Role
    role_verbs = set(_only(render("cronjob-gpu"), "Role")["rules"][0]["verbs"])
    assert {c.split()[0] for c in log} <= role_verbs


@pytest.mark.parametrize("final", ["Complete FAILED", "Complete STOPPED", "Failed FAILED", "Failed ", "ValidationFailed "])
def test_launcher_fails_when_the_run_fails(launcher, final):
    start, calls = launcher
    proc = start(["Running RUNNING", final])
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert "fuzzy-people-nightly-abcde" in out


def test_launcher_fails_when_it_cannot_create_the_rayjob(launcher):
    start, calls = launcher
    proc = start(["Complete SUCCEEDED"], FAKE_CREATE_FAIL="1")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0, out
    assert [c.split()[0] for c in calls()] == ["create"]


def test_launcher_deletes_its_rayjob_when_stopped(launcher):
    start, calls = launcher
    proc = start(["Running RUNNING"], poll="5")
    deadline = time.monotonic() + 20
    while not any(c.startswith("get ") for c in calls()):
        assert time.monotonic() < deadline and proc.poll() is None, "the launcher never polled"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 143, out
    assert "delete --namespace night rayjob.ray.io/fuzzy-people-nightly-abcde --wait=false" in calls()


# ------------------------------------------------------------------------------ README

def test_readme_walks_through_install_and_values():
    text = (K8S / "README.md").read_text()
    assert "helm install kuberay-operator" in text
    assert "--set featureGates[0].name=RayCronJob" in text and "--set featureGates[0].enabled=true" in text
    applied = set(re.findall(r"kubectl apply -k k8s/overlays/([a-z0-9-]+)", text))
    assert applied == set(OVERLAYS), f"README applies {sorted(applied)}"
    for overlay in applied:
        assert (K8S / "overlays" / overlay / "kustomization.yaml").is_file()
    # every placeholder a user has to replace is listed
    placeholders = set()
    for path in K8S.rglob("*.yaml"):
        placeholders |= set(re.findall(r"s3://example-[a-z-]+/[a-z/]*|arn:aws:iam::111122223333:role/[a-z0-9-]+", path.read_text()))
    assert placeholders
    for placeholder in placeholders:
        assert placeholder in text, f"README does not list the placeholder {placeholder}"
    for name in ("fuzzy-people-s3", "fuzzy-people-anonymization"):
        assert name in text
