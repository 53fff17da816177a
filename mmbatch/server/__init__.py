"""The management server (`mmbatch server`): a dashboard over the checkpoint store.

Every node already writes its jobs' attempt records, events and manifests to
the checkpoint store; the server reads them into a local SQLite cache
(`sync`, `cache`) and serves pages (`app`, `pages`, `charts`) behind a login
(`auth`: an admin token or Amazon Cognito through `oidc` and `jwt`).
docs/server.md describes it.
"""
