"""Start JupyterLab on a free local port, isolated in a temporary directory, for the browser test.

The server's root, settings, workspaces, runtime files and user config/data directories all
live under one temporary directory, so JupyterLab's autosave and any widget state never
touch the repository. The kernel spec and the prebuilt lab extensions (ipywidgets, anywidget,
plotly) stay reachable: they live in the venv's share/jupyter, which Jupyter always searches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from appserver import free_port, wait_until_up

# Toasts that would ask to fetch news or check for updates (a request to the internet) and
# could cover the notebook: switched off in the isolated user settings.
_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
             {"fetchNews": "false", "checkForUpdates": False}}


def _kill_leftover_kernels(runtime: Path) -> None:
    """Kill kernels whose connection file lies in our runtime dir. The server shuts its kernels
    down when it stops cleanly; this only matters when it had to be killed. Kernels run in their
    own session (jupyter_client starts them so), so killing the server's group misses them."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(runtime) in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


@contextmanager
def serve_lab(workdir: Path, timeout: float = 90) -> Iterator[str]:
    """`python -m jupyterlab` on 127.0.0.1:<free port>, without token or password, serving
    `workdir/root`; yields its URL. The log is `workdir/jupyterlab.log`."""
    root, runtime, log = workdir / "root", workdir / "runtime", workdir / "jupyterlab.log"
    settings = workdir / "lab-settings"
    for d in (root, runtime, settings, workdir / "config", workdir / "data", workdir / "ipython"):
        d.mkdir(parents=True, exist_ok=True)
    for name, value in _SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port = free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(workdir / "config"), JUPYTER_DATA_DIR=str(workdir / "data"),
               JUPYTER_RUNTIME_DIR=str(runtime), IPYTHONDIR=str(workdir / "ipython"))
    cmd = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip", "127.0.0.1",
           "--port", str(port), "--ServerApp.port_retries=0",
           "--IdentityProvider.token=", "--PasswordIdentityProvider.hashed_password=",
           f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={workdir / 'workspaces'}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/api/status", proc, log, timeout, "JupyterLab")
        yield url
    finally:
        # SIGTERM makes the server shut its kernels down before it exits.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        _kill_leftover_kernels(runtime)
