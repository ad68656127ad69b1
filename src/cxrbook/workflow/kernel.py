"""The ``cxrbook`` Jupyter kernel: installed quiet, and run quiet by the papermill runner.

TensorFlow prints start-up lines from C++ (oneDNN, "Could not find cuda drivers", "failed call to
cuInit") and ipykernel logs "Kernel is running over TCP without encryption" and, at shutdown,
"KeyboardInterrupt caught in kernel". None is an error of the notebook, but students read them as
failures (JupyterLab shows C-level output on a red background). They are silenced at their source:

- ``KERNEL_ENV`` (in the kernelspec and for papermill kernels): ``TF_CPP_MIN_LOG_LEVEL=3`` drops
  TensorFlow's C++ info/warning/error log lines (Python exceptions still show in full). The GPU is
  not hidden: GPU users keep their devices.
- ``KERNEL_ARGS``: ``--IPKernelApp.capture_fd_output=False`` keeps C-level output (the few
  TensorFlow lines printed before its logging starts) out of the notebook: it goes to the kernel
  process's own stderr, i.e. the terminal that runs JupyterLab, or a log file for papermill runs
  (``QuietKernelManager``); ``--IPKernelApp.log_level=ERROR`` drops the kernel's own warnings.

To see TensorFlow's logs again: ``TF_CPP_MIN_LOG_LEVEL=0 python -m cxrbook run ...`` (the runner lets
the environment win), or ``os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"`` in a cell before TensorFlow is imported.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..config import KERNEL_NAME

DISPLAY_NAME = "Python (cxrbook)"
KERNEL_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}
KERNEL_ARGS = ["--IPKernelApp.capture_fd_output=False", "--IPKernelApp.log_level=ERROR"]


def install(prefix: str | None = None, name: str = KERNEL_NAME, user: bool = False) -> Path:
    """Register the kernel ``name`` for this Python (``sys.prefix`` unless ``prefix``/``user``), quiet.

    Replaces an existing kernelspec of that name. Returns the kernelspec folder.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    src = write_kernel_spec(overrides={"display_name": DISPLAY_NAME, "env": dict(KERNEL_ENV)},
                            extra_arguments=list(KERNEL_ARGS),
                            python_arguments=["-Xfrozen_modules=off"])  # as ipykernel does (debugger)
    try:
        dest = KernelSpecManager().install_kernel_spec(
            src, kernel_name=name, user=user, prefix=None if user else (prefix or sys.prefix))
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return Path(dest)


def quiet_kernel_manager(log_path: str | os.PathLike):
    """A jupyter_client kernel-manager class whose kernels write stdout/stderr to ``log_path``.

    Their command line gets those ``KERNEL_ARGS`` the kernelspec lacks (a kernelspec installed
    before ``kernel-install`` existed; traitlets refuses an option given twice), and their
    environment ``KERNEL_ENV`` unless this process's environment sets those names.
    """
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kernel_cmd = list(kernel_cmd) + [a for a in KERNEL_ARGS if a not in kernel_cmd]
            env = kw.get("env")
            if env is not None:
                env.update({k: os.environ.get(k, v) for k, v in KERNEL_ENV.items()})
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:  # the kernel keeps its own copy of the descriptor
                kw.setdefault("stdout", log)
                kw.setdefault("stderr", log)
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return QuietKernelManager


def main_install(args) -> int:
    """CLI entry for ``python -m cxrbook kernel-install``."""
    dest = install(prefix=args.prefix, user=args.user)
    print(f"installed kernel {KERNEL_NAME!r} ({DISPLAY_NAME}) in {dest} (quiet: {KERNEL_ENV}, {' '.join(KERNEL_ARGS)})")
    return 0
