"""The online prediction service (the paper's C8): an entity key in, the model's features
from the Feast online store, the registry's ``champion`` (or, in an A/B test, the
``challenger`` for a sticky share of keys), a logged prediction out.

``closedloop serve`` runs :func:`closedloop.serving.app.create_app` under uvicorn.
"""
