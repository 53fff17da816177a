"""A guard that resumes a frozen container if the checkpointer dies.

Before freezing, the checkpointer forks a small guard in its own session,
holding the read end of a pipe. The checkpointer writes "d" once the
container is running again. If the pipe closes without it (the checkpointer
was killed, even with SIGKILL), the guard resumes the container itself: a
job is never left frozen by us.
"""

from __future__ import annotations

import os
import subprocess
from typing import List, Optional


class FreezeGuard:
    def __init__(self, resume_argv: List[str]) -> None:
        self.resume_argv = resume_argv
        self._w: Optional[int] = None
        self.pid: Optional[int] = None

    def start(self) -> FreezeGuard:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                os.setsid()
                data = b""
                while True:
                    chunk = os.read(r, 16)
                    if not chunk:
                        break
                    data += chunk
                if b"d" not in data:
                    devnull = os.open(os.devnull, os.O_RDWR)
                    subprocess.run(self.resume_argv, stdin=devnull, stdout=devnull, stderr=devnull, timeout=60)
            finally:
                os._exit(0)
        os.close(r)
        self._w = w
        self.pid = pid
        return self

    def release(self) -> None:
        """The container runs again: the guard has nothing to do."""
        if self._w is not None:
            try:
                os.write(self._w, b"d")
            except OSError:
                pass
            self.close()

    def close(self) -> None:
        """Let the guard go; unless release() came first, it resumes the job."""
        if self._w is not None:
            os.close(self._w)
            self._w = None
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None

