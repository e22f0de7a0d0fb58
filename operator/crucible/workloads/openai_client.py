"""An OpenAI-compatible client for the workloads that ask models (evaluate, synthesize):
chat completions and prompt log-likelihoods, with bounded concurrency and retries that
never lose or double-count a request."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import aiohttp

from crucible.api.contract import ChatEndpoint
from crucible.workloads.common import WorkloadError, log

RETRIED_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_ATTEMPTS = 8
TIMEOUT = aiohttp.ClientTimeout(total=300, connect=30)


class RequestRejectedError(WorkloadError):
    """The server refused a request outright (a 4xx other than rate limits): retrying the
    same request cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LikelihoodUnavailableError(WorkloadError):
    """The endpoint does not return prompt log-probabilities."""


class Client:
    """OpenAI-compatible chat completions with bounded concurrency and retries that never
    lose or double-count a question: each call returns exactly one answer or raises.

    `optional` request parameters (JSON mode, a choice constraint) are sent until an endpoint
    refuses them (400/422); from then on that endpoint is asked without, and says so once."""

    def __init__(self, session: aiohttp.ClientSession, concurrency: int) -> None:
        self.session = session
        self.slots = asyncio.Semaphore(concurrency)
        self.refused: set[str] = set()  # endpoints that refused the optional parameters

    async def chat(
        self,
        endpoint: ChatEndpoint,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int,
        seed: int,
        *,
        optional: dict[str, Any] | None = None,
    ) -> tuple[str, int]:
        body = {
            "model": endpoint.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        if optional and endpoint.name not in self.refused:
            try:
                return await self._chat(endpoint, {**body, **optional})
            except RequestRejectedError as error:
                if error.status not in (400, 422):
                    raise
                if endpoint.name not in self.refused:
                    log.warning(
                        "%s refuses %s (%s); asking without", endpoint.name, optional, error
                    )
                self.refused.add(endpoint.name)
        return await self._chat(endpoint, body)

    async def _chat(self, endpoint: ChatEndpoint, body: dict[str, Any]) -> tuple[str, int]:
        answer, attempts = await self._post(endpoint, "/chat/completions", body)
        return answer["choices"][0]["message"]["content"] or "", attempts

    async def loglikelihoods(
        self, endpoint: ChatEndpoint, context: str, continuations: Sequence[str]
    ) -> tuple[list[float], int]:
        """Each continuation's log-probability given the context, in one completions request
        with echo (the prompt's own log-probabilities, nothing generated): one prompt per
        continuation, whose tokens are those ending past the context (by `text_offset`; a
        token spanning the boundary counts as the continuation's, as a shared prefix would)."""
        body = {
            "model": endpoint.model,
            "prompt": [context + c for c in continuations],
            "max_tokens": 0,
            "echo": True,
            "logprobs": 0,
            "temperature": 0.0,
        }
        try:
            response, attempts = await self._post(endpoint, "/completions", body)
        except RequestRejectedError as error:
            raise LikelihoodUnavailableError(str(error)) from error
        choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
        logprobs = [c.get("logprobs") or {} for c in choices]
        if len(choices) != len(continuations) or not all(
            lp.get("token_logprobs") and lp.get("text_offset") for lp in logprobs
        ):
            raise LikelihoodUnavailableError(
                f"{endpoint.name}: {endpoint.base_url} returned no prompt log-probabilities"
            )
        sums = []
        for lp, continuation in zip(logprobs, continuations, strict=True):
            ends = [*lp["text_offset"][1:], len(context) + len(continuation)]
            tail = [
                value
                for value, end in zip(lp["token_logprobs"], ends, strict=True)
                if end > len(context)
            ]
            if not tail or any(value is None for value in tail):
                raise LikelihoodUnavailableError(
                    f"{endpoint.name}: {endpoint.base_url} returned no log-probability for an "
                    "option's tokens"
                )
            sums.append(float(sum(tail)))
        return sums, attempts

    async def _post(
        self, endpoint: ChatEndpoint, path: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        headers = {}
        if endpoint.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(endpoint.api_key_env, '')}"
        url = endpoint.base_url.rstrip("/") + path
        for attempt in range(1, MAX_ATTEMPTS + 1):
            delay = min(0.25 * 2 ** (attempt - 1), 10.0)
            async with self.slots:
                try:
                    async with self.session.post(url, json=body, headers=headers) as response:
                        if response.status == 200:
                            return await response.json(), attempt
                        text = await response.text()
                        if response.status not in RETRIED_STATUSES:
                            raise RequestRejectedError(
                                response.status,
                                f"{endpoint.name}: {url} answered {response.status}: {text[:300]}",
                            )
                        retry_after = response.headers.get("Retry-After", "")
                        if retry_after.replace(".", "", 1).isdigit():
                            delay = min(float(retry_after), 30.0)
                except (TimeoutError, aiohttp.ClientConnectionError) as error:
                    log.warning("%s: %s (attempt %d)", endpoint.name, error, attempt)
            await asyncio.sleep(delay)
        raise WorkloadError(f"{endpoint.name}: {url} failed {MAX_ATTEMPTS} times in a row")
