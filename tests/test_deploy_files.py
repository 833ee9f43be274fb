"""The Dockerfile, .dockerignore and docker-compose.yml, checked without a Docker engine.

`docker-compose config` (Debian's docker-compose 1.29) validates the compose file for real;
the rest reads the files.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
GRAFANA_PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?$")
APP_NAME = "stock-service"  # Prometheus's scrape target is stock-service:8080
APP_PORT = "8080"

Instruction = tuple[str, str]  # (keyword, arguments)


# -- Dockerfile ------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[Instruction]]:
    """The instructions of each stage, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: list[list[Instruction]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        assert stages, f"instruction before the first FROM: {line!r}"
        stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def arguments(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) CMD or HEALTHCHECK CMD."""
    argv = json.loads(args)
    assert isinstance(argv, list), args
    assert all(isinstance(a, str) for a in argv), args
    return argv


def runtime_cmd() -> list[str]:
    (cmd,) = arguments(dockerfile_stages()[-1], "CMD")
    return exec_form(cmd)


def test_dockerfile_is_multi_stage_on_a_pinned_python_slim_base() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "build and runtime stages"
    bases = [arguments(stage, "FROM")[0].split()[0] for stage in stages]
    for base in bases:
        assert PINNED_PYTHON.match(base), f"{base}: pin python:3.11.<patch>-slim-<debian release>"
    assert bases[0] == bases[-1], "the venv's interpreter links need the same base in both"
    runtime = stages[-1]
    assert any(args.startswith("--from=") for args in arguments(runtime, "COPY"))
    assert not arguments(runtime, "RUN") or all(
        "pip install" not in args for args in arguments(runtime, "RUN")
    ), "install in the build stage; the runtime stage copies the venv"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = arguments(dockerfile_stages()[-1], "USER")
    assert users, "the runtime stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_keeps_the_state_store_on_a_volume_the_user_can_write() -> None:
    """So that the image runs --read-only apart from that volume, and a restart keeps the
    budget."""
    runtime = dockerfile_stages()[-1]
    (volume,) = arguments(runtime, "VOLUME")
    (env,) = [args for args in arguments(runtime, "ENV") if args.startswith("STATE_URL=")]
    (workdir,) = arguments(runtime, "WORKDIR")
    state_file = Path(workdir) / env.removeprefix("STATE_URL=sqlite:///")
    assert state_file.parent == Path(volume)
    assert any(
        f"chown 10001:10001 {state_file.parent.name}" in args for args in arguments(runtime, "RUN")
    )


def test_dockerfile_exposes_8080_and_checks_health_with_python() -> None:
    runtime = dockerfile_stages()[-1]
    assert APP_PORT in " ".join(arguments(runtime, "EXPOSE")).split()
    (healthcheck,) = arguments(runtime, "HEALTHCHECK")
    _, cmd, probe = healthcheck.partition("CMD ")
    assert cmd, "HEALTHCHECK ... CMD [...]"
    argv = exec_form(probe)
    assert argv[0] == "python", "the image has no curl"
    assert f"127.0.0.1:{APP_PORT}/healthz" in " ".join(argv)


def test_dockerfile_runs_the_one_worker_launcher_on_8080() -> None:
    # `python -m app` runs a single uvicorn worker (several would mean several breakers,
    # caches and metric registries) and applies the graceful-shutdown settings.
    cmd = runtime_cmd()
    assert cmd[:3] == ["python", "-m", "app"]
    assert cmd[cmd.index("--port") + 1] == APP_PORT
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # noqa: S104 (in its container)
    assert "--simulator-port" not in cmd  # production never falls back to the simulator


def test_dockerfile_copies_nothing_that_dockerignore_excludes() -> None:
    ignored = dockerignore_patterns()
    build = dockerfile_stages()[0]
    sources = [
        source
        for args in arguments(build, "COPY")
        if not args.startswith("--from=")
        for source in args.split()[:-1]
    ]
    assert {"pyproject.toml", "README.md", "app"} <= {s.rstrip("/") for s in sources}
    assert "requirements/runtime.txt" in sources
    for source in sources:
        hits = [p for p in ignored if fnmatch.fnmatch(source.rstrip("/"), p)]
        assert not hits, f"COPY {source}: excluded by .dockerignore {hits}"


def test_pip_install_ships_every_package_under_app() -> None:
    """The image runs the `pip install .` copy of app/, not the source tree: every package
    directory must be in the distribution, or `import app.main` fails in the container."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    packages = [
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "app").rglob("__init__.py")
    ]
    config = setuptools.get("packages", {"find": {}})
    if isinstance(config, list):
        missing = [p for p in packages if p not in config]
    else:
        find = config["find"]
        include = find.get("include", ["*"])
        exclude = find.get("exclude", [])
        missing = [
            p
            for p in packages
            if not any(fnmatch.fnmatch(p, pattern) for pattern in include)
            or any(fnmatch.fnmatch(p, pattern) for pattern in exclude)
        ]
    assert not missing, (
        f"`pip install .` leaves out {missing}: in pyproject.toml, replace "
        '`[tool.setuptools] packages = ["app"]` by `[tool.setuptools.packages.find] '
        'include = ["app*"]`'
    )


def test_pip_install_ships_the_status_page(tmp_path: Path) -> None:
    """GET / serves files that are no Python module: the distribution built from what the
    Dockerfile copies must carry them (pyproject.toml's package-data)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*build, "--wheel-dir", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    page_files = {f"app/status_page/{p.name}" for p in (ROOT / "app" / "status_page").iterdir()}
    assert page_files >= {"app/status_page/index.html", "app/status_page/status.js"}
    assert page_files <= shipped


def pip_commands(stage: list[Instruction]) -> list[list[str]]:
    """Each `pip ...` or `python -m pip ...` command of a stage's RUNs, split into words."""
    commands = []
    for run in arguments(stage, "RUN"):
        for command in re.split(r"&&|;", run):
            words = command.split()
            if words[:3] == ["python", "-m", "pip"]:
                words = words[2:]
            if words[:1] == ["pip"]:
                commands.append(words[1:])
    return commands


def requirement_files(words: list[str]) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word in {"-r", "--requirement"}]


def test_dockerfile_installs_from_the_hashed_lock_and_the_project_without_deps() -> None:
    """Every pip install takes the lock's pins, checked against their hashes, or installs the
    project alone: nothing resolves to whatever is newest on the day of the build."""
    build = dockerfile_stages()[0]
    installs = [words for words in pip_commands(build) if words[0] == "install"]
    locked = [words for words in installs if "--require-hashes" in words]
    assert any("requirements/runtime.txt" in requirement_files(words) for words in locked), (
        "pip install --require-hashes -r requirements/runtime.txt"
    )
    for words in installs:
        assert words in locked or ("--no-deps" in words and words[-1] == "."), (
            f"pip {' '.join(words)}: install from the lock with --require-hashes, or the "
            "project with --no-deps"
        )
    copied = " ".join(arguments(build, "COPY"))
    for words in locked:
        for lock in requirement_files(words):
            assert lock in copied, f"{lock} is not copied into the build stage"
            assert (ROOT / lock).is_file(), f"{lock} is missing: make lock"


def test_dockerfile_leaves_no_pip_or_setuptools_in_the_runtime_venv() -> None:
    build, runtime = dockerfile_stages()[0], dockerfile_stages()[-1]
    commands = pip_commands(build)
    assert commands, "the build stage installs with pip"
    last = commands[-1]
    assert last[0] == "uninstall", "pip and setuptools leave the venv after the last install"
    assert {"pip", "setuptools"} <= set(last[1:])
    assert {"-y", "--yes"} & set(last), "uninstall without a prompt"
    assert "/opt/venv /opt/venv" in " ".join(arguments(runtime, "COPY")), "the runtime copies it"
    assert not pip_commands(runtime), "the runtime stage runs no pip"


# -- .dockerignore ---------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"]


@pytest.mark.parametrize("path", [".git", ".venv", "tests", ".env", ".mypy_cache", "grafana"])
def test_dockerignore_keeps_out(path: str) -> None:
    assert any(fnmatch.fnmatch(path, pattern) for pattern in dockerignore_patterns())


# -- docker-compose.yml: the real docker-compose ---------------------------------------------


def docker_compose_config(
    *options: str, compose_file: Path = COMPOSE, api_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is missing: apt-get install docker-compose"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.pop("ALPHAVANTAGE_API_KEY", None)
    if api_key is not None:
        env["ALPHAVANTAGE_API_KEY"] = api_key
    return subprocess.run(
        [docker_compose, "--project-directory", str(ROOT), "-f", str(compose_file), *options],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.parametrize("api_key", [None, "some-key"], ids=["no-key", "key"])
@pytest.mark.parametrize("profile", [None, "demo", "live"])
def test_docker_compose_config_accepts_the_file(profile: str | None, api_key: str | None) -> None:
    options = ["--profile", profile] if profile else []
    result = docker_compose_config(*options, "config", "-q", api_key=api_key)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr  # e.g. a variable without a default


def test_docker_compose_config_does_reject_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  web:\n    image: x:1\n    ports: 8080\n", encoding="utf-8")
    result = docker_compose_config("config", "-q", compose_file=broken)
    assert result.returncode != 0


# -- docker-compose.yml: its content ---------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    with COMPOSE.open(encoding="utf-8") as f:
        compose = yaml.safe_load(f)  # resolves the `<<: *anchor` merges
    loaded = compose["services"]
    assert isinstance(loaded, dict)
    return loaded


def active(services: dict[str, dict[str, Any]], profile: str) -> dict[str, dict[str, Any]]:
    """The services `docker compose --profile <profile> up` starts."""
    return {
        name: service
        for name, service in services.items()
        if not service.get("profiles") or profile in service["profiles"]
    }


def network_names(name: str, service: dict[str, Any]) -> set[str]:
    networks = service.get("networks") or {}
    aliases = networks.get("default", {}).get("aliases", []) if isinstance(networks, dict) else []
    return {name, *aliases}


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name}: no image and no build"
            continue
        reference = image.split("@")[0]
        _, colon, tag = reference.rpartition(":")
        assert colon, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if "build" not in service:  # pulled: pin a version
            assert re.search(r"\d", tag), f"{name}: {image} is not a version"


def test_prometheus_mounts_its_config_read_only(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_mounts_what_its_provisioning_loads(services: dict[str, dict[str, Any]]) -> None:
    volumes = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    with GRAFANA_PROVIDERS.open(encoding="utf-8") as f:
        (provider,) = yaml.safe_load(f)["providers"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in volumes


def test_every_depends_on_waits_for_health(services: dict[str, dict[str, Any]]) -> None:
    dockerfile_has_healthcheck = bool(arguments(dockerfile_stages()[-1], "HEALTHCHECK"))
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends_on.items():
            assert spec.get("condition") == "service_healthy", f"{name} -> {dependency}"
            target = services[dependency]
            has_check = "healthcheck" in target or (
                "build" in target and dockerfile_has_healthcheck
            )
            assert has_check, f"{dependency} has no healthcheck for {name} to wait on"
            shared = set(target.get("profiles", [])) >= set(service.get("profiles", []))
            assert shared or not target.get("profiles"), f"{name} -> {dependency}: profiles"


@pytest.mark.parametrize("profile", ["demo", "live"])
def test_one_service_answers_as_the_scrape_target(
    services: dict[str, dict[str, Any]], profile: str
) -> None:
    answering = [
        name
        for name, service in active(services, profile).items()
        if APP_NAME in network_names(name, service)
    ]
    assert len(answering) == 1, f"--profile {profile}: {answering} answer as {APP_NAME}"
    (name,) = answering
    assert "command" not in active(services, profile)[name], "it runs the image's uvicorn CMD"


def test_prometheus_discovers_every_replica_of_the_service_name_on_its_port() -> None:
    with PROMETHEUS_CONFIG.open(encoding="utf-8") as f:
        config = yaml.safe_load(f)
    discovered = {
        (name, str(discovery["port"]))
        for job in config["scrape_configs"]
        for discovery in job.get("dns_sd_configs", [])
        for name in discovery["names"]
    }
    assert (APP_NAME, APP_PORT) in discovered


def test_demo_service_uses_the_simulator(services: dict[str, dict[str, Any]]) -> None:
    demo = active(services, "demo")
    (service,) = [s for n, s in demo.items() if APP_NAME in network_names(n, s)]
    environment = service["environment"]
    assert environment["ALPHAVANTAGE_BASE_URL"] == "http://simulator:8081/query"
    assert environment["ALPHAVANTAGE_API_KEY"]
    # Pacing and the daily quota off, as `make run` has them against the simulator.
    assert environment["UPSTREAM_RATE_PER_SECOND"] == "${UPSTREAM_RATE_PER_SECOND:-0}"
    assert environment["UPSTREAM_DAILY_QUOTA"] == "${UPSTREAM_DAILY_QUOTA:-0}"
    assert demo["simulator"]["command"][:3] == ["python", "-m", "app.simulator"]


def test_live_service_takes_the_key_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    """With a default, not `:?`: compose interpolates every profile, and a required variable
    would refuse the keyless demo too. The service itself refuses to start without a key."""
    key = services[APP_NAME]["environment"]["ALPHAVANTAGE_API_KEY"]
    assert key.startswith("${ALPHAVANTAGE_API_KEY")
    assert ":?" not in key


def test_stop_grace_period_outlasts_drain_and_graceful_shutdown(
    services: dict[str, dict[str, Any]],
) -> None:
    defaults = Settings.model_fields
    drain = defaults["shutdown_drain_seconds"].default
    grace = defaults["shutdown_grace_seconds"].default
    graceful = drain + grace
    for name, service in services.items():
        if "build" in service and "command" not in service:
            period = service.get("stop_grace_period", "10s")
            assert re.fullmatch(r"\d+s", period), f"{name}: stop_grace_period {period}"
            assert int(period[:-1]) > graceful, f"{name}: stop_grace_period {period}"


def test_readme_docker_run_outlasts_drain_and_graceful_shutdown() -> None:
    """Plain `docker run` waits 10 s before SIGKILL unless told otherwise."""
    defaults = Settings.model_fields
    graceful = (
        defaults["shutdown_drain_seconds"].default + defaults["shutdown_grace_seconds"].default
    )
    runs = [
        line
        for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("docker run ")
    ]
    assert runs, "the README shows how to run the image without compose"
    for run in runs:
        timeout = re.search(r"--stop-timeout[ =](\d+)", run)
        assert timeout, f"{run}: --stop-timeout"
        assert int(timeout[1]) > graceful, run


@pytest.mark.parametrize("profile", ["demo", "live"])
def test_the_replicas_share_one_append_only_redis(
    services: dict[str, dict[str, Any]], profile: str
) -> None:
    (name,) = [n for n, s in active(services, profile).items() if APP_NAME in network_names(n, s)]
    service = services[name]
    assert service["deploy"]["replicas"] == 3
    assert service["environment"]["STATE_URL"] == "redis://redis:6379/0"
    assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"


def test_every_service_restarts_unless_stopped(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name


@pytest.mark.parametrize("document", [".env.example", "README.md"])
def test_every_setting_is_documented(document: str) -> None:
    text = (ROOT / document).read_text()
    missing = [
        name.upper()
        for name in Settings.model_fields
        if not re.search(rf"^(\| `)?{name.upper()}\b", text, re.MULTILINE)
    ]
    assert not missing, f"{document} does not document {missing}"
