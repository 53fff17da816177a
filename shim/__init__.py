"""mmbatch-runtime: a runc-compatible OCI runtime wrapper.

Everything it does not intercept is an `os.execv` of the delegate runtime
with argv unchanged. The passthrough path imports only the standard library
modules the interpreter has already loaded: it is on the critical path of
every container on the node.
"""
