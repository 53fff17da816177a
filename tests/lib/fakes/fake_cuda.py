"""The fake CUDA driver shared by the fake `cuda-checkpoint` and the stand-in
CUDA program `cuda_app.py` (tests on machines without an NVIDIA GPU).

It keeps the real driver's split: a CUDA process's checkpoint state lives in
the process itself (here a header in a mapping at a fixed address, read and
written through /proc/PID/mem), its device memory on the GPU (here a file in
the fake's directory, FAKE_CUDA_DIR). `checkpoint` copies device memory into
the process's host memory and releases the "GPU"; CRIU then dumps it like any
other memory; `restore` copies it back. So a restored process carries its own
CUDA state, as with the real driver, and a test can see whether device state
survived a dump, a kill and a restore.

Header at DEVICE_ADDR: magic (8) | state (1) | busy (1) | pad (2) |
device length (4, little endian) | context id (16, ascii) | pad to 64 |
device bytes while checkpointed.
"""

from __future__ import annotations

import os
import struct
from typing import Optional, Tuple

DEVICE_ADDR = 0x7E0000000000
MAP_SIZE = 1 << 20
MAGIC = b"FAKECUDA"
HEADER = 64
STATES = ("running", "locked", "checkpointed", "failed")
RUNNING, LOCKED, CHECKPOINTED, FAILED = range(4)
RESTORE_THREAD_COMM = "cuda-ckpt"

# CUDA driver error codes and strings (cuGetErrorString)
CUDA_ERROR_INVALID_VALUE = (1, "invalid argument")
CUDA_ERROR_NOT_INITIALIZED = (3, "initialization error")
CUDA_ERROR_ILLEGAL_STATE = (401, "the operation cannot be performed in the present state")
CUDA_ERROR_TIMEOUT = (909, "the wait operation has timed out")


class CudaError(Exception):
    def __init__(self, err: Tuple[int, str]) -> None:
        super().__init__(err[1])
        self.code, self.text = err


def fake_dir() -> str:
    return os.environ.get("FAKE_CUDA_DIR", "")


def device_path(ctx: str) -> str:
    return os.path.join(fake_dir(), f"gpu-{ctx}.bin")


def tgid(pid: int) -> int:
    """The process of a pid or thread id (cuda-checkpoint accepts both)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    raise CudaError(CUDA_ERROR_INVALID_VALUE)


class ProcessMemory:
    """The CUDA header of one process, through /proc/PID/mem."""

    def __init__(self, pid: int) -> None:
        self.pid = tgid(pid)
        try:
            self.fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR)
        except OSError:
            raise CudaError(CUDA_ERROR_INVALID_VALUE) from None
        try:
            magic = os.pread(self.fd, 8, DEVICE_ADDR)
        except OSError:
            magic = b""
        if magic != MAGIC:  # no CUDA context in this process
            os.close(self.fd)
            raise CudaError(CUDA_ERROR_NOT_INITIALIZED)

    def close(self) -> None:
        os.close(self.fd)

    def byte(self, offset: int) -> int:
        return os.pread(self.fd, 1, DEVICE_ADDR + offset)[0]

    def set_byte(self, offset: int, value: int) -> None:
        os.pwrite(self.fd, bytes([value]), DEVICE_ADDR + offset)

    @property
    def state(self) -> int:
        return self.byte(8)

    def set_state(self, value: int) -> None:
        self.set_byte(8, value)

    @property
    def busy(self) -> bool:
        return self.byte(9) != 0

    @property
    def context(self) -> str:
        return os.pread(self.fd, 16, DEVICE_ADDR + 16).decode("ascii", "replace")

    def stash_device(self, data: bytes) -> None:
        os.pwrite(self.fd, struct.pack("<I", len(data)), DEVICE_ADDR + 12)
        os.pwrite(self.fd, data, DEVICE_ADDR + HEADER)

    def stashed_device(self) -> bytes:
        (n,) = struct.unpack("<I", os.pread(self.fd, 4, DEVICE_ADDR + 12))
        return os.pread(self.fd, n, DEVICE_ADDR + HEADER)


def restore_thread(pid: int) -> Optional[int]:
    """The tid of the process's CUDA restore thread (named by the program)."""
    proc = tgid(pid)
    for tid in sorted(os.listdir(f"/proc/{proc}/task"), key=int):
        try:
            with open(f"/proc/{proc}/task/{tid}/comm", encoding="utf-8") as f:
                if f.read().strip() == RESTORE_THREAD_COMM:
                    return int(tid)
        except OSError:
            continue
    return None
