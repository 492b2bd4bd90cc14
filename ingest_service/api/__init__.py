"""The HTTP API (contract §7).

``app`` assembles the FastAPI app; ``deps`` hands routes the service's state, engine
and the read/write checks of ``security``; one router per area: ``health``,
``indicators``, ``rejections``, ``registry`` (with ``upload``), ``stats``, ``report``,
``admin``. ``errors`` maps query failures to 503/502.
"""
