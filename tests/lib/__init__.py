"""Shared test harness: real dockerd, busybox/python images, runtimes."""
