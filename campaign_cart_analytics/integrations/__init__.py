"""Framework integrations: ``integrations.django``, ``integrations.flask``, ``integrations.asgi``.

``integrations.asgi`` serves FastAPI, Starlette and any other ASGI app.

Each sets a request context on the client (``Analytics.context``) so that
every event tracked while handling a request carries the visitor's
``user_properties.session_id`` and ``user_id`` and the request's UTM
``attribution``, without the view passing them.
"""
