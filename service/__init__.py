"""BNN-Tune service: study spec, storage and the REST API.

Kept empty on purpose so that ``import service.spec`` or ``import service.models`` stays light
(no FastAPI, no torch). The app factory lives in :mod:`service.app`.
"""
