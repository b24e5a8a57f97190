"""`hobbit serve`: llama-cpp-python's OpenAI-compatible server, carrying a HOBBIT model.

We reuse `llama_cpp.server` (its endpoints, request types, streaming and request lock) and
change three things around it:

- the model: its `LlamaProxy` loads our `Model` (policy and all) instead of a plain `Llama`;
- errors: its route class answers a malformed request with 500 (it catches FastAPI's
  validation error with everything else); ours answers 422 for an invalid body, 400 for a
  request that does not fit the context, 500 for an engine fault (one line logged), and the
  server goes on serving;
- one endpoint more: GET /hobbit/stats, the expert cache's live counters, read without
  waiting for the request in progress.

Requests run one at a time (the server's own lock); a streaming request is not interrupted
by the next one (`interrupt_requests` off), it waits.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hobbit_py._lib import HobbitError, load_llama_cpp
from hobbit_py.errors import one_line
from hobbit_py.generation import GenerationStats
from hobbit_py.policy import Policy


@dataclass
class ServerConfig:
    """What `hobbit serve` serves, and where."""

    model: Path
    policy: Policy
    alias: str
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def _server_modules() -> tuple[Any, Any, Any, Any]:
    load_llama_cpp()
    try:
        from llama_cpp.server import app as server_app  # noqa: PLC0415
        from llama_cpp.server import errors, model, settings  # noqa: PLC0415
    except ImportError as exc:
        raise HobbitError(f"hobbit serve needs llama-cpp-python's server extras ({exc.name} is "
                          "missing): pip install 'hobbit[server]'") from None
    return server_app, errors, model, settings


def error_body(message: str, kind: str) -> dict[str, Any]:
    """An OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def create_app(config: ServerConfig, log: Callable[[str], None] = print) -> Any:
    """The FastAPI app: llama_cpp.server's routes on our model, our error mapping, /hobbit/stats."""
    server_app, errors, server_model, settings = _server_modules()
    from fastapi import APIRouter, Depends, FastAPI, Request  # noqa: PLC0415
    from fastapi.exceptions import HTTPException, RequestValidationError  # noqa: PLC0415
    from fastapi.middleware import Middleware  # noqa: PLC0415
    from fastapi.middleware.cors import CORSMiddleware  # noqa: PLC0415
    from fastapi.responses import JSONResponse  # noqa: PLC0415
    from fastapi.routing import APIRoute  # noqa: PLC0415
    from starlette_context.middleware import RawContextMiddleware  # noqa: PLC0415
    from starlette_context.plugins import RequestIdPlugin  # noqa: PLC0415

    from hobbit_py.model import Model  # noqa: PLC0415

    class HobbitProxy(server_model.LlamaProxy):
        """The server's model holder, loading our Model with the configured policy."""

        def load_llama_from_model_settings(self, model_settings: Any) -> Model:  # type: ignore[override]
            model = Model(config.model, policy=config.policy, **config.model_kwargs)
            if model.budget_decision is not None:
                log(model.budget_decision.reason)
            if model.plain_chat_template:
                log("the model has no chat template; chat uses a plain 'User:/Assistant:' one")
            return model

    class HobbitRoute(errors.RouteErrorHandler):
        """llama_cpp.server's error handling, with client errors answered as 4xx."""

        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = APIRoute.get_route_handler(self)

            async def route_handler(request: Request) -> Any:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                                         for e in exc.errors())
                    return JSONResponse(error_body(f"invalid request: {problems}",
                                                   "invalid_request_error"), status_code=422)
                except HTTPException:
                    raise
                except HobbitError as exc:
                    log(f"error: {one_line(str(exc))}")
                    return JSONResponse(error_body(str(exc), "engine_error"), status_code=500)
                except Exception as exc:  # noqa: BLE001  (mapped as llama_cpp.server does)
                    body = None
                    try:
                        data = json.loads(await request.body())
                        kind = (server_app.CreateChatCompletionRequest if "messages" in data
                                else server_app.CreateCompletionRequest)
                        body = kind(**data)
                    except Exception:  # noqa: BLE001
                        body = None
                    status, error = self.error_message_wrapper(error=exc, body=body)
                    return JSONResponse({"error": error}, status_code=status)

            return route_handler

    server_settings = settings.ServerSettings(host=config.host, port=config.port,
                                              api_key=config.api_key, interrupt_requests=False)
    model_settings = settings.ModelSettings(model=str(config.model), model_alias=config.alias)
    server_app.set_server_settings(server_settings)
    proxy = HobbitProxy([model_settings])
    server_app._llama_proxy = proxy  # the module global its endpoints read

    router = APIRouter(route_class=HobbitRoute)
    for route in server_app.router.routes:
        router.add_api_route(route.path, route.endpoint, methods=sorted(route.methods),
                             response_model=route.response_model, dependencies=route.dependencies,
                             summary=route.summary, tags=route.tags, responses=route.responses,
                             include_in_schema=route.include_in_schema, name=route.name)

    async def hobbit_stats() -> dict[str, Any]:
        model = proxy._current_model
        if model is None:
            raise HTTPException(status_code=503, detail="no model loaded")
        stats = model.hobbit_stats()
        for key in GenerationStats().as_dict():  # hobbit_stats' generate_text timings: not used here
            stats.pop(key, None)
        return {"model": config.alias, "active": model.hobbit_active, **stats}

    router.add_api_route("/hobbit/stats", hobbit_stats, methods=["GET"],
                         dependencies=[Depends(server_app.authenticate)], tags=["HOBBIT"],
                         summary="Live expert cache statistics")

    import llama_cpp  # noqa: PLC0415

    app = FastAPI(title="HOBBIT (llama-cpp-python server)", version=llama_cpp.__version__,
                  middleware=[Middleware(RawContextMiddleware, plugins=(RequestIdPlugin(),))])
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    app.include_router(router)
    return app


class _Stopped(Exception):
    """A stop signal, after uvicorn's graceful shutdown."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def serve_forever(config: ServerConfig, log: Callable[[str], None] = print) -> None:
    """Load the model, listen on host:port (port 0: any free port) and serve until a signal."""
    app = create_app(config, log)
    import uvicorn  # noqa: PLC0415

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise HobbitError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    # listen before saying so: a client that connects at once waits in the backlog until
    # uvicorn accepts, instead of being refused
    sock.listen(2048)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    log(f"serving {config.alias} on http://{config.host}:{port} (OpenAI API under /v1, "
        "expert cache statistics at /hobbit/stats)")
    sys.stderr.flush()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler that was there before it: ours, which ends the process with exit code 0
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except _Stopped:
        log("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        from llama_cpp.server import app as server_app  # noqa: PLC0415

        if server_app._llama_proxy is not None:
            server_app._llama_proxy.free()
