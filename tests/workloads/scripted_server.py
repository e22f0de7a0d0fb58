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
# (model, text before the answer, the answer) -> log-probability of each of the answer's
# characters (each character is a token here)
Likelihood = Callable[[str, str, str], float]


class ScriptedServer:
    def __init__(
        self,
        script: Script,
        failures: dict[str, list[int]] | None = None,
        *,
        refused_parameters: tuple[str, ...] = (),
        delay: float = 0.002,
        likelihood: Likelihood | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.script = script
        self.host = host  # where it listens: pods on the real node reach the host's bridge
        self.likelihood = likelihood  # None: no completions endpoint, as with hosted chat
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

    async def completions(self, request: web.Request) -> web.Response:
        """Prompt log-probabilities with echo: one token per character; the text after the
        last "Answer:" is scored by the likelihood script, everything before it at 0."""
        body = await request.json()
        model = body["model"]
        self.requests[f"{model} completions"] += 1
        await asyncio.sleep(self.delay)
        if self.likelihood is None or not body.get("echo") or body.get("max_tokens") != 0:
            return web.Response(status=404, text="not found")
        self.bodies.append(body)
        choices = []
        for index, text in enumerate(body["prompt"]):
            head, marker, answer = text.rpartition("Answer:")
            head += marker
            per_character = self.likelihood(model, head, answer) if marker else 0.0
            values = [0.0] * len(head) + [per_character] * len(answer)
            choices.append(
                {
                    "index": index,
                    "text": text,
                    "logprobs": {
                        "tokens": list(text),
                        "token_logprobs": [None, *values[1:]],
                        "text_offset": list(range(len(text))),
                    },
                    "finish_reason": "length",
                }
            )
        self.served[f"{model} completions"] += 1
        return web.json_response({"id": "x", "object": "text_completion", "choices": choices})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


@contextmanager
def serving(server: ScriptedServer) -> Iterator[ScriptedServer]:
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_post("/v1/completions", server.completions)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, server.host, server.port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()
