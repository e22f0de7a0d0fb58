"""A deterministic OpenAI-compatible server for exact scoring checks: it answers from a
script, can fail on purpose (429, 500, dropped connections), and counts every request."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from crucible.devcluster.cluster import free_port

# (model, user message) -> reply text
Script = Callable[[str, str, list[dict[str, str]]], str]


class ScriptedServer:
    def __init__(
        self,
        script: Script,
        failures: dict[str, list[int]] | None = None,
        *,
        refused_parameters: tuple[str, ...] = (),
        delay: float = 0.002,
    ) -> None:
        self.script = script
        self.delay = delay  # seconds each answer takes
        # answer 400 to requests with these body keys, as servers without the feature do
        self.refused_parameters = refused_parameters
        # per model, the statuses to answer its first requests with before succeeding
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.requests: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = free_port()

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        model = body["model"]
        self.requests[model] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            refused = [k for k in self.refused_parameters if k in body]
            if refused:
                return web.Response(status=400, text=f"{refused[0]} is not supported")
            pending = self.failures.get(model)
            if pending:
                status = pending.pop(0)
                return web.Response(
                    status=status,
                    text="scripted failure",
                    headers={"Retry-After": "0"} if status == 429 else None,
                )
            self.bodies.append(body)
            user = next(m["content"] for m in body["messages"] if m["role"] == "user")
            reply = self.script(model, user, body["messages"])
            self.served[model] += 1
            return web.json_response(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": reply},
                        }
                    ],
                }
            )
        finally:
            self.in_flight -= 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextmanager
def serving(server: ScriptedServer) -> Iterator[ScriptedServer]:
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", server.port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()
