"""The clients people really use, through the gateway: the official `ollama` and `openai` Python
clients against a fake model server (tests/model_upstream.py), and curl for plain uploads and
downloads (tests/upstream_app.py). Every test begins with a cold start: the client's first
request is the one that starts the backend.

The official clients are synchronous, while the gateway runs in this test's trio loop, so they
run in a worker thread. A thread cannot be cancelled: the clients' own timeouts bound them, and
the outer `trio.fail_after` bounds the rest.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import ollama
import openai
import pytest
import trio

from hestia import Gateway

from .conftest import GatewayFactory, free_port, upstream_service

MODEL_UPSTREAM = str(Path(__file__).parents[1] / "model_upstream.py")
CLIENT_TIMEOUT = 10
MB = 1024 * 1024
MODELS = ["llama3:8b", "mistral:7b"]
QUESTION = "why is the sky blue?"
# model_upstream.py answers "You said: " + the question, one word (with its space) per token.
TOKENS = ["You ", "said: ", "why ", "is ", "the ", "sky ", "blue?"]
ANSWER = "You said: why is the sky blue?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]

T = TypeVar("T")


def model_service(*flags: str) -> dict[str, Any]:
    """A service backed by tests/model_upstream.py with `flags`."""
    return {
        "upstream": f"http://127.0.0.1:{free_port()}",
        "launcher": {"process": {"command": [sys.executable, MODEL_UPSTREAM, *flags],
                                 "stop_timeout": "2s"}},
        "readiness": {"http": "/health", "timeout": "20s"},
    }


async def cold_gateway(start_gateway: GatewayFactory, name: str,
                       service: dict[str, Any]) -> Gateway:
    gateway = await start_gateway(services={name: service})
    assert gateway.supervisors[name].state.name == "COLD"
    return gateway


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def ollama_client(gateway: Gateway, **kwargs: Any) -> ollama.Client:
    return ollama.Client(host=f"{gateway.url}/services/ollama", timeout=CLIENT_TIMEOUT, **kwargs)


def openai_client(gateway: Gateway) -> openai.OpenAI:
    # No retries: a failed exchange must fail the test, not be papered over.
    return openai.OpenAI(base_url=f"{gateway.url}/services/openai/v1", api_key="unused",
                         timeout=CLIENT_TIMEOUT, max_retries=0)


def release(gateway: Gateway, service: str, key: str) -> None:
    """Let the model server send the last token of the stream held with `key` (directly, not
    through the gateway)."""
    port = gateway.supervisors[service].config.upstream_port
    httpx.post(f"http://127.0.0.1:{port}/release?key={key}").raise_for_status()


def embedding(text: str) -> list[float]:
    """What model_upstream.py answers for `text`."""
    return [b / 255 for b in hashlib.sha256(text.encode()).digest()[:8]]


def as_float32(vector: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


def pattern(n: int) -> bytes:
    """What upstream_app.py's /bytes?n=N sends: byte i == i % 256."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# --- ollama ---------------------------------------------------------------------------------


async def test_ollama_client_lists_and_shows_models_after_a_cold_start(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "ollama", model_service())

        def list_and_show() -> tuple[ollama.ListResponse, ollama.ShowResponse]:
            with ollama_client(gateway) as client:
                return client.list(), client.show("mistral:7b")

        listed, shown = await in_thread(list_and_show)
        assert [m.model for m in listed.models] == MODELS
        assert [m.details.parameter_size for m in listed.models] == ["8.0B", "7.2B"]
        assert listed.models[0].modified_at.year == 2024
        assert shown.details.family == "llama"
        assert shown.capabilities == ["completion"]
        assert gateway.supervisors["ollama"].starts == 1


async def test_ollama_streaming_chat_yields_every_token_in_order(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "ollama", model_service())

        def chat() -> list[ollama.ChatResponse]:
            with ollama_client(gateway) as client:
                return list(client.chat(model="llama3:8b", messages=MESSAGES, stream=True))

        parts = await in_thread(chat)
        assert [p.message.content for p in parts] == [*TOKENS, ""]
        assert "".join(p.message.content for p in parts) == ANSWER
        assert [p.done for p in parts] == [False] * len(TOKENS) + [True]
        assert {p.model for p in parts} == {"llama3:8b"}
        assert (parts[-1].done_reason, parts[-1].eval_count) == ("stop", len(TOKENS))


async def test_ollama_non_streaming_chat_returns_the_whole_answer(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "ollama", model_service())

        def chat() -> ollama.ChatResponse:
            with ollama_client(gateway) as client:
                return client.chat(model="mistral:7b", messages=MESSAGES)

        response = await in_thread(chat)
        assert response.message.role == "assistant"
        assert response.message.content == ANSWER
        assert (response.model, response.done, response.done_reason) == (
            "mistral:7b", True, "stop")
        assert response.eval_count == len(TOKENS)


async def test_ollama_streaming_generate_yields_every_token_in_order(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "ollama", model_service())

        def generate() -> list[ollama.GenerateResponse]:
            with ollama_client(gateway) as client:
                return list(client.generate(model="llama3:8b", prompt=QUESTION, stream=True))

        parts = await in_thread(generate)
        assert [p.response for p in parts] == [*TOKENS, ""]
        assert parts[-1].done is True
        assert parts[-1].context == list(range(len(TOKENS)))


async def test_ollama_stream_reaches_the_client_before_the_upstream_finishes(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "ollama", model_service())
        seen: list[str] = []

        def chat() -> None:
            # The model server holds the last token until released; a gateway that buffered
            # the stream would deliver nothing until then, and the client's timeout would fire.
            with ollama_client(gateway, headers={"X-Hold-Last-Token": "chat-1"}) as client:
                for part in client.chat(model="llama3:8b", messages=MESSAGES, stream=True):
                    seen.append(part.message.content)
                    if len(seen) == len(TOKENS) - 1:
                        seen.append("<released>")
                        release(gateway, "ollama", "chat-1")

        await in_thread(chat)
        assert seen == [*TOKENS[:-1], "<released>", TOKENS[-1], ""]


async def test_ollama_unknown_model_raises_response_error_404(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "ollama", model_service())

        def chat(stream: bool) -> ollama.ResponseError:
            with ollama_client(gateway) as client, pytest.raises(ollama.ResponseError) as caught:
                response = client.chat(model="llama9:1b", messages=MESSAGES, stream=stream)
                if stream:
                    list(response)
            return caught.value

        for stream in (False, True):
            error = await in_thread(partial(chat, stream))
            assert error.status_code == 404
            # The model server's own answer, not the gateway's 404 for an unknown service.
            assert error.error == 'model "llama9:1b" not found, try pulling it first'


# --- openai ---------------------------------------------------------------------------------


async def test_openai_client_lists_models_after_a_cold_start(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "openai", model_service())

        def models() -> list[openai.types.Model]:
            with openai_client(gateway) as client:
                return list(client.models.list())

        listed = await in_thread(models)
        assert [m.id for m in listed] == MODELS
        assert {(m.object, m.owned_by) for m in listed} == {("model", "library")}
        assert gateway.supervisors["openai"].starts == 1


async def test_openai_streaming_chat_yields_every_chunk_in_order(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "openai", model_service())

        def chat() -> list[openai.types.chat.ChatCompletionChunk]:
            with openai_client(gateway) as client:
                return list(client.chat.completions.create(
                    model="llama3:8b", messages=MESSAGES, stream=True,
                    stream_options={"include_usage": True}))

        chunks = await in_thread(chat)
        choices = [c.choices[0] for c in chunks[:-1]]
        assert [c.delta.content for c in choices] == ["", *TOKENS, None]
        assert "".join(c.delta.content or "" for c in choices) == ANSWER
        assert choices[0].delta.role == "assistant"
        assert [c.finish_reason for c in choices] == [None] * (len(TOKENS) + 1) + ["stop"]
        assert len({c.id for c in chunks}) == 1
        assert {c.model for c in chunks} == {"llama3:8b"}
        assert chunks[-1].choices == []
        assert chunks[-1].usage.completion_tokens == len(TOKENS)


async def test_openai_non_streaming_chat_returns_the_whole_answer(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "openai", model_service())

        def chat() -> openai.types.chat.ChatCompletion:
            with openai_client(gateway) as client:
                return client.chat.completions.create(model="mistral:7b", messages=MESSAGES)

        completion = await in_thread(chat)
        assert completion.object == "chat.completion"
        assert completion.model == "mistral:7b"
        [choice] = completion.choices
        assert (choice.message.role, choice.message.content) == ("assistant", ANSWER)
        assert choice.finish_reason == "stop"
        assert completion.usage.completion_tokens == len(TOKENS)


async def test_openai_embeddings_are_returned_in_input_order(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "openai", model_service())
        texts = ["the first text", "a second one"]

        def embed() -> tuple[Any, Any]:
            with openai_client(gateway) as client:
                # By default the client asks for base64 (float32) and decodes it itself.
                default = client.embeddings.create(model="llama3:8b", input=texts)
                floats = client.embeddings.create(model="llama3:8b", input=texts,
                                                  encoding_format="float")
                return default, floats

        default, floats = await in_thread(embed)
        assert [e.index for e in default.data] == [0, 1]
        assert [e.embedding for e in default.data] == [as_float32(embedding(t)) for t in texts]
        assert [e.embedding for e in floats.data] == [embedding(t) for t in texts]
        assert default.model == "llama3:8b"


async def test_openai_stream_reaches_the_client_before_the_upstream_finishes(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "openai", model_service())
        seen: list[str | None] = []

        def chat() -> None:
            # As for ollama: the last token is held upstream until released.
            with openai_client(gateway) as client:
                stream = client.chat.completions.create(
                    model="llama3:8b", messages=MESSAGES, stream=True,
                    extra_headers={"X-Hold-Last-Token": "chat-2"})
                for chunk in stream:
                    seen.append(chunk.choices[0].delta.content)
                    if len(seen) == len(TOKENS):  # the role chunk, then all tokens but one
                        seen.append("<released>")
                        release(gateway, "openai", "chat-2")

        await in_thread(chat)
        assert seen == ["", *TOKENS[:-1], "<released>", TOKENS[-1], None]


async def test_openai_unknown_model_raises_not_found_error(start_gateway):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "openai", model_service())

        def chat(stream: bool) -> openai.NotFoundError:
            with openai_client(gateway) as client, pytest.raises(openai.NotFoundError) as caught:
                client.chat.completions.create(model="gpt-9", messages=MESSAGES, stream=stream)
            return caught.value

        for stream in (False, True):
            error = await in_thread(partial(chat, stream))
            assert error.status_code == 404
            # The model server's own answer, not the gateway's 404 for an unknown service.
            assert (error.code, error.param) == ("model_not_found", "model")
            assert error.body["message"] == (
                "The model `gpt-9` does not exist or you do not have access to it.")


# --- curl -----------------------------------------------------------------------------------


async def curl(*args: str) -> bytes:
    result = await trio.run_process(["curl", "-sS", "--fail-with-body", *args],
                                    capture_stdout=True)
    return result.stdout


async def test_curl_uploads_20_mb_whole_through_the_gateway(start_gateway, tmp_path):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "files", upstream_service())
        data = pattern(20 * MB)[::-1]
        path = tmp_path / "upload.bin"
        path.write_bytes(data)
        expected = {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        url = f"{gateway.url}/services/files/upload"
        # Content-Length (curl's default for a file), then chunked.
        answer = await curl("--data-binary", f"@{path}", url)
        assert json.loads(answer) == expected
        answer = await curl("--data-binary", f"@{path}", "-H", "Transfer-Encoding: chunked", url)
        assert json.loads(answer) == expected
        assert gateway.supervisors["files"].starts == 1


async def test_curl_downloads_20_mb_whole_through_the_gateway(start_gateway, tmp_path):
    with trio.fail_after(30):
        gateway = await cold_gateway(start_gateway, "files", upstream_service())
        n = 20 * MB
        expected = hashlib.sha256(pattern(n)).hexdigest()
        for query in (f"n={n}", f"n={n}&chunked=1"):
            path = tmp_path / "download.bin"
            written = await curl("-o", str(path), "-w", "%{http_code} %{size_download}",
                                 f"{gateway.url}/services/files/bytes?{query}")
            assert written == f"200 {n}".encode()
            assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
        assert gateway.supervisors["files"].starts == 1
