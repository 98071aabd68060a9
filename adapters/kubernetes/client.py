"""One place that turns the registry's parameters into a ``kubernetes`` API client.

The hub runs either inside the cluster (a Deployment in the system namespace, authenticated by
its service account) or outside it (a developer machine, a VM, the integration tests), with a
kubeconfig. Rules, in order: an explicit ``kubeconfig`` path (and optional ``context``) is used as
given; otherwise the in-cluster service-account config when the process runs in a pod; otherwise
the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``). Each call builds a *new* client,
so two registries pointing at two clusters never share credentials or connection pools.

Building a client reads files (the kubeconfig, certificates), so callers on an event loop run
:func:`load_api_client` in a worker thread. An explicit kubeconfig is first checked by meshfed's
config reader, so a FIFO or device there is refused at once instead of blocking that thread.
"""

from __future__ import annotations

import os

from kubernetes import client, config

from meshfed.core.files import read_config_file


def load_api_client(
    kubeconfig: str | None = None, context: str | None = None, pool_size: int = 16
) -> client.ApiClient:
    """An ``ApiClient`` for the cluster named by ``kubeconfig`` / ``context`` (see module doc)."""
    configuration = client.Configuration()
    if kubeconfig:
        read_config_file(os.path.expanduser(kubeconfig))  # raises FileRefused: not a file
        config.load_kube_config(
            config_file=os.path.expanduser(kubeconfig),
            context=context or None,
            client_configuration=configuration,
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(context=context or None, client_configuration=configuration)
    # One connection per watch thread plus a few for lists, events and status writes.
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)
