"""Static checks of the Dockerfile and .dockerignore (no Docker engine needed).

One Dockerfile builds the three images, told which by build arguments. It is parsed as a
file and read as Docker would build it for each service (the arguments expanded), then
compared with the code: the settings models, each service's ``main`` module and the pinned
requirements; .dockerignore is matched as Docker does.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import posixpath
import re
import shlex
from collections.abc import Mapping
from typing import Any, NamedTuple
from unittest import mock

import pytest

from container_checks import ROOT, SECRET_NAME, SERVICES, SETTING_NAMES, Service

# PyYAML ships no type information (and types-PyYAML is not a dev requirement).
yaml: Any = importlib.import_module("yaml")

by_service = pytest.mark.parametrize("service", SERVICES, ids=[s.name for s in SERVICES])


class Instruction(NamedTuple):
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return instructions


_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
RUN_TIME = frozenset({"CMD", "ENTRYPOINT", "HEALTHCHECK"})
"""Instructions Docker leaves as written: the container expands them when it runs them."""


def substitute(text: str, values: Mapping[str, str]) -> str:
    """$NAME and ${NAME} replaced where values has NAME; anything else (the base image's $PATH) stays."""
    return _VARIABLE.sub(lambda m: values.get(m[1] or m[2], m[0]), text)


def as_built(instructions: list[Instruction], build_args: Mapping[str, str]) -> list[Instruction]:
    """The instructions as `docker build --build-arg ...` reads them.

    A stage sees the ARGs it declares (the build's value, else the default, else empty) and
    the ENVs set before, expanded in every build-time instruction (in a RUN its shell does
    it, with the same values); ARGs before the first FROM only in FROM lines. CMD and
    HEALTHCHECK stay as written (see `executed`).
    """
    built: list[Instruction] = []
    global_args: dict[str, str] = {}
    scope: dict[str, str] | None = None
    for ins in instructions:
        if ins.keyword == "FROM":
            built.append(Instruction("FROM", substitute(ins.args, global_args)))
            scope = {}
            continue
        args = ins.args if ins.keyword in RUN_TIME else substitute(ins.args, global_args if scope is None else scope)
        built.append(Instruction(ins.keyword, args))
        if ins.keyword == "ARG":
            for name, default in env_assignments(Instruction("ARG", args)).items():
                fallback = default if default is not None else global_args.get(name, "")
                (global_args if scope is None else scope)[name] = build_args.get(name, fallback)
        elif ins.keyword == "ENV" and scope is not None:
            scope.update({name: value or "" for name, value in env_assignments(Instruction("ENV", args)).items()})
    return built


def required_build_args(instructions: list[Instruction]) -> set[str]:
    """ARGs declared without a default: every build must pass them."""
    return {
        name
        for ins in instructions
        if ins.keyword == "ARG"
        for name, default in env_assignments(ins).items()
        if default is None
    }


def image_env(stage: list[Instruction]) -> dict[str, str]:
    """The variables a stage's ENVs set (already expanded by as_built)."""
    return {k: v or "" for ins in stage if ins.keyword == "ENV" for k, v in env_assignments(ins).items()}


def sh_expand(script: str, env: Mapping[str, str]) -> str:
    """$NAME and ${NAME} expanded as /bin/sh does (not between single quotes; unset is empty)."""
    out: list[str] = []
    single = double = False
    i = 0
    while i < len(script):
        char = script[i]
        variable = _VARIABLE.match(script, i) if char == "$" and not single else None
        if variable:
            out.append(env.get(variable[1] or variable[2], ""))
            i = variable.end()
            continue
        if char == "\\" and not single:
            out.append(script[i : i + 2])
            i += 2
            continue
        single ^= char == "'" and not double
        double ^= char == '"' and not single
        out.append(char)
        i += 1
    return "".join(out)


class Command(NamedTuple):
    argv: list[str]
    via_shell: bool  # argv is a script's words, as /bin/sh runs them


def executed(args: str, env: Mapping[str, str]) -> Command:
    """What a CMD (or HEALTHCHECK CMD) runs. The exec (JSON) form runs as written, unless it
    is `sh -c <script>`; the shell form runs as `/bin/sh -c <script>`. A script is given as
    its words after the shell expanded the image's environment in it."""
    argv = exec_form(args) if args.lstrip().startswith("[") else ["/bin/sh", "-c", args]
    if len(argv) == 3 and argv[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        return Command(shlex.split(sh_expand(argv[2], env)), via_shell=True)
    return Command(argv, via_shell=False)


def probed_url(snippet: str, env: Mapping[str, str]) -> str:
    """The URL a `python -c` health check opens: run here, in the image's environment, with
    urlopen stubbed."""
    opened: list[str] = []
    with (
        mock.patch.dict(os.environ, env, clear=True),
        mock.patch("urllib.request.urlopen", lambda url, **_: opened.append(url)),
    ):
        exec(compile(snippet, "<healthcheck>", "exec"), {})  # noqa: S102 - our own check, urlopen stubbed
    (url,) = opened
    return url


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    start = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[start:]


def env_assignments(ins: Instruction) -> dict[str, str | None]:
    """Names set by an ENV or ARG instruction (None: an ARG without a default)."""
    words = shlex.split(ins.args)
    if ins.keyword == "ENV" and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}  # legacy `ENV NAME value`
    pairs = (word.partition("=") for word in words)
    return {name: (value if sep else None) for name, sep, value in pairs}


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return [str(item) for item in value]


def copy_sources(ins: Instruction) -> tuple[list[str], str]:
    words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
    return words[:-1], words[-1]


def secret_assignments(text: str) -> list[str]:
    """ENV/ARG names that look like credentials and carry a value."""
    return [
        name
        for ins in parse_dockerfile(text)
        if ins.keyword in ("ENV", "ARG")
        for name, value in env_assignments(ins).items()
        if SECRET_NAME.search(name) and value
    ]


@pytest.fixture(scope="module")
def dockerfiles() -> dict[str, list[Instruction]]:
    """Each service's Dockerfile as built with its build arguments."""
    return {s.name: as_built(parse_dockerfile(s.dockerfile.read_text()), s.build_args) for s in SERVICES}


@by_service
def test_build_arguments_name_the_service(service: Service) -> None:
    """The arguments without a default are exactly the ones each build passes (container_checks)."""
    assert required_build_args(parse_dockerfile(service.dockerfile.read_text())) == set(service.build_args)


def with_matrix(value: object, entry: Mapping[str, object]) -> str:
    """A workflow value with its ${{ matrix.<key> }} expressions replaced by one matrix entry's values."""
    return re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", lambda m: str(entry[m[1]]), str(value))


def test_the_image_workflow_builds_each_service_with_its_arguments() -> None:
    """.github/workflows/images.yml builds the Dockerfile once per service with that service's arguments."""
    job = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yml").read_text())["jobs"]["image"]
    (build,) = [step for step in job["steps"] if step.get("uses", "").startswith("docker/build-push-action@")]
    matrix = job["strategy"]["matrix"]["include"]
    assert sorted(entry["service"] for entry in matrix) == sorted(s.name for s in SERVICES)
    for entry in matrix:
        (service,) = [s for s in SERVICES if s.name == entry["service"]]
        inputs = {key: with_matrix(value, entry) for key, value in build["with"].items()}
        assert inputs["context"] == "."
        assert ROOT / inputs["file"] == service.dockerfile
        passed = dict(line.strip().split("=", 1) for line in inputs["build-args"].splitlines() if line.strip())
        assert passed == service.build_args, service.name


def test_expansion_follows_docker_and_sh() -> None:
    """as_built and executed expand what Docker and the container's shell would, so a pass above means something."""
    text = (
        "ARG BASE=python:3.12\nFROM ${BASE} AS a\nARG NAME\nARG MODE=x\nENV N=${NAME} P=/bin:$PATH\n"
        "COPY src/${NAME} /app/$NAME\nCMD exec run \"${N}\" '${N}' $MODE\n"
    )
    built = as_built(parse_dockerfile(text), {"NAME": "pkg"})
    assert built[1] == Instruction("FROM", "python:3.12 AS a")
    assert image_env(built) == {"N": "pkg", "P": "/bin:$PATH"}
    assert Instruction("COPY", "src/pkg /app/pkg") in built
    assert executed(built[-1].args, image_env(built)) == Command(["exec", "run", "pkg", "${N}"], via_shell=True)
    assert required_build_args(parse_dockerfile(text)) == {"NAME"}
    assert executed('["python", "-m", "$N"]', {"N": "x"}) == Command(["python", "-m", "$N"], via_shell=False)
    assert executed('["sh", "-c", "exec python -m $N"]', {"N": "x"}) == Command(
        ["exec", "python", "-m", "x"], via_shell=True
    )
    snippet = "import os, urllib.request; urllib.request.urlopen('http://h:' + os.environ['P'] + '/x', timeout=2)"
    assert probed_url(snippet, {"P": "1"}) == "http://h:1/x"


@by_service
def test_base_images_are_pinned_python_312_slim(service: Service, dockerfiles: dict[str, list[Instruction]]) -> None:
    """Every stage starts from python:3.12.<patch>-slim[-<debian>], never a floating tag."""
    stages: set[str] = set()
    for ins in dockerfiles[service.name]:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if words[0] not in stages:
                assert re.fullmatch(r"python:3\.12\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", words[0]), ins
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])


@by_service
def test_runs_as_non_root_user(service: Service, dockerfiles: dict[str, list[Instruction]]) -> None:
    """The final stage switches to a non-root USER before its CMD and never back."""
    stage = final_stage(dockerfiles[service.name])
    keywords = [ins.keyword for ins in stage]
    users = [ins.args.split(":")[0] for ins in stage if ins.keyword == "USER"]
    assert users, "no USER in the final stage"
    assert all(user not in ("root", "0") for user in users)
    assert max(i for i, k in enumerate(keywords) if k == "USER") < keywords.index("CMD")


@by_service
def test_healthcheck_gets_healthz_with_urllib(service: Service, dockerfiles: dict[str, list[Instruction]]) -> None:
    """HEALTHCHECK runs python's urllib against /healthz on the port the image EXPOSEs and the service binds."""
    stage = final_stage(dockerfiles[service.name])
    env = image_env(stage)
    assert env.get("SIGNALING_PORT", str(service.port)) == str(service.port), "the service would bind elsewhere"
    (check,) = [ins for ins in stage if ins.keyword == "HEALTHCHECK"]
    _, _, command = check.args.partition("CMD ")
    argv = executed(command, env).argv
    assert argv[:2] == ["python", "-c"]
    ast.parse(argv[2])
    assert "urllib.request" in argv[2]
    assert probed_url(argv[2], env) == f"http://127.0.0.1:{service.port}/healthz"
    exposed = {word.split("/")[0] for ins in stage if ins.keyword == "EXPOSE" for word in ins.args.split()}
    assert exposed == {str(service.port)}


@by_service
def test_no_credentials_or_unknown_settings_baked_in(
    service: Service, dockerfiles: dict[str, list[Instruction]]
) -> None:
    """No ENV/ARG named like a secret has a value, and every SIGNALING_ ENV is a real setting."""
    assert secret_assignments(service.dockerfile.read_text()) == []
    names = {n for ins in dockerfiles[service.name] if ins.keyword == "ENV" for n in env_assignments(ins)}
    assert {n for n in names if n.startswith("SIGNALING_")} <= SETTING_NAMES


def test_secret_detector_flags_credentials() -> None:
    """The secret check catches ENV and ARG credentials, so a pass above means something."""
    text = (
        "FROM x\nARG GITHUB_TOKEN=abc\nARG NPM_TOKEN\n"
        "ENV A=1 \\\n    AWS_SECRET_ACCESS_KEY=xyz\nENV DB_PASSWORD hunter2\n"
    )
    assert secret_assignments(text) == ["GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"]


@by_service
def test_runtime_environment_and_cmd(service: Service, dockerfiles: dict[str, list[Instruction]]) -> None:
    """The image runs `python -m <package>.main` (whose main() exists) unbuffered, without writing bytecode;
    python is PID 1 (the exec form, or the shell form with `exec`), so it receives SIGTERM itself."""
    stage = final_stage(dockerfiles[service.name])
    env = image_env(stage)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["SIGNALING_HOST"] == "0.0.0.0", "the default 127.0.0.1 is unreachable from other containers"
    assert "ENTRYPOINT" not in [ins.keyword for ins in stage]
    (cmd,) = [ins for ins in stage if ins.keyword == "CMD"]
    argv, via_shell = executed(cmd.args, env)
    if via_shell:
        assert argv[0] == "exec", "without exec, sh would be PID 1 and swallow SIGTERM"
        argv = argv[1:]
    assert argv == ["python", "-m", f"{service.package}.main"]
    assert callable(importlib.import_module(f"{service.package}.main").main)


@by_service
def test_copied_files_exist_and_reach_the_build_context(
    service: Service, dockerfiles: dict[str, list[Instruction]]
) -> None:
    """Every COPY source exists in the repository and .dockerignore lets its files through."""
    rules = dockerignore_rules()
    copied: list[str] = []
    for ins in dockerfiles[service.name]:
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            sources, _ = copy_sources(ins)
            copied += sources
    assert {"requirements/runtime.txt", "services/shared", f"services/{service.package}"} <= set(copied)
    for source in copied:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            generated = re.search(r"__pycache__|\.egg-info/|(^|/)build/", relative)
            assert dockerignored(relative, rules) == bool(generated), relative


@by_service
def test_installs_pinned_requirements_then_packages_without_deps(
    service: Service, dockerfiles: dict[str, list[Instruction]]
) -> None:
    """requirements/runtime.txt is installed; everything else is an exact pin or --no-deps."""
    instructions = dockerfiles[service.name]
    destinations: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            sources, destination = copy_sources(ins)
            destinations.update(dict.fromkeys(sources, destination))
    args = {k: v for ins in instructions if ins.keyword == "ARG" for k, v in env_assignments(ins).items()}
    commands = [
        shlex.split(part)  # as_built expanded the ARGs, as the RUN's shell does
        for ins in instructions
        if ins.keyword == "RUN"
        for part in ins.args.split("&&")
        if re.search(r"\bpip (install|wheel)\b", part)
    ]
    requirement_installs = [c for c in commands if destinations["requirements/runtime.txt"] in c]
    assert requirement_installs, "requirements/runtime.txt is never installed"
    assert all({"--requirement", "-r"} & set(c) for c in requirement_installs)
    for command in commands:
        if command in requirement_installs or "--no-deps" in command:
            continue
        packages = command[command.index("install" if "install" in command else "wheel") + 1 :]
        assert all(re.fullmatch(r"[\w.-]+==[\w.]+", p) for p in packages), f"unpinned install: {command}"
    no_deps = " ".join(word for c in commands if "--no-deps" in c for word in c)
    for package in ("services/shared", f"services/{service.package}"):
        assert destinations[package] in no_deps, f"{package} is not installed with --no-deps"
    dev_pin = re.search(r"^setuptools==(\S+)", (ROOT / "requirements" / "dev.txt").read_text(), re.MULTILINE)
    assert dev_pin is not None
    assert args.get("SETUPTOOLS_VERSION") == dev_pin[1], "the build backend pin drifted from requirements/dev.txt"


# --- .dockerignore -------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str | None = None) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in order."""
    text = (ROOT / ".dockerignore").read_text() if text is None else text
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            pattern = posixpath.normpath(line.removeprefix("!").strip("/"))
            rules.append((negated, _glob_regex(pattern)))
    return rules


def dockerignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_local_state_out() -> None:
    """The build context leaves out the venv, git, tests, .env files, Terraform state and caches."""
    rules = dockerignore_rules()
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/unit/test_dockerfiles.py",
        ".env",
        "services/auth_api/.env",
        "terraform/envs/prod/terraform.tfstate",
        "terraform/.terraform/providers/x",
        "services/shared/signaling_shared/__pycache__/settings.cpython-312.pyc",
        ".mypy_cache/3.11/x.json",
        "services/rooms_api/build/lib/rooms_api/main.py",
    ):
        assert dockerignored(path, rules), path
    assert not dockerignored("services/shared/signaling_shared/settings.py", rules)


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher applies the last matching pattern and parent directories, as Docker does."""
    rules = dockerignore_rules("*\n!keep/\n**/*.pyc\n!keep/x.pyc\n")
    assert dockerignored("other/a.py", rules)
    assert not dockerignored("keep/a.py", rules)
    assert dockerignored("keep/deep/a.pyc", rules)
    assert not dockerignored("keep/x.pyc", rules)
