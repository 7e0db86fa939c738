"""ci/hookd-ci.sh run the way a GitHub Actions or GitLab CI runner runs it.

Each "step" is a separate process whose environment is what the runner would give it: on GitHub
the files behind $GITHUB_ENV / $GITHUB_PATH are read back into the next step's environment (and
the token exists only in the `start` step's environment, as `with: token:` does); on GitLab the
job's shell sources the env file that `start` wrote. In between, real Nix builds run the
registered post-build hook, the real daemon pushes to the Attic test server during the job, and
`finish` waits, prints the summary and stops the daemon.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.attic_server import AtticTestServer
from tests.conftest import BIN, GRAPH, ROOT, needs_nix, nix_env, nonce

pytestmark = [needs_nix, pytest.mark.nix]

SCRIPT = ROOT / "ci" / "hookd-ci.sh"
ACTION = ROOT / "ci" / "github" / "action.yml"
GITLAB = ROOT / "ci" / "gitlab" / "hookd.yml"


def hash_of(path: str) -> str:
    return Path(path).name.split("-", 1)[0]


def eventually(predicate: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)  # polling a condition with a deadline
    return value


def parse_github_env(text: str) -> dict[str, str]:
    """The runner's reading of $GITHUB_ENV: NAME=value lines and NAME<<DELIM heredocs."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            value = []
            for inner in lines:
                if inner == delim:
                    break
                value.append(inner)
            else:
                raise AssertionError(f"unterminated heredoc for {name} in $GITHUB_ENV")
            out[name] = "\n".join(value)
        elif "=" in line:
            name, value_text = line.split("=", 1)
            out[name] = value_text
    return out


class Runner:
    """A GitHub Actions job: a workspace, the runner's variables, one process per step."""

    def __init__(self, tmp: Path, server: AtticTestServer, token: str) -> None:
        self.server = server
        self.token = token
        temp = tmp / "runner-temp"
        temp.mkdir()
        self.ci_dir = temp / f"hookd-ci-{os.getuid()}"  # the script's default under RUNNER_TEMP
        self.env_file = tmp / "github_env"
        self.path_file = tmp / "github_path"
        self.summary = tmp / "step_summary.md"
        for f in (self.env_file, self.path_file, self.summary):
            f.touch()
        # the job's environment: the runner's variables; hookd on PATH (so `install` keeps it)
        self.base = nix_env(
            PATH=f"{BIN}:{os.environ['PATH']}",
            GITHUB_ACTIONS="true",
            GITHUB_ENV=str(self.env_file),
            GITHUB_PATH=str(self.path_file),
            GITHUB_STEP_SUMMARY=str(self.summary),
            RUNNER_TEMP=str(temp),
        )

    def step_env(self, **extra: str) -> dict[str, str]:
        """What the runner gives the next step: $GITHUB_ENV and $GITHUB_PATH read back."""
        env = dict(self.base)
        env.update(parse_github_env(self.env_file.read_text()))
        added = [p for p in self.path_file.read_text().splitlines() if p]
        if added:
            env["PATH"] = ":".join([*reversed(added), env["PATH"]])
        env.update(extra)
        return env

    def uses(self, inputs: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """`uses: <org>/hookd/ci/github@v0` with ``inputs``: the composite action's steps, each
        with its `if:` and `env:` evaluated and $GITHUB_ACTION_PATH set, as the runner does."""
        action = yaml.safe_load(ACTION.read_text())
        values = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
        values.update(inputs)

        def expr(text: str) -> str:
            return re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: values[m[1]], text)

        proc = subprocess.CompletedProcess[str]([], 0, "", "")
        for step in action["runs"]["steps"]:
            cond = re.fullmatch(r"inputs\.([\w-]+) == '([^']*)'", step.get("if", "true"))
            if cond and values[cond[1]] != cond[2]:
                continue
            env = self.step_env(GITHUB_ACTION_PATH=str(ACTION.parent))
            env.update({k: expr(str(v)) for k, v in step.get("env", {}).items()})
            assert step["shell"] == "bash"
            proc = subprocess.run(
                ["bash", "-e", "-c", step["run"]],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0:
                return proc
        return proc

    def start(self, **extra: str) -> None:
        proc = self.uses(
            {"endpoint": self.server.url, "cache": "team", "token": self.token, **extra}
        )
        assert proc.returncode == 0, proc.stderr

    def finish(self, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.uses({"step": "finish", **extra})

    def build(self, attr: str, n: str, *, hooked: bool = True) -> list[str]:
        """A `run: nix-build …` step; unhooked: as a nix-daemon ignoring the client's setting."""
        argv = ["nix-build", str(GRAPH), "--no-out-link", "--argstr", "nonce", n, "-A", attr]
        env = self.step_env() if hooked else dict(self.base)
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [line for line in proc.stdout.split() if line.startswith("/nix/store/")]

    def daemon_pid(self) -> int:
        return int((self.ci_dir / "daemon.pid").read_text())


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer(algorithm="HS256") as server:
        server.create_cache("team", public=False)
        yield server


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_token_nowhere(token: str, *files: Path) -> None:
    for f in files:
        if f.is_file() and not f.name.startswith("queue.sqlite"):
            assert token not in f.read_text(errors="replace"), f


def test_github_action_pushes_during_the_job_and_finish_waits_summarises_and_stops(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    token = srv.make_token({"team": {"r": 1, "w": 1}}, sub="ci")
    job = Runner(tmp_path, srv, token)
    job.start()
    pid = job.daemon_pid()
    assert alive(pid)
    registered = parse_github_env(job.env_file.read_text())
    assert "post-build-hook = " in registered["NIX_CONFIG"]
    assert registered["HOOKD_CONFIG"] == str(job.ci_dir / "config.yaml")
    assert job.path_file.read_text().split()[0] == str(BIN)
    outs = job.build("d", nonce())
    closure = subprocess.run(
        ["nix-store", "-qR", *outs], capture_output=True, text=True, check=True
    ).stdout.split()
    # pushed during the job, before anything waits for it: the hook fired inside the build
    eventually(
        lambda: {hash_of(p) for p in closure} <= set(srv.objects("team")),
        what="the build's closure on the server while the job runs",
    )
    proc = job.finish()
    assert proc.returncode == 0, proc.stderr
    assert "backfill" not in proc.stderr  # the hook ran: nothing else of the runner is queued
    assert "attic:ci/team" in proc.stdout  # the status summary is in the job log
    assert not alive(pid)
    summary = job.summary.read_text()
    assert "every build result pushed" in summary and "attic:ci/team" in summary
    # the token went to a 0600 file only, removed at the end; never into the job's files
    assert not (job.ci_dir / "token").exists()
    assert_token_nowhere(token, *job.ci_dir.rglob("*"), job.env_file, job.summary)
    config = yaml.safe_load((job.ci_dir / "config.yaml").read_text())
    assert config["servers"]["ci"]["endpoint"] == srv.url


def test_gitlab_template_runs_as_a_job_and_pushes_during_it(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    """The template's own lines, in GitLab's order and shells: before_script and script in one
    shell (the job's build waits until the test has seen the push land), after_script in a
    fresh one. The source is this checkout instead of a clone."""
    template = yaml.safe_load(GITLAB.read_text())
    hookd_job, finish = template[".hookd"], template[".hookd-finish"]
    token = srv.make_token({"team": {"r": 1, "w": 1}}, sub="ci")
    env = nix_env(
        PATH=f"{BIN}:{os.environ['PATH']}",
        GITLAB_CI="true",
        CI="true",
        CI_JOB_ID=str(os.getpid()),
        HOOKD_CI_ENDPOINT=srv.url,
        HOOKD_CI_CACHE="team",
        HOOKD_CI_TOKEN=token,
        HOOKD_CI_FAIL_ON_ERROR="true",
    )
    variables = {**hookd_job["variables"], "HOOKD_CI_SRC": str(ROOT)}
    variables["HOOKD_CI_DIR"] = str(tmp_path / "ci")
    exports = [
        f"export {k}={shlex.quote(v) if k.endswith('SRC') else v}" for k, v in variables.items()
    ]
    before = [line for line in hookd_job["before_script"] if "git clone" not in line]
    out_file, pushed = tmp_path / "outs", tmp_path / "pushed"
    n = nonce()
    script = [
        f"nix-build {GRAPH} --no-out-link --argstr nonce {n} -A d > {out_file}",
        # the job goes on only once the test saw the closure on the server (deadline 120 s)
        f"for i in $(seq 1200); do [ -e {pushed} ] && break; sleep 0.1; done; [ -e {pushed} ]",
        *finish["script"],
    ]
    job = subprocess.Popen(
        ["bash", "-e", "-c", "\n".join([*exports, *before, *script])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        outs = eventually(
            lambda: out_file.exists() and out_file.read_text().split(), timeout=300, what="build"
        )
        closure = subprocess.run(
            ["nix-store", "-qR", *outs], capture_output=True, text=True, check=True
        ).stdout.split()
        eventually(
            lambda: {hash_of(p) for p in closure} <= set(srv.objects("team")),
            what="the build's closure on the server while the job runs",
        )
        pushed.touch()
        stdout, stderr = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 0, stderr
    assert "attic:ci/team" in stdout  # the summary, in the job log
    after = subprocess.run(
        ["bash", "-e", "-c", "\n".join([*exports, *hookd_job["after_script"]])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert after.returncode == 0 and "nothing to finish" in after.stderr, after.stderr
    assert not (tmp_path / "ci" / "token").exists()
    assert_token_nowhere(token, *(tmp_path / "ci").rglob("*"))


def test_a_nix_that_ignored_the_hook_is_caught_up_by_finish(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    job = Runner(tmp_path, srv, srv.make_token({"team": {"r": 1, "w": 1}}, sub="ci"))
    job.start()
    # a build the hook never saw, as under a nix-daemon that ignores an untrusted client's hook
    (missed,) = job.build("b", nonce(), hooked=False)
    assert not (job.ci_dir / "hook-ran").exists()
    assert hash_of(missed) not in srv.objects("team")
    proc = job.finish()
    assert proc.returncode == 0, proc.stderr
    assert "backfill" in proc.stderr
    assert hash_of(missed) in srv.objects("team")


@pytest.mark.parametrize("fail_on_error", ["true", "false"])
def test_finish_fails_the_job_only_when_configured(
    fail_on_error: str, srv: AtticTestServer, tmp_path: Path
) -> None:
    token = srv.make_token({"team": {"r": 1, "w": 1}}, sub="ci")
    job = Runner(tmp_path, srv, token)
    job.start()
    srv.faults.max_body_size = 16  # a proxy refuses every upload: failed, with the advice
    (out,) = job.build("b", nonce())
    proc = job.finish(**{"fail-on-error": fail_on_error})
    assert proc.returncode == (1 if fail_on_error == "true" else 0), proc.stderr
    assert "::warning::hookd: not every build result was pushed" in proc.stdout + proc.stderr
    assert "client_max_body_size" in proc.stdout, proc.stdout  # why, in the job log
    summary = job.summary.read_text()
    assert "not everything was pushed" in summary
    assert hash_of(out) not in srv.objects("team")


def test_start_without_a_target_says_what_to_set(tmp_path: Path) -> None:
    env = nix_env(PATH=f"{BIN}:{os.environ['PATH']}", HOOKD_CI_DIR=str(tmp_path / "ci"))
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "HOOKD_CI_ENDPOINT" in proc.stderr and "HOOKD_CI_STORE" in proc.stderr
    assert not (tmp_path / "ci" / "daemon.pid").exists()
