"""The HTTP API (contract §7): the FastAPI app and its routers."""
