"""The real ComfyUI server, started as a subprocess on a loopback port for tests and the demo.

A throw-away base directory holds the pack and the test-only nodes (symlinked into
``custom_nodes``) and the tiny Wan / HunyuanVideo checkpoints (``models/diffusion_models``),
so the server loads everything the way a user's ComfyUI does. HTTP uses only urllib.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEST_NODES = Path(__file__).resolve().parent / "comfy_test_nodes"
HOST = "127.0.0.1"
PACK_DIR_NAME = "comfyui-dit-cache"
TEST_NODES_DIR_NAME = "dit_cache_test_nodes"


def comfyui_path() -> Path:
    return Path(os.environ.get("COMFYUI_PATH", ROOT / ".host" / "ComfyUI")).resolve()


def import_tiny_models() -> ModuleType:
    """tiny_models builds models from ComfyUI's classes: import it against the host ComfyUI, on the CPU."""
    path = str(comfyui_path())
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import tiny_models

    return tiny_models


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class PromptRejected(Exception):
    """/prompt answered an error (validation failed): `status` and the JSON `body` say why."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class PromptRun:
    """One finished prompt: its history entry and the server log written while it ran."""

    prompt_id: str
    history: dict[str, Any]
    log: str

    @property
    def status(self) -> str:
        return self.history["status"]["status_str"]

    def message(self, event: str) -> dict[str, Any] | None:
        return next((data for name, data in self.history["status"]["messages"] if name == event), None)

    @property
    def error(self) -> str:
        """The execution error, if any, for assertion messages."""
        data = self.message("execution_error") or {}
        return f"{data.get('exception_type', '')}: {data.get('exception_message', '')}"

    @property
    def wall_s(self) -> float:
        """Execution time as the server stamped it (execution_start to execution_success)."""
        return (self.message("execution_success")["timestamp"] - self.message("execution_start")["timestamp"]) / 1000


class ComfyServer:
    """Context manager: start ComfyUI on `port` (a free one by default), stop it on exit.

    `frontend=False` serves an empty front-end root, which skips the browser UI; `frontend=True`
    serves the graph editor of the installed ``comfyui-frontend-package``, as a user's ComfyUI does.
    `copy_pack=True` copies the pack into ``custom_nodes`` as the registry ships it (see copy_pack)
    instead of linking this checkout.
    """

    def __init__(
        self, port: int | None = None, *, frontend: bool = False, copy_pack: bool = False, ready_timeout_s: float = 120.0
    ):
        self.port = port or free_port()
        self.frontend = frontend
        self.copy_pack = copy_pack
        self.ready_timeout_s = ready_timeout_s
        self._base_dir: Path | None = None  # a fresh temporary directory per start()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("the server is not running")
        return self._base_dir

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._base_dir = Path(tempfile.mkdtemp(prefix="dit-cache-comfyui-"))
        self._prepare_base_dir()
        command = [
            sys.executable, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.base_dir),
            # ComfyUI's default database sits inside its own folder: keep this run's with its base dir
            # (an in-memory one hits sqlite threading errors).
            "--database-url", f"sqlite:///{self.base_dir / 'comfyui.db'}",
        ]
        if not self.frontend:
            command += ["--front-end-root", str(self.base_dir / "no-frontend")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # log lines reach the file as they happen
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                command, cwd=comfyui_path(), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        logger.info("ComfyUI starting at %s (pid %d, log %s)", self.url, self._process.pid, self.log_path)
        self._wait_ready()

    def stop(self) -> None:
        """Stop our own server process by its pid, then drop the base directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        base_dir, self._base_dir = self._base_dir, None
        if base_dir is not None:
            shutil.rmtree(base_dir, ignore_errors=True)

    def _prepare_base_dir(self) -> None:
        custom_nodes = self.base_dir / "custom_nodes"
        models = self.base_dir / "models" / "diffusion_models"
        for folder in (custom_nodes, models, self.base_dir / "no-frontend"):
            folder.mkdir(parents=True, exist_ok=True)
        if self.copy_pack:
            copy_pack(custom_nodes / PACK_DIR_NAME)
        else:
            (custom_nodes / PACK_DIR_NAME).symlink_to(ROOT, target_is_directory=True)
        (custom_nodes / TEST_NODES_DIR_NAME).symlink_to(TEST_NODES, target_is_directory=True)
        tiny_models = import_tiny_models()
        for variant in tiny_models.FILE_VARIANTS:
            tiny_models.write_checkpoint(variant, models / checkpoint_name(variant))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                self._request("GET", "/object_info", timeout=5)
                logger.info("ComfyUI ready at %s", self.url)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")

    def log_text(self, start: int = 0) -> str:
        """The server's log from byte offset `start`."""
        with open(self.log_path, "rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def object_info(self, node: str) -> dict[str, Any]:
        """GET /object_info/<node>: the node's description, {} when the server has no such node."""
        return self._request("GET", f"/object_info/{node}").get(node, {})

    def save_settings(self, values: dict[str, Any]) -> None:
        """POST /settings: the user's editor settings (the editor reads them when a page opens)."""
        self._request("POST", "/settings", values)

    def all_object_info(self) -> dict[str, Any]:
        return self._request("GET", "/object_info")

    def post_prompt(self, graph: dict[str, Any]) -> str:
        """Queue an API-format graph; PromptRejected when the server refuses it."""
        try:
            return self._request("POST", "/prompt", {"prompt": graph})["prompt_id"]
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"raw": body.decode(errors="replace")}
            raise PromptRejected(error.code, parsed) from None

    def wait(self, prompt_id: str, timeout_s: float = 300.0) -> dict[str, Any]:
        """Poll /history/<id> until the prompt completed or failed; return its history entry."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self._request("GET", f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("completed") or status.get("status_str") == "error":
                return entry
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout_s:.0f} s:\n{self.log_tail()}")

    def run(self, graph: dict[str, Any]) -> PromptRun:
        """Queue `graph`, wait for it, and return it with the log lines it produced.

        Prompts run one after another, so the log written between queueing and the end
        belongs to this prompt.
        """
        start = self.log_size()
        prompt_id = self.post_prompt(graph)
        history = self.wait(prompt_id)
        return PromptRun(prompt_id, history, self.log_text(start))


def copy_pack(dest: Path) -> None:
    """Copy the pack as `comfy node pack` zips it for the registry: without .git and what .comfyignore
    and .gitignore name (tests/, tools/, .venv/, caches). Patterns are the simple `name/` and `*.ext` kind."""
    patterns = [
        line.strip().strip("/")
        for name in (".comfyignore", ".gitignore")
        if (ROOT / name).exists()
        for line in (ROOT / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", *patterns))


def checkpoint_name(variant: str) -> str:
    """File name of a tiny checkpoint in models/diffusion_models (UNETLoader's unet_name)."""
    return f"tiny-{variant}.safetensors"
