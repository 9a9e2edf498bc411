"""A fake model server for Hestia integration tests: enough of the Ollama API and of the OpenAI
API for their official Python clients (`ollama`, `openai`) to work against it. Stdlib only.

Run as a child process:  python tests/model_upstream.py [--port N] [--token-delay-ms MS]

Port: env HESTIA_PORT (set by the gateway), overridden by --port N; if neither is given an
ephemeral port is used.  Binds 127.0.0.1 only.  Keep-alive (HTTP/1.1), one daemon thread per
connection.  Once listening, prints `listening <port> <pid>` to stdout (flushed).

Models: `llama3:8b` and `mistral:7b`.  Any other model gets 404 in the API's own error shape:
Ollama `{"error": "model \"X\" not found, try pulling it first"}`, OpenAI
`{"error": {"message", "type": "invalid_request_error", "param": "model",
"code": "model_not_found"}}`.

The reply is deterministic: "You said: " + the last user message (chat) or the prompt
(generate, completions), cut into tokens of one word each with the whitespace after it, so the
tokens concatenate to the reply exactly ("You ", "said: ", "hi ", "there").  Streams are chunked,
one chunk written and flushed per token, with --token-delay-ms (default 5) between tokens.

Holding a stream back: a request with the header `X-Hold-Last-Token: K` gets every token but the
last at once; the last one (and what follows it) waits (<= 30 s, then is sent anyway) for
`POST /release?key=K`.  A release sent before the stream reaches the gate is remembered.

Routes:
  GET  /health, GET /              200 (`/` says "Ollama is running", as Ollama does)
  POST /release?key=K              opens the gate K; 200 "released"
  GET  /api/version                {"version": "0.6.0"}
  GET  /api/tags                   the models, with digest, size, modified_at and details
  POST /api/show                   details, model_info, capabilities of one model
  POST /api/chat, /api/generate    stream (default true): application/x-ndjson, one line per
                                   token (`message.content` / `response`), then a `done: true`
                                   line with done_reason and the timing/count fields;
                                   stream false: one JSON object with the whole reply
  POST /api/embed                  {"embeddings": [vector per input]}
  GET  /v1/models                  {"object": "list", "data": [model objects]}
  POST /v1/chat/completions        stream false: a chat.completion; stream true: text/event-stream,
                                   a first chunk with the assistant role, one
                                   `data: {chat.completion.chunk}` per token, a last chunk with
                                   finish_reason "stop" (then a usage chunk when
                                   stream_options.include_usage), then `data: [DONE]`
  POST /v1/completions             the same with text_completion objects
  POST /v1/embeddings              input: a string or a list of strings; encoding_format
                                   "float" (default) or "base64" (little-endian float32)
Embedding of a text: 8 floats, `sha256(text)[i] / 255` for i in 0..7.
Anything else: 404 {"error": "not found"}.  Bad JSON or fields: 400 in the API's error shape.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

MODELS = {
    "llama3:8b": {"family": "llama", "parameter_size": "8.0B", "size": 4661224676},
    "mistral:7b": {"family": "llama", "parameter_size": "7.2B", "size": 4113301824},
}
MODIFIED_AT = "2024-05-01T12:00:00.000000Z"
CREATED = 1714564800  # MODIFIED_AT as a Unix time
EMBEDDING_DIMS = 8
GATE_TIMEOUT = 30
DISCONNECT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

TOKEN_DELAY = 0.005
_gates = {}
_gates_lock = threading.Lock()
_ids = iter(range(1, sys.maxsize))


class BadRequest(Exception):
    pass


class UnknownModel(Exception):
    pass


def tokens_for(text):
    return re.findall(r"\S+\s*", "You said: " + text)


def embedding(text):
    return [b / 255 for b in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIMS]]


def digest(model):
    return hashlib.sha256(model.encode()).hexdigest()


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def gate(key):
    with _gates_lock:  # kept if it exists already: a release may come before the stream
        return _gates.setdefault(key, threading.Event())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    # ---- dispatch -------------------------------------------------------
    def _dispatch(self):
        path, _, query = self.path.partition("?")
        self.query = parse_qs(query)
        self.openai = path.startswith("/v1/")
        try:
            body = self._read_body()
            route = ROUTES.get((self.command, path))
            if route is None:
                return self._send(404, {"error": "not found"})
            self.body = body
            getattr(self, route)()
        except UnknownModel as exc:
            self._error(404, f'model "{exc}" not found, try pulling it first',
                        f"The model `{exc}` does not exist or you do not have access to it.",
                        code="model_not_found", param="model")
        except BadRequest as exc:
            self._error(400, str(exc), str(exc), code=None, param=None)
        except DISCONNECT_ERRORS:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    # ---- helpers --------------------------------------------------------
    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
            while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self):
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            raise BadRequest("invalid JSON body") from None
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data

    def _model(self, data):
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required")
        if model not in MODELS:
            raise UnknownModel(model)
        return model

    def _error(self, status, ollama_message, openai_message, *, code, param):
        if self.openai:
            self._send(status, {"error": {"message": openai_message,
                                          "type": "invalid_request_error",
                                          "param": param, "code": code}})
        else:
            self._send(status, {"error": ollama_message})

    def _send(self, status, body, ctype="application/json"):
        if not isinstance(body, bytes):
            body = (json.dumps(body) if ctype == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, ctype, parts):
        """Send `parts` (an iterable of str) chunked, one flushed chunk each."""
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in parts:
            data = part.encode()
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _paced(self, tokens):
        """The tokens with the delay between them, and the last one behind the gate if the
        request asked for one."""
        key = self.headers.get("X-Hold-Last-Token")
        event = gate(key) if key else None
        try:
            for i, token in enumerate(tokens):
                if i:
                    time.sleep(TOKEN_DELAY)
                if event is not None and i == len(tokens) - 1:
                    event.wait(GATE_TIMEOUT)
                yield token
        finally:
            if event is not None:
                with _gates_lock:
                    if _gates.get(key) is event:
                        del _gates[key]

    # ---- plain routes ---------------------------------------------------
    def route_health(self):
        self._send(200, {"ok": True})

    def route_root(self):
        self._send(200, "Ollama is running", "text/plain; charset=utf-8")

    def route_release(self):
        gate(self.query.get("key", [""])[0]).set()
        self._send(200, "released", "text/plain")

    # ---- Ollama ---------------------------------------------------------
    def route_version(self):
        self._send(200, {"version": "0.6.0"})

    @staticmethod
    def _details(model):
        info = MODELS[model]
        return {"parent_model": "", "format": "gguf", "family": info["family"],
                "families": [info["family"]], "parameter_size": info["parameter_size"],
                "quantization_level": "Q4_0"}

    def route_tags(self):
        self._send(200, {"models": [
            {"name": model, "model": model, "modified_at": MODIFIED_AT,
             "size": info["size"], "digest": digest(model), "details": self._details(model)}
            for model, info in MODELS.items()]})

    def route_show(self):
        model = self._model(self._json())
        self._send(200, {
            "modelfile": f"FROM {model}\n", "parameters": "stop \"<|eot_id|>\"",
            "template": "{{ .Prompt }}", "details": self._details(model),
            "model_info": {"general.architecture": MODELS[model]["family"],
                           "general.parameter_count": 8030261248},
            "capabilities": ["completion"], "modified_at": MODIFIED_AT})

    def _ollama(self, field, text_of):
        data = self._json()
        model = self._model(data)
        text = text_of(data)
        tokens = tokens_for(text)

        def part(token, done):
            content = {"role": "assistant", "content": token} if field == "message" else token
            line = {"model": model, "created_at": now_iso(), field: content, "done": done}
            if done:
                line.update(done_reason="stop", total_duration=12_000_000,
                            load_duration=1_000_000, prompt_eval_count=len(text.split()),
                            prompt_eval_duration=2_000_000, eval_count=len(tokens),
                            eval_duration=9_000_000)
                if field == "response":
                    line["context"] = list(range(len(tokens)))
            return line

        if data.get("stream", True) is False:
            return self._send(200, part("".join(tokens), True))
        lines = (json.dumps(part(t, False)) + "\n" for t in self._paced(tokens))
        self._stream("application/x-ndjson",
                     _then(lines, lambda: json.dumps(part("", True)) + "\n"))

    def route_chat(self):
        self._ollama("message", _last_user_message)

    def route_generate(self):
        self._ollama("response", lambda data: _text(data, "prompt"))

    def route_embed(self):
        data = self._json()
        model = self._model(data)
        self._send(200, {"model": model,
                         "embeddings": [embedding(t) for t in _inputs(data)],
                         "total_duration": 1_000_000, "load_duration": 100_000,
                         "prompt_eval_count": len(_inputs(data))})

    # ---- OpenAI ---------------------------------------------------------
    def route_models(self):
        self._send(200, {"object": "list", "data": [
            {"id": model, "object": "model", "created": CREATED, "owned_by": "library"}
            for model in MODELS]})

    def _openai(self, kind, text_of):
        data = self._json()
        model = self._model(data)
        text = text_of(data)
        tokens = tokens_for(text)
        chat = kind == "chat.completion"
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{next(_ids)}"
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(tokens),
                 "total_tokens": len(text.split()) + len(tokens)}

        def obj(choices, chunk, **extra):
            return {"id": ident, "object": kind + (".chunk" if chunk and chat else ""),
                    "created": int(time.time()), "model": model,
                    "system_fingerprint": "fp_hestia", "choices": choices, **extra}

        def choice(content, finish, *, chunk, role=False):
            if not chat:
                return {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
            if chunk:
                delta = {"role": "assistant", "content": content} if role else (
                    {"content": content} if content is not None else {})
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "logprobs": None, "finish_reason": finish,
                    "message": {"role": "assistant", "content": content, "refusal": None}}

        if not data.get("stream", False):
            return self._send(200, obj([choice("".join(tokens), "stop", chunk=False)], False,
                                       usage=usage))

        def events():
            if chat:
                yield obj([choice("", None, chunk=True, role=True)], True)
            for token in self._paced(tokens):
                yield obj([choice(token, None, chunk=True)], True)
            yield obj([choice(None if chat else "", "stop", chunk=True)], True)
            if (data.get("stream_options") or {}).get("include_usage"):
                yield obj([], True, usage=usage)

        sse = (f"data: {json.dumps(event)}\n\n" for event in events())
        self._stream("text/event-stream", _then(sse, lambda: "data: [DONE]\n\n"))

    def route_chat_completions(self):
        self._openai("chat.completion", _last_user_message)

    def route_completions(self):
        self._openai("text_completion", lambda data: _text(data, "prompt"))

    def route_embeddings(self):
        data = self._json()
        model = self._model(data)
        texts = _inputs(data)
        as_base64 = data.get("encoding_format") == "base64"

        def encoded(vector):
            if as_base64:
                return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            return vector

        tokens = sum(len(t.split()) for t in texts)
        self._send(200, {"object": "list", "model": model,
                         "data": [{"object": "embedding", "index": i,
                                   "embedding": encoded(embedding(t))}
                                  for i, t in enumerate(texts)],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _then(parts, last):
    """`parts`, then `last()`: the closing line is built only once the tokens are out."""
    yield from parts
    yield last()


def _text(data, field):
    value = data.get(field, "")
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    return value


def _last_user_message(data):
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # OpenAI content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _inputs(data):
    value = data.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest("input must be a string or a list of strings")


ROUTES = {
    ("GET", "/health"): "route_health",
    ("GET", "/"): "route_root",
    ("POST", "/release"): "route_release",
    ("GET", "/api/version"): "route_version",
    ("GET", "/api/tags"): "route_tags",
    ("POST", "/api/show"): "route_show",
    ("POST", "/api/chat"): "route_chat",
    ("POST", "/api/generate"): "route_generate",
    ("POST", "/api/embed"): "route_embed",
    ("GET", "/v1/models"): "route_models",
    ("POST", "/v1/chat/completions"): "route_chat_completions",
    ("POST", "/v1/completions"): "route_completions",
    ("POST", "/v1/embeddings"): "route_embeddings",
}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self):
        # Skip HTTPServer's socket.getfqdn() lookup, which can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], DISCONNECT_ERRORS + (TimeoutError,)):
            super().handle_error(request, client_address)


def main(argv=None):
    global TOKEN_DELAY
    parser = argparse.ArgumentParser(description="Hestia test model server (Ollama + OpenAI)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("HESTIA_PORT") or 0))
    parser.add_argument("--token-delay-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    TOKEN_DELAY = args.token_delay_ms / 1000

    server = Server(("127.0.0.1", args.port), Handler)
    print(f"listening {server.server_address[1]} {os.getpid()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
