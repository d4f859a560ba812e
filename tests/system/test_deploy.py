"""Deployment files: the Kubernetes manifests in deploy/k8s and the Dockerfiles in deploy/.

Every manifest is validated, offline, against the Kubernetes OpenAPI JSON schemas that the
`kubernetes-validate` package ships (strict: unknown fields are errors), for the oldest
Kubernetes these manifests support (1.27: gRPC probes are GA) and the newest schema shipped.
The properties the deployment relies on (probes, shutdown timing, named ports, non-root,
labels, one image) are asserted on top. The Dockerfiles cannot be built here (no Docker
daemon), so they are parsed and checked for what matters.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

try:
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
except ImportError:          # the schema tests skip; the other checks still run
    kubernetes_validate = kv_utils = None
needs_schemas = pytest.mark.skipif(kubernetes_validate is None,
                                   reason="kubernetes-validate (the test extra) is not installed")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]
KUSTOMIZATION = K8S / "kustomization.yaml"
MIN_K8S = "1.27.0"          # gRPC probes are GA from 1.27
SERVICE_NAME = "gengate.v1.GenerateService"
GRPC_PORT, HTTP_PORT = 50051, 11434
SERVICE_METRICS_PORT, GATEWAY_METRICS_PORT = 9464, 9465


# -- loading ------------------------------------------------------------------------------------

def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION.name)


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[dict]:
    return [d for p in manifest_files() for d in load_docs(p)]


def one(kind: str, name: str) -> dict:
    found = [d for d in all_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def container(deployment: dict) -> dict:
    (c,) = pod_spec(deployment)["containers"]
    return c


def env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def kustomization() -> dict:
    return yaml.safe_load(KUSTOMIZATION.read_text())


SERVICE_DEPLOYMENT = ("Deployment", "gengate-service")
GATEWAY_DEPLOYMENT = ("Deployment", "gengate-gateway")


def setting_default(module: str, cls: str, field: str):
    import importlib
    settings_cls = getattr(importlib.import_module(module), cls)
    return {f.name: f.default for f in dataclasses.fields(settings_cls)}.get(field)


def drain_seconds(c: dict) -> float:
    """GENGATE_DRAIN_SECONDS as the container gets it: its env value, else the settings default."""
    if "GENGATE_DRAIN_SECONDS" in env(c):
        return float(env(c)["GENGATE_DRAIN_SECONDS"]["value"])
    default = setting_default("service.settings", "ServiceSettings", "drain_seconds")
    return float(default if default is not None else 30)


def prestop_seconds(c: dict) -> float:
    pre = c["lifecycle"]["preStop"]
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    assert command[0] == "sleep", f"preStop should sleep, got {command}"
    return float(command[1])


# -- schema validation ----------------------------------------------------------------------------

@needs_schemas
def test_there_are_manifests_and_the_validator_ships_its_schemas():
    assert manifest_files(), "no manifests in deploy/k8s"
    versions = kv_utils.all_versions()
    assert MIN_K8S in versions, f"kubernetes-validate has no schemas for {MIN_K8S}: {versions}"


@needs_schemas
@pytest.mark.parametrize("version", [MIN_K8S, "latest"])
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path, version):
    version = kv_utils.latest_version() if version == "latest" else version
    for doc in load_docs(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes "
                        f"{version} at {'.'.join(map(str, exc.absolute_path))}: {exc.message}")


@needs_schemas
def test_the_validator_rejects_a_broken_manifest():
    """Guards the guard: a misspelt field and a named port in a gRPC probe must both fail."""
    deployment = one(*SERVICE_DEPLOYMENT)
    typo = yaml.safe_load(yaml.safe_dump(deployment))
    container(typo)["readinessProbe"]["grpc"]["prot"] = GRPC_PORT
    named = yaml.safe_load(yaml.safe_dump(deployment))
    container(named)["readinessProbe"]["grpc"]["port"] = "grpc"
    for broken in (typo, named):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, MIN_K8S, strict=True)


def test_kustomization_lists_every_manifest():
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    assert manifest_files(), "no manifests in deploy/k8s"
    assert sorted(k["resources"]) == sorted(p.name for p in manifest_files())


@needs_schemas
def test_kustomize_renders_valid_objects():
    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if kustomize:
        command = [kustomize, "build", str(K8S)]
    elif kubectl:
        command = [kubectl, "kustomize", str(K8S)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    rendered = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(all_docs())
    for doc in docs:
        kubernetes_validate.validate(doc, MIN_K8S, strict=True)


# -- the service ------------------------------------------------------------------------------------

def test_service_has_native_grpc_probes_on_its_grpc_port():
    c = container(one(*SERVICE_DEPLOYMENT))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": SERVICE_METRICS_PORT}
    readiness, liveness = c["readinessProbe"]["grpc"], c["livenessProbe"]["grpc"]
    assert readiness == {"port": GRPC_PORT, "service": SERVICE_NAME}
    assert liveness["port"] == GRPC_PORT and liveness.get("service", "") == ""
    if "startupProbe" in c:
        startup = c["startupProbe"]
        assert startup["grpc"]["port"] == GRPC_PORT
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "too little time to load a model"


def test_service_listens_on_all_interfaces_inside_the_pod():
    c = container(one(*SERVICE_DEPLOYMENT))
    assert c["command"] == ["python", "-m", "service"]
    assert env(c)["GENGATE_GRPC_ADDR"]["value"] == f"0.0.0.0:{GRPC_PORT}"
    assert env(c)["GENGATE_METRICS_ADDR"]["value"] == f"0.0.0.0:{SERVICE_METRICS_PORT}"


@pytest.mark.parametrize("deployment", [SERVICE_DEPLOYMENT, GATEWAY_DEPLOYMENT], ids=lambda d: d[1])
def test_shutdown_fits_in_the_grace_period(deployment):
    d = one(*deployment)
    c = container(d)
    grace = pod_spec(d)["terminationGracePeriodSeconds"]
    assert "preStop" in c["lifecycle"]
    pre, drain = prestop_seconds(c), drain_seconds(c)
    assert 3 <= pre <= 10, "preStop should give endpoints a few seconds to drop the pod"
    assert grace > drain, "the kubelet would SIGKILL in the middle of the drain"
    assert grace > pre + drain, f"preStop {pre}s + drain {drain}s does not fit in {grace}s"
    assert grace == 45


def test_service_threads_follow_the_cpu_limit():
    c = container(one(*SERVICE_DEPLOYMENT))
    threads = env(c)["GENGATE_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads["resource"] == "limits.cpu" and threads["containerName"] == c["name"]
    resources = c["resources"]
    assert "cpu" in resources["limits"] and "memory" in resources["limits"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"], "memory: request = limit"


# -- the gateway -------------------------------------------------------------------------------------

def test_gateway_has_http_probes_and_points_at_the_service_dns_name():
    c = container(one(*GATEWAY_DEPLOYMENT))
    assert c["command"] == ["python", "-m", "gateway"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": HTTP_PORT,
                                                                    "metrics": GATEWAY_METRICS_PORT}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    variables = env(c)
    assert variables["GENGATE_HTTP_ADDR"]["value"] == f"0.0.0.0:{HTTP_PORT}"
    assert variables["GENGATE_GATEWAY_METRICS_ADDR"]["value"] == f"0.0.0.0:{GATEWAY_METRICS_PORT}"
    target = variables["GENGATE_SERVICE_ADDR"]["value"]
    match = re.fullmatch(r"dns:///([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", target)
    assert match, f"GENGATE_SERVICE_ADDR {target!r} is not dns:///NAME:PORT"
    svc = one("Service", match.group(1))
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "service"
    assert int(match.group(2)) in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"]
    # The gateway's channel balances round-robin over the addresses DNS returns: a headless
    # Service gives it every pod; a ClusterIP would give one virtual IP (one pod per connection).
    assert svc["spec"].get("clusterIP") == "None", "point the gateway at the headless Service"


# -- Services, labels, PDBs ------------------------------------------------------------------------------

def deployments() -> list[dict]:
    return [d for d in all_docs() if d["kind"] == "Deployment"]


@pytest.mark.parametrize("name, port_name, app_protocol, port", [
    ("gengate-service", "grpc", "grpc", GRPC_PORT),
    ("gengate-service-headless", "grpc", "grpc", GRPC_PORT),
    ("gengate-gateway", "http", "http", HTTP_PORT),
    ("gengate-service", "http-metrics", "http", SERVICE_METRICS_PORT),
    ("gengate-gateway", "http-metrics", "http", GATEWAY_METRICS_PORT),
])
def test_services_have_named_ports_with_app_protocol(name, port_name, app_protocol, port):
    svc = one("Service", name)
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    p = ports[port_name]
    assert (p["appProtocol"], p["port"], p["protocol"]) == (app_protocol, port, "TCP")


@pytest.mark.parametrize("name", ["gengate-service", "gengate-service-headless", "gengate-gateway"])
def test_each_service_selects_one_deployment_and_targets_named_container_ports(name):
    svc = one("Service", name)
    selected = [d for d in deployments()
                if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert len(selected) == 1, f"Service {name} selects {len(selected)} Deployments"
    container_ports = {cp["name"]: cp["containerPort"] for cp in container(selected[0])["ports"]}
    for p in svc["spec"]["ports"]:
        assert p.get("name") and p.get("appProtocol"), f"{name}: every port is named and has an appProtocol"
        assert p["targetPort"] in container_ports, f"{name}: targetPort {p['targetPort']} is not a container port"
        assert container_ports[p["targetPort"]] == p["port"]


def test_labels_are_consistent():
    for doc in all_docs():
        labels = doc["metadata"]["labels"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "gengate", where
        assert labels["app.kubernetes.io/part-of"] == "gengate", where
        assert labels["app.kubernetes.io/component"] in ("service", "gateway"), where
    for d in deployments():
        selector = d["spec"]["selector"]["matchLabels"]
        template = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template.items()
        assert template == d["metadata"]["labels"]
    for pdb in (d for d in all_docs() if d["kind"] == "PodDisruptionBudget"):
        matched = [d for d in deployments()
                   if pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]]
        assert len(matched) == 1, pdb["metadata"]["name"]


def test_selectors_do_not_overlap():
    selectors = [d["spec"]["selector"]["matchLabels"] for d in deployments()]
    for i, a in enumerate(selectors):
        for b in selectors[i + 1:]:
            assert not (a.items() <= b.items() or b.items() <= a.items())


# -- security and image -----------------------------------------------------------------------------------

@pytest.mark.parametrize("deployment", [SERVICE_DEPLOYMENT, GATEWAY_DEPLOYMENT], ids=lambda d: d[1])
def test_pods_run_as_the_images_non_root_user(deployment):
    d = one(*deployment)
    pod, c = pod_spec(d)["securityContext"], container(d)
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] != 0 and pod["runAsUser"] == image_uid()
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod_spec(d)["enableServiceLinks"] is False, "GENGATE_SERVICE_* variables would be injected"
    assert pod_spec(d)["automountServiceAccountToken"] is False


def test_both_deployments_run_the_one_image_named_in_the_kustomization():
    images = {container(d)["image"] for d in deployments()}
    assert len(images) == 1, images
    (image,) = images
    name, _, tag = image.rpartition(":")
    (entry,) = kustomization()["images"]
    assert entry["name"] == name and entry.get("newName", name) == name
    assert str(entry["newTag"]) == tag
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert tag == version, f"image tag {tag} is not the project version {version}"
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert f"-t {image} " in docs and f"-t {image}-cuda " in docs, "docs/deploy.md builds another image name"


def test_every_gengate_variable_used_is_a_real_setting():
    settings_text = (ROOT / "service" / "settings.py").read_text() + (ROOT / "gateway" / "settings.py").read_text()
    used = set()
    for doc in all_docs():
        if doc["kind"] == "Deployment":
            used |= {n for n in env(container(doc)) if n.startswith("GENGATE_")}
    for path in DOCKERFILES:
        used |= set(re.findall(r"\bGENGATE_[A-Z_]+\b", path.read_text()))
    used |= set(re.findall(r"\bGENGATE_[A-Z_]+\b", (ROOT / "docs" / "deploy.md").read_text()))
    unknown = sorted(n for n in used if f'"{n}"' not in settings_text)
    assert not unknown, f"not settings of either process: {unknown}"


# -- Dockerfiles ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def runs(self) -> str:
        return "\n".join(i.args for i in self.all("RUN"))

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for i in self.all("ENV"):
            tokens = shlex.split(i.args)
            if tokens and "=" not in tokens[0]:          # legacy `ENV KEY value`
                values[tokens[0]] = " ".join(tokens[1:])
                continue
            for token in tokens:
                key, _, value = token.partition("=")
                values[key] = value
        return values


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): continuation lines joined, comments dropped."""
    instructions, buffer, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue                                    # comments may sit inside a continuation
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, f"{path.name}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for i in instructions:
        if i.keyword == "FROM":
            parts = i.args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name, []))
        elif not stages:
            assert i.keyword == "ARG", f"{path.name}:{i.line}: only ARG may precede FROM"
            key, _, value = i.args.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append(i)
    return global_args, stages


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def stage_args(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for i in stage.all("ARG"):
        key, _, value = i.args.partition("=")
        values[key] = expand(value.strip('"'), values)
    return values


def image_uid() -> int:
    _, stages = parse_dockerfile(DOCKERFILES[0])
    return int(stages[-1].all("USER")[-1].args.split(":")[0])


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_and_runs_as_non_root(path):
    _, stages = parse_dockerfile(path)
    assert len(stages) >= 2, "build and runtime stages"
    final = stages[-1]
    users = final.all("USER")
    assert users, "the runtime stage sets no USER"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    assert int(uid) == image_uid()
    assert f"--uid {uid}" in final.runs(), "the user is not created in the runtime stage"
    names = {s.name for s in stages[:-1]}
    for copy in final.all("COPY"):
        source = re.search(r"--from=(\S+)", copy.args)
        if source:
            assert source.group(1) in names, f"COPY --from an unknown stage: {copy.args}"
    assert "build-essential" not in final.runs(), "no compiler in the runtime image"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_exposes_both_ports_and_binds_all_interfaces(path):
    _, stages = parse_dockerfile(path)
    final = stages[-1]
    exposed = {int(p.split("/")[0]) for i in final.all("EXPOSE") for p in i.args.split()}
    assert exposed == {GRPC_PORT, HTTP_PORT, SERVICE_METRICS_PORT, GATEWAY_METRICS_PORT}
    variables = final.env()
    assert variables["GENGATE_GRPC_ADDR"] == f"0.0.0.0:{GRPC_PORT}"
    assert variables["GENGATE_HTTP_ADDR"] == f"0.0.0.0:{HTTP_PORT}"
    assert variables["GENGATE_METRICS_ADDR"] == f"0.0.0.0:{SERVICE_METRICS_PORT}"
    assert variables["GENGATE_GATEWAY_METRICS_ADDR"] == f"0.0.0.0:{GATEWAY_METRICS_PORT}"
    assert variables["GENGATE_MODELS"] == "/opt/gengate/models"
    (cmd,) = final.all("CMD")
    assert cmd.args.startswith("[") and yaml.safe_load(cmd.args) == ["python", "-m", "service"], \
        "exec-form CMD, so Python is PID 1 and gets SIGTERM"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_generates_stubs_installs_the_project_and_the_model(path):
    _, stages = parse_dockerfile(path)
    build = stages[0]
    runs = build.runs()
    protoc = re.search(r"python -m grpc_tools\.protoc -Iproto --python_out=\. --pyi_out=\. --grpc_python_out=\. "
                       r"((?:proto/\S+\.proto ?)+)", " ".join(runs.split()))
    assert protoc, "no `python -m grpc_tools.protoc` as in the Makefile"
    named = protoc.group(1).split()
    # Every .proto the Makefile compiles (its wildcard), e.g. through the same glob.
    for proto in sorted((ROOT / "proto").rglob("*.proto")):
        relative = proto.relative_to(ROOT).as_posix()
        assert any(Path(relative).match(pattern) for pattern in named), f"{relative} gets no stubs"
    assert "touch gengate/__init__.py gengate/v1/__init__.py" in runs
    assert re.search(INSTALL, runs), "the project is installed with `pip install .[...]`"
    assert re.search(r"python (-P )?-m service\.store_cli install-default", runs)
    assert build.env()["GENGATE_MODELS"] == "/opt/gengate/models"
    order = [i.args for i in build.all("RUN")]
    protoc = next(n for n, a in enumerate(order) if "grpc_tools.protoc" in a)
    install = next(n for n, a in enumerate(order) if re.search(INSTALL, a))
    model = next(n for n, a in enumerate(order) if "install-default" in a)
    assert protoc < install < model, "stubs before `pip install .` (which packages them), model last"
    assert any("/opt/gengate/models" in c.args for c in stages[-1].all("COPY")), "model not in the image"
    # The store writes blobs 0600 as root; the non-root runtime user must still read them.
    copies = " ".join(c.args for c in stages[-1].all("COPY") if "/opt/gengate/models" in c.args)
    assert "chmod -R a+rX /opt/gengate/models" in runs or "--chown=" in copies, "model unreadable by USER"


INSTALL = r"pip install \"?\.(\[[\w,]+\])?\"?(\s|$)"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_what_both_processes_import(path):
    """The image runs both processes: every package the project ships is copied before it is installed, the
    requirements step installs the runtime extras of both roles and the stub compiler, and the installed copy
    is imported as a whole."""
    _, stages = parse_dockerfile(path)
    build = stages[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    order = build.instructions
    install = next(n for n, i in enumerate(order) if i.keyword == "RUN" and re.search(INSTALL, i.args))
    copied = {a.rstrip("/") for i in order[:install] if i.keyword == "COPY" for a in i.args.split()[:-1]}
    for package in packages:
        if package != "gengate":                                  # generated by protoc in the image
            assert package in copied, f"{path.name}: {package}/ is not copied before `pip install`"
    extras = set(re.search(INSTALL, order[install].args).group(1).strip("[]").split(","))
    assert {"service", "gateway"} <= extras, f"{path.name}: the project is installed without its roles' extras"
    # Run the requirements step's own Python against pyproject.toml: what it prints must cover the extras.
    step = next(i.args for i in order[:install] if i.keyword == "RUN" and "/tmp/requirements.txt" in i.args)
    code = re.search(r'python -c "(.*?)"\s*>\s*/tmp/requirements\.txt', step).group(1)
    printed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    wanted = project["project"]["dependencies"] + [r for x in ("service", "gateway", "build")
                                                   for r in project["project"]["optional-dependencies"][x]]
    assert set(wanted) <= set(printed.stdout.split("\n")), f"{path.name}: requirements miss {set(wanted) - set(printed.stdout.split())}"
    check = next(i.args for i in order[install:] if i.keyword == "RUN" and "python -P -c" in i.args)
    for package in packages:
        assert re.search(rf"\b{package}\b", check), f"{path.name}: the import check does not import {package}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_paths_that_exist(path):
    _, stages = parse_dockerfile(path)
    for stage in stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy.args:
                continue
            *sources, _ = [a for a in copy.args.split() if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}:{copy.line}: COPY {source} does not exist"
    assert (ROOT / "proto/gengate/v1/generate.proto").exists()
    makefile = (ROOT / "Makefile").read_text()
    assert "PROTOS := $(wildcard proto/gengate/v1/*.proto)" in makefile, "the Makefile compiles other protos now"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_uses_python_3_11(path):
    global_args, stages = parse_dockerfile(path)
    for stage in stages:
        base = expand(stage.base, global_args)
        assert "python:3.11" in base or "python3.11" in stage.runs(), f"{stage.name}: no Python 3.11"


def test_cuda_dockerfile_builds_llama_cpp_for_cuda_on_devel_and_runs_on_runtime():
    global_args, stages = parse_dockerfile(DEPLOY / "Dockerfile.cuda")
    build, final = stages[0], stages[-1]
    build_base, final_base = expand(build.base, global_args), expand(final.base, global_args)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-devel-ubuntu[\d.]+", build_base), build_base
    assert final_base == build_base.replace("-devel-", "-runtime-"), "runtime base must match the devel base"
    cmake_args = stage_args(build)["CMAKE_ARGS"]
    assert "-DGGML_CUDA=on" in cmake_args.split()
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in cmake_args.split()
    assert 'CMAKE_ARGS="${CMAKE_ARGS}" pip install' in build.runs()


def test_cpu_dockerfile_builds_portable_code():
    _, stages = parse_dockerfile(DEPLOY / "Dockerfile")
    build = stages[0]
    assert "-DGGML_NATIVE=OFF" in stage_args(build)["CMAKE_ARGS"].split()
    assert 'CMAKE_ARGS="${CMAKE_ARGS}" pip install' in build.runs()
    assert "libgomp1" in stages[-1].runs(), "llama.cpp's CPU backend needs libgomp at run time"


def test_yaml_snippets_in_the_docs_parse():
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4, "docs/deploy.md lost its Envoy/Istio snippets"
    for block in blocks:
        docs = [d for d in yaml.safe_load_all(block) if d]
        assert docs and all(isinstance(d, dict) for d in docs), block[:80]
    assert "timeout: 0s" in text and "grpc_timeout_header_max: 0s" in text
