"""The profiler over HTTP: a FastAPI app (:func:`create_app`, ``profiler serve``), its
explorer page at ``/``, and :class:`Client`, which has the workspace's method names so a
script moves from a local workspace to the service by changing one line."""

from __future__ import annotations

from profiler.service.client import Client, ServiceError

__all__ = ["Client", "ServiceError", "create_app"]


def create_app(*args, **kwargs):
    """The FastAPI app (see :func:`profiler.service.app.create_app`); imported on use, so
    the client works without the server's dependencies loaded."""
    from profiler.service.app import create_app as make

    return make(*args, **kwargs)
