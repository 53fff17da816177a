#!/usr/bin/env python3
"""A stand-in CUDA program for the fake driver (fake_cuda.py).

It "initializes CUDA": maps the driver header at DEVICE_ADDR, allocates
device memory (an 8-byte counter in FAKE_CUDA_DIR/gpu-<context>.bin) and
starts the driver's restore thread. Each step it launches a "kernel" that
increments the device counter (taking --kernel-seconds), unless the driver is
locked, and prints `STEP DEVICE_COUNTER` to stdout. After a correct
checkpoint and restore both numbers go on from where they were; if device
memory were lost the kernel fails and the program exits 3.
"""
import argparse
import ctypes
import os
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import fake_cuda as fc  # noqa: E402

PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000


def map_header() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    addr = libc.mmap(fc.DEVICE_ADDR, fc.MAP_SIZE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    if addr != fc.DEVICE_ADDR:
        sys.exit(f"cuda_app: cannot map the driver header: errno {ctypes.get_errno()}")
    return addr


def restore_thread() -> None:
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
        f.write(fc.RESTORE_THREAD_COMM)
    while True:
        time.sleep(3600)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--kernel-seconds", type=float, default=0.0)
    args = ap.parse_args()
    header = (ctypes.c_char * fc.HEADER).from_address(map_header())
    context = os.urandom(8).hex()
    header[0:8] = fc.MAGIC
    header[16:32] = context.encode()
    with open(fc.device_path(context), "wb") as f:
        f.write(struct.pack("<Q", 0))
    threading.Thread(target=restore_thread, daemon=True).start()
    step = 0
    while True:
        header[9:10] = b"\x01"  # work in flight, then look at the lock (fake_cuda.py's lock does the reverse)
        if ord(header[8]) != fc.RUNNING:
            header[9:10] = b"\x00"
            time.sleep(0.01)
            continue
        try:
            with open(fc.device_path(context), "r+b") as f:
                (counter,) = struct.unpack("<Q", f.read(8))
                time.sleep(args.kernel_seconds)
                f.seek(0)
                f.write(struct.pack("<Q", counter + 1))
        except OSError as e:
            print(f"device memory lost: {e}", flush=True)
            return 3
        finally:
            header[9:10] = b"\x00"
        step += 1
        print(f"{step} {counter + 1}", flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
