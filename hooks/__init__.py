"""mmbatch-hook: an OCI hook telling mmbatchd that a managed container
started or stopped. Usable without the shim too (podman/CRI-O hooks.d)."""
