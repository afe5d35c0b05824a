"""The partner portal's GraphQL API at ``/graphql`` (``docs/portal.md``, "The GraphQL API").

The schema is ``docs/portal-schema.graphql``; :mod:`.schema` builds it from :mod:`.query`,
:mod:`.mutation` and :mod:`.subscription` over the types of :mod:`.types`, and :mod:`.view`
serves it on the API server.  This package's modules are imported where they are needed (the
API process builds the route with :func:`processors.apps.registry.webhook_routes`).
"""
