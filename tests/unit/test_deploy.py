"""The deployment artefacts: ``deploy/k8s/``, ``docker-compose.yml``, the Prometheus and Grafana
provisioning.  No Docker engine and no cluster: the Kubernetes manifests are validated against
the Kubernetes JSON schemas (``kubernetes_validate``, strict), and every command and environment
is parsed by the same code the processes run (``processors`` CLI parser, settings, the
production check), so a renamed setting, a dropped app or a port mismatch fails here."""

from __future__ import annotations

import copy
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from processors.apps.registry import app_names, app_spec
from processors.cli import build_parser, run_settings
from processors.production import production_problems
from processors.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
DOCKERFILE = ROOT / "Dockerfile"

KUBERNETES_VERSION = "1.37.0"
"""The schemas the manifests are validated against: the newest kubernetes-validate 1.37 ships."""

STANDALONE_MANIFESTS = {"secret.example.yaml", "topics-apply.job.yaml", "schemas-register.job.yaml"}
"""Files in deploy/k8s that are deliberately not kustomization resources."""

SECRET_NAME = "processors-secrets"
PROCESSORS_IMAGE = "insurance-processors"
API_PORT = 8080
IMAGE_UID = 10001

PROCESS_VARIABLES = {"PROCESSORS_LOG_LEVEL", "PROCESSORS_LOG_FORMAT", "PROCESSORS_WEBHOOK_ENCRYPTION_KEY"}
"""``PROCESSORS_*`` variables read outside :class:`Settings` (logging, the webhook key)."""

Doc = dict[str, Any]


# --- shared helpers -----------------------------------------------------------------------------


def _parse_cli(args: list[str]) -> Any:
    """``args`` as ``processors`` parses them; a usage error fails the test with the arguments."""
    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"`processors {shlex.join(args)}` is refused by the CLI (exit {exc.code})")


def _settings(args: list[str], env: Mapping[str, str]) -> tuple[Any, Settings]:
    """The parsed ``processors run`` arguments and the settings a process started with ``args``
    and exactly the environment ``env`` would load."""
    parsed = _parse_cli(args)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("PROCESSORS_") or name == "KAFKA_BOOTSTRAP_SERVERS":
                mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        return parsed, run_settings(parsed)


def _unknown_variables(env: Mapping[str, str]) -> list[str]:
    """``PROCESSORS_*`` names that no setting reads (a misspelt top-level name is otherwise ignored)."""
    fields = set(Settings.model_fields)
    unknown = []
    for name in env:
        if not name.startswith("PROCESSORS_") or name in PROCESS_VARIABLES:
            continue
        if name.removeprefix("PROCESSORS_").split("__")[0].lower() not in fields:
            unknown.append(name)
    return unknown


def _apps_run(args: list[str]) -> list[str]:
    return list(_parse_cli(args).apps) if args and args[0] == "run" else []


# --- Kubernetes ---------------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[Path, Doc]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def _resources() -> list[tuple[Path, Doc]]:
    """The documents ``kubectl apply -k deploy/k8s`` applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    return [(path, doc) for path, doc in _k8s_documents() if path.name in listed]


def _workloads() -> dict[str, list[Doc]]:
    """Deployments and StatefulSets applied, by the apps their container runs."""
    found: dict[str, list[Doc]] = {}
    for _path, doc in _resources():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for app in _apps_run(_container(doc)["args"]):
                found.setdefault(app, []).append(doc)
    return found


def _container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container per pod"
    return dict(containers[0])


def _example_secret() -> dict[str, str]:
    doc = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert doc["kind"] == "Secret"
    assert doc["metadata"]["name"] == SECRET_NAME
    return {str(k): str(v) for k, v in doc["stringData"].items()}


def _pod_env(workload: Doc, secret: Mapping[str, str] | None) -> dict[str, str]:
    """The environment the container gets: ConfigMaps, values, the Secret's keys, and the
    downward API's pod name.  ``secret=None`` leaves out every Secret key (the settings'
    defaults apply); with a Secret, a required key it lacks fails."""
    configmaps = {
        doc["metadata"]["name"]: doc.get("data", {}) for _p, doc in _resources() if doc["kind"] == "ConfigMap"
    }
    name = workload["metadata"]["name"]
    pod_name = f"{name}-0" if workload["kind"] == "StatefulSet" else f"{name}-5d8f6c7b9-x2x7q"
    container = _container(workload)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in configmaps, f"{name}: envFrom names ConfigMap {ref}, which is not applied"
        env.update(configmaps[ref])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == SECRET_NAME, f"{name}: {var['name']} reads Secret {ref['name']}"
            if secret is not None and ref["key"] in secret:
                env[var["name"]] = secret[ref["key"]]
            else:
                assert secret is None or ref.get("optional"), f"{name}: no key {ref['key']} in the Secret"
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name", var["name"]
            env[var["name"]] = pod_name
        else:
            pytest.fail(f"{name}: {var['name']} comes from an unexpected source {sorted(source)}")
    return env


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    docs = _k8s_documents()
    assert len(docs) >= 15
    problems = []
    for path, doc in docs:
        if doc.get("kind") == "Kustomization":
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{path.name}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    """The schema check has teeth: a field Kubernetes does not know fails it."""
    workload = copy.deepcopy(_workloads()["payments"][0])
    workload["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_applies_every_manifest_but_the_example_secret_and_the_job() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - STANDALONE_MANIFESTS
    assert not [doc for _p, doc in _resources() if doc["kind"] == "Secret"], (
        "secrets are never applied from here"
    )
    images = {image["name"] for image in kustomization["images"]}
    for docs in _workloads().values():
        for workload in docs:
            assert _container(workload)["image"] in images, "the kustomization sets every image's tag"


def test_every_app_has_exactly_one_workload_and_the_transactional_ones_are_statefulsets() -> None:
    workloads = _workloads()
    assert set(workloads) == set(app_names()), "one workload per app `processors run` accepts"
    for app, docs in workloads.items():
        assert len(docs) == 1, f"{app} runs in {len(docs)} workloads"
        expected = "StatefulSet" if app_spec(app).transactional else "Deployment"
        assert docs[0]["kind"] == expected, app
        assert _apps_run(_container(docs[0])["args"]) == [app], "one app per workload"
    assert workloads["bordereaux"][0]["kind"] == "StatefulSet"


def test_every_workload_is_probed_bounded_and_non_root() -> None:
    for app, (workload,) in _workloads().items():
        pod = workload["spec"]["template"]["spec"]
        container = _container(workload)
        parsed = _parse_cli(container["args"])
        assert parsed.api, f"{app}: the API serves the probes"
        assert parsed.api_host == "0.0.0.0", f"{app}: the API must listen beyond the pod's loopback"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == parsed.api_port == API_PORT, app
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", app
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", app
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in ("http", API_PORT), f"{app} {probe}"
        requests = container["resources"]["requests"]
        limits = container["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests), app
        assert "memory" in limits, app
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, app
        assert security["runAsUser"] == IMAGE_UID, app
        assert security["seccompProfile"]["type"] == "RuntimeDefault", app
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, app
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, app
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], app
        assert pod["automountServiceAccountToken"] is False, app
        grace = pod["terminationGracePeriodSeconds"]
        assert grace > Settings().engine.shutdown_grace_s, f"{app}: SIGKILL before the drain ends"


def test_every_workload_has_a_disruption_budget_selecting_its_pods_only() -> None:
    budgets = [doc for _p, doc in _resources() if doc["kind"] == "PodDisruptionBudget"]
    workloads = [w for (w,) in _workloads().values()]
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert _selects(workload["spec"]["selector"]["matchLabels"], labels)
        mine = [b for b in budgets if _selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(mine) == 1, f"{workload['metadata']['name']}: {len(mine)} disruption budgets"
        others = [
            w
            for w in workloads
            if w is not workload
            and _selects(
                mine[0]["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert not others, f"the budget of {workload['metadata']['name']} also selects other pods"
    assert len(budgets) == len(workloads)


def test_services_select_one_workload_and_the_statefulset_has_its_headless_service() -> None:
    services = {doc["metadata"]["name"]: doc for _p, doc in _resources() if doc["kind"] == "Service"}
    workloads = [w for (w,) in _workloads().values()]
    for name, service in services.items():
        selected = [
            w
            for w in workloads
            if _selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        port_names = {p["name"] for p in _container(selected[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: no container port {port['targetPort']}"
    assert "webhooks" in services, "the webhooks API needs a Service"
    for workload in workloads:
        if workload["kind"] == "StatefulSet":
            headless = services[workload["spec"]["serviceName"]]
            assert headless["spec"]["clusterIP"] == "None"


def test_the_workloads_pass_the_production_check_given_the_secret() -> None:
    secret = _example_secret()
    for app, (workload,) in _workloads().items():
        env = _pod_env(workload, secret)
        assert env.get("PROCESSORS_ENV") == "production", app
        assert not _unknown_variables(env), f"{app}: {_unknown_variables(env)}"
        parsed, settings = _settings(_container(workload)["args"], env)
        assert settings.env == "production", app
        assert settings.api.enabled, app
        assert production_problems(settings, parsed.apps, api=True) == [], app
        # and without the Secret the same workload would be refused: the check is not vacuous
        _parsed, bare = _settings(_container(workload)["args"], _pod_env(workload, None))
        assert production_problems(bare, parsed.apps, api=True), app
        if app_spec(app).transactional:
            assert settings.bordereaux.instance_id == f"{workload['metadata']['name']}-0", app
    (regulatory,) = _workloads()["regulatory"]
    _parsed, settings = _settings(_container(regulatory)["args"], _pod_env(regulatory, secret))
    assert settings.regulatory.sftp.known_host_key, "the regulatory app refuses to start without the pin"


def test_the_example_secret_holds_placeholders_only() -> None:
    for key, value in _example_secret().items():
        assert "REPLACE_ME" in value or value == "{}", f"{key} looks like a real value"


def test_the_image_user_is_the_one_the_pods_run_as_and_it_ships_the_catalogues() -> None:
    dockerfile = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\d+)(?::(\d+))?\s*$", dockerfile, re.MULTILINE)
    assert users, "the image names its user"
    assert all(int(uid) == IMAGE_UID for uid, _gid in users), users
    copied = re.search(r"^COPY (topics\.yaml.*) \./$", dockerfile, re.MULTILINE)
    assert copied is not None
    assert {"topics.yaml", "resilience.yaml", "treaties.yaml"} <= set(copied.group(1).split())


# --- docker compose -----------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def _interpolate(value: Any) -> Any:
    """Compose's variable substitution with no variable set: defaults, ``$$`` for ``$``."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: "$" if m.group(0) == "$$" else (m.group("default") or ""), value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


def _services() -> dict[str, Doc]:
    compose = _interpolate(yaml.safe_load(COMPOSE.read_text()))
    return dict(compose["services"])


def _args(service: Doc) -> list[str] | None:
    """The arguments of ``processors`` a service of the processors image runs (None: not the CLI)."""
    if not str(service.get("image", "")).startswith(PROCESSORS_IMAGE + ":"):
        return None
    command = service.get("command", [])
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        assert isinstance(command, list), "commands are lists, never shell strings"
        return [str(c) for c in command]
    if entrypoint == ["/bin/sh", "-c"]:
        execs = [line.strip() for line in command[0].splitlines() if line.strip().startswith("exec ")]
        assert len(execs) == 1, "a shell wrapper ends in one `exec processors ...`"
        words = shlex.split(execs[0])
        assert words[:2] == ["exec", "processors"], execs[0]
        return words[2:]
    return None


def _environment(service: Doc) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environments are mappings"
    return {str(k): str(v) for k, v in env.items()}


def _app_services() -> dict[str, tuple[str, Doc]]:
    found: dict[str, tuple[str, Doc]] = {}
    for name, service in _services().items():
        args = _args(service)
        for app in _apps_run(args or []):
            assert app not in found, f"{app} runs in both {found[app][0]} and {name}"
            found[app] = (name, service)
    return found


def _one_shots(services: Mapping[str, Doc]) -> set[str]:
    """Jobs that run to completion: awaited with service_completed_successfully, or CLI tools."""
    awaited = {
        target
        for service in services.values()
        for target, how in dict(service.get("depends_on", {})).items()
        if how.get("condition") == "service_completed_successfully"
    }
    return awaited | {name for name, service in services.items() if service.get("profiles")}


def _flag_ints(args: list[str], *flags: str) -> set[int]:
    return {int(args[i + 1]) for i, arg in enumerate(args[:-1]) if arg in flags}


def _listening_ports(service: Doc) -> set[int]:
    """Ports a service listens on inside the network: published container ports, port flags,
    its API port and its ``*LISTENERS`` settings."""
    ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}
    args = _args(service) or []
    ports |= _flag_ints(args, "--port", "--sftp-port", "--api-port")
    env = _environment(service)
    if _apps_run(args):
        ports.add(int(env.get("PROCESSORS_API__PORT", API_PORT)))
    for name, value in env.items():
        if name.endswith("LISTENERS"):
            ports |= {int(p) for p in re.findall(r":(\d+)\b", value)}
    return ports


def _host_ports(service: Doc) -> list[int]:
    published = []
    for entry in service.get("ports", []):
        assert isinstance(entry, str), "ports are written [ip:]host:container"
        parts = entry.split("/")[0].split(":")
        assert len(parts) in (2, 3), entry
        published.append(int(parts[-2]))
    return published


def _bind_mounts(service: Doc) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            mounts.append((ROOT / source, target))
    return mounts


def _host_path(service: Doc, container_path: str) -> Path | None:
    """The repository file a bind mount of ``service`` shows at ``container_path``."""
    for source, target in _bind_mounts(service):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    return None


def test_compose_runs_every_app_in_a_service_of_its_own() -> None:
    apps = _app_services()
    assert set(apps) == set(app_names()), "every app `processors run` accepts has a compose service"
    for app, (name, service) in apps.items():
        assert name == app
        assert _apps_run(_args(service) or []) == [app]


def test_compose_commands_are_ones_the_cli_accepts_with_settings_that_load() -> None:
    checked = 0
    for name, service in _services().items():
        args = _args(service)
        if args is None:
            continue
        _parse_cli(args)
        checked += 1
        env = _environment(service)
        assert not _unknown_variables(env), f"{name}: {_unknown_variables(env)}"
        if _apps_run(args):
            _parsed, settings = _settings(args, env)
            assert settings.api.enabled, f"{name}: the healthcheck and the scrape need the API"
            assert settings.api.host == "0.0.0.0", f"{name}: the API must listen beyond the loopback"
            assert settings.env == "development", name
            assert settings.schema_registry_url, f"{name}: the stack runs a Schema Registry"
    assert checked >= len(app_names()) + 5  # apps, sandboxes, topics, tools


APP_ADDRESSES: dict[str, Callable[[Settings], list[str]]] = {
    "payments": lambda s: [s.payments.gateway.base_url],
    "kyc": lambda s: [s.kyc.provider.base_url],
    "bordereaux-delivery": lambda s: [
        s.reinsurance.reinsurer.base_url,
        *(r.base_url for r in s.reinsurance.reinsurers.values()),
    ],
    "regulatory": lambda s: [f"sftp://{s.regulatory.sftp.host}:{s.regulatory.sftp.port}"],
}


def test_compose_apps_reach_the_broker_the_registry_and_their_sandboxes() -> None:
    services = _services()

    def target(address: str, what: str) -> Doc:
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        assert parts.hostname in services, f"{what}: {address} names no compose service"
        assert parts.port in _listening_ports(services[parts.hostname]), (
            f"{what}: nothing listens on {address}"
        )
        return services[parts.hostname]

    for app, (name, service) in _app_services().items():
        _parsed, settings = _settings(_args(service) or [], _environment(service))
        for server in settings.bootstrap_servers.split(","):
            target(server, f"{name} bootstrap")
        target(str(settings.schema_registry_url), f"{name} schema registry")
        for address in APP_ADDRESSES.get(app, lambda _s: [])(settings):
            reached = target(address, f"{name} endpoint")
            assert (_args(reached) or [""])[0] == "sandbox", f"{name}: {address} is not a sandbox"
        for allowed in settings.webhooks.allow:
            assert allowed in services, f"{name}: SSRF allow-list entry {allowed} is no compose service"
    used = {a for _n, s in _app_services().values() for a in APP_ADDRESSES}
    assert used == set(APP_ADDRESSES), "every app with an external endpoint is checked"


def test_every_long_running_compose_service_has_a_healthcheck() -> None:
    services = _services()
    one_shots = _one_shots(services)
    assert {"topics", "dev-secrets", "tools"} <= one_shots
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart") == "no", f"{name} runs once"
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        assert check["test"], f"{name} has an empty healthcheck"
    for app, (name, service) in _app_services().items():
        assert name not in one_shots, app
        test = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{API_PORT}/healthz" in test, f"{name}: probe /healthz on the API port"


def test_no_two_compose_services_publish_the_same_host_port_or_sandboxes_share_one() -> None:
    seen: dict[int, str] = {}
    for name, service in _services().items():
        for port in _host_ports(service):
            assert port not in seen, f"{name} and {seen[port]} both publish host port {port}"
            seen[port] = name
    assert seen.get(API_PORT) == "webhooks", "the webhooks API is on the port the docs name"
    sandbox_ports: dict[int, str] = {}
    sandboxes = 0
    for name, service in _services().items():
        args = _args(service) or []
        if args[:1] != ["sandbox"]:
            continue
        sandboxes += 1
        parsed = _parse_cli(args)
        own = [parsed.port, *([parsed.sftp_port] if parsed.sftp else [])]
        for port in own:
            assert port not in sandbox_ports, f"{name} and {sandbox_ports[port]} both listen on {port}"
            sandbox_ports[port] = name
            assert port in _host_ports(service), f"{name} listens on {port} but does not publish it"
    assert sandboxes >= 5  # gateway, partners, reinsurer, KYC, regulator


def test_compose_dependencies_exist_and_their_conditions_can_hold() -> None:
    services = _services()
    one_shots = _one_shots(services)
    for name, service in services.items():
        for target, how in dict(service.get("depends_on", {})).items():
            assert target in services, f"{name} depends on {target}, which is not a service"
            condition = how.get("condition")
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s missing healthcheck"
            elif condition == "service_completed_successfully":
                assert target in one_shots
            else:
                assert condition == "service_started", f"{name}: {condition}"

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle {' -> '.join((*path, name))}"
        for target in dict(services[name].get("depends_on", {})):
            visit(target, (*path, name))

    for name in services:
        visit(name, ())
    for _app, (name, service) in _app_services().items():
        assert "topics" in service["depends_on"], f"{name} starts before the topics exist"


def test_compose_named_volumes_are_declared() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    declared = set(compose.get("volumes", {}))
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith(("./", "/")):
                assert Path(ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source}"


# --- Prometheus and Grafana ----------------------------------------------------------------------


def _targets(config: Doc) -> Iterator[tuple[Doc, Doc, str]]:
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            for address in group["targets"]:
                yield job, group, address


def test_prometheus_scrapes_every_app_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    services = _services()
    apps = _app_services()
    scraped: dict[str, int] = {}
    for job, group, address in _targets(config):
        host, _, port = address.rpartition(":")
        if host in services:
            assert int(port) in _listening_ports(services[host]), address
        if host in {name for name, _s in apps.values()}:
            assert job.get("metrics_path", "/metrics") == "/metrics"
            assert "app" not in group.get("labels", {}), "the metrics carry their own app label"
            scraped[host] = int(port)
    assert scraped == {name: API_PORT for name, _s in apps.values()}

    prometheus = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    assert _host_path(prometheus, flags["--config.file"]) == PROMETHEUS
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        source = _host_path(prometheus, rule_file)
        assert source is not None, f"{rule_file} is not mounted from the repository"
        assert source.is_file(), source
        assert yaml.safe_load(source.read_text())["groups"]


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard() -> None:
    services = _services()
    grafana = services["grafana"]
    assert _host_path(grafana, "/etc/grafana/provisioning") == PROVISIONING

    datasources = [
        source
        for path in sorted((PROVISIONING / "datasources").glob("*.yml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert [s["type"] for s in datasources] == ["prometheus"]
    url = urlsplit(datasources[0]["url"])
    assert url.hostname == "prometheus"
    assert url.port in _listening_ports(services["prometheus"])
    assert datasources[0]["isDefault"] is True

    providers = [
        provider
        for path in sorted((PROVISIONING / "dashboards").glob("*.yml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert providers
    for provider in providers:
        folder = provider["options"]["path"].rstrip("/")
        shown = [
            source
            for source, target in _bind_mounts(grafana)
            if target == folder or target.startswith(folder + "/")
        ]
        assert shown, f"nothing is mounted under the provider's path {folder}"
        for source in shown:
            assert source.is_file(), source
            assert source.suffix == ".json", source
            dashboard = yaml.safe_load(source.read_text())
            assert dashboard["uid"], source
            assert dashboard["panels"], source
