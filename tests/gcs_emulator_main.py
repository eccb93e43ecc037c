"""gcp-storage-emulator with generation preconditions: `python tests/gcs_emulator_main.py start ...`.

    python tests/gcs_emulator_main.py start --host 127.0.0.1 --port 9023 --default-bucket b --in-memory

Takes the same arguments as `gcp-storage-emulator` and runs its very `main()`; the only
difference is that the object handlers honour `ifGenerationMatch` (and the XML API's
`x-goog-if-generation-match` header) the way Cloud Storage does, which the emulator
itself silently ignores:

- a write (media / multipart / resumable upload, every resumable chunk, XML PUT,
  metadata PATCH, copy / rewrite / compose to a destination) whose precondition does not
  match the object's current generation gets HTTP 412 `conditionNotMet`; `0` means "the
  object must not exist";
- a read or delete of an existing object whose generation differs gets 412 too; one of a
  missing object is left to the emulator (404), as Cloud Storage answers.

The emulator handles one request at a time, so the check and the write it guards are atomic,
like on Cloud Storage. But its server reads a request's body and writes its answer in that one
turn, so a client stopped mid-request (a job under SIGSTOP, as the lease tests do) froze it for
every other client. Here each connection has its own thread that reads the whole request body
first and writes the answer after; only the handling in between takes turns (`_one_at_a_time`).
"""

from __future__ import annotations

import functools
import io
import sys
import threading
from http import HTTPStatus
from http import server as http_server

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold."


def _expected_generation(request) -> int | None:
    """The `ifGenerationMatch` of a request (query parameter or XML API header), or None."""
    values = request.query.get("ifGenerationMatch")
    value = values[0] if values else request.get_header("x-goog-if-generation-match")
    if value is None or str(value).strip() == "":
        return None
    return int(value)


def _current_generation(storage, bucket: str, name: str) -> int | None:
    try:
        return int(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return None


def _precondition_failed(response) -> None:
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json(
        {
            "error": {
                "code": 412,
                "message": PRECONDITION_MESSAGE,
                "errors": [
                    {
                        "domain": "global",
                        "reason": "conditionNotMet",
                        "message": PRECONDITION_MESSAGE,
                        "locationType": "header",
                        "location": "If-Match",
                    }
                ],
            }
        }
    )


def _target_of_params(request, storage) -> tuple[str, str] | None:
    params = request.params or {}
    if "dest_object_id" in params:  # copyTo / rewriteTo: the precondition is on the destination
        return params["dest_bucket_name"], params["dest_object_id"]
    if "object_id" in params:
        return params["bucket_name"], params["object_id"]
    return None


def _target_of_insert(request, storage) -> tuple[str, str] | None:
    bucket = (request.params or {}).get("bucket_name")
    if "upload_id" in request.query:  # a resumable chunk POSTed instead of PUT
        return _target_of_resumable(request, storage)
    if "name" in request.query:
        return bucket, request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
        if meta.get("name"):
            return bucket, meta["name"]
    return None


def _target_of_resumable(request, storage) -> tuple[str, str] | None:
    try:
        obj = storage.get_resumable_file_obj(request.query["upload_id"][0])
    except (NotFound, KeyError, IndexError):
        return None  # the emulator answers this one itself
    return obj["bucket"], obj["name"]


def _guard(handler, target, *, create: bool):
    """`handler`, answering 412 first when the request's generation precondition fails.

    `create`: the request may create the object, so a precondition other than 0 fails on
    a missing object; otherwise a missing object is left to the handler (404).
    """

    @functools.wraps(handler)
    def guarded(request, response, storage, *args, **kwargs):
        expected = _expected_generation(request)
        if expected is not None:
            where = target(request, storage)
            if where is not None:
                current = _current_generation(storage, *where)
                if current is None:
                    failed = create and expected != 0
                else:
                    failed = expected != current
                if failed:
                    _precondition_failed(response)
                    return None
        return handler(request, response, storage, *args, **kwargs)

    guarded.__wrapped_precondition__ = True
    return guarded


_TURN = threading.Lock()


def _request_body(handler) -> bytes:
    """The request's body bytes, as sent (a chunked body keeps its framing)."""
    length = handler.headers.get("Content-Length")
    if length is not None:
        return handler.rfile.read(int(length))
    if "chunked" not in (handler.headers.get("Transfer-Encoding") or "").lower():
        return b""
    body = bytearray()
    while True:
        line = handler.rfile.readline()
        body += line
        size = int(line.strip().split(b";")[0] or b"0", 16)
        if size == 0:
            while True:  # trailers, up to the blank line
                trailer = handler.rfile.readline()
                body += trailer
                if trailer in (b"\r\n", b"\n", b""):
                    return bytes(body)
        body += handler.rfile.read(size + 2)  # the chunk and its CRLF


def _one_at_a_time(method):
    """do_GET & co.: the body read whole first, the handling one request at a time, the answer
    written after (a stopped client blocks only its own thread)."""

    @functools.wraps(method)
    def do(self):
        source, self.rfile = self.rfile, io.BytesIO(_request_body(self))
        answer, self.wfile = self.wfile, io.BytesIO()
        try:
            with _TURN:
                method(self)
        finally:
            written, self.rfile, self.wfile = (
                self.wfile.getvalue(),
                source,
                answer,
            )  # the connection's own, for its next request
            answer.write(written)

    return do


def _threaded_run(self):
    """`server.APIThread.run` with a server that gives each connection its own thread."""
    self._httpd = http_server.ThreadingHTTPServer(
        (self._host, self._port), functools.partial(server.RequestHandler, self._storage)
    )
    self._httpd.daemon_threads = True
    self.is_running.set()
    self._httpd.serve_forever()


def install() -> None:
    """Replaces the emulator's object handlers (module attributes and route tables), and its
    server with one whose stopped clients block only themselves."""
    if getattr(objects.insert, "__wrapped_precondition__", False):
        return
    for name in ("do_GET", "do_POST", "do_DELETE", "do_PUT", "do_PATCH"):
        setattr(server.RequestHandler, name, _one_at_a_time(getattr(server.RequestHandler, name)))
    server.APIThread.run = _threaded_run
    replacements = {
        objects.insert: _guard(objects.insert, _target_of_insert, create=True),
        objects.upload_partial: _guard(objects.upload_partial, _target_of_resumable, create=True),
        objects.xml_upload: _guard(objects.xml_upload, _target_of_params, create=True),
        objects.copy: _guard(objects.copy, _target_of_params, create=True),
        objects.rewrite: _guard(objects.rewrite, _target_of_params, create=True),
        objects.compose: _guard(objects.compose, _target_of_params, create=True),
        objects.patch: _guard(objects.patch, _target_of_params, create=False),
        objects.delete: _guard(objects.delete, _target_of_params, create=False),
        objects.get: _guard(objects.get, _target_of_params, create=False),
        objects.download: _guard(objects.download, _target_of_params, create=False),
    }
    for original, guarded in replacements.items():
        setattr(objects, original.__name__, guarded)  # `server.Router` looks up objects.insert
    for _, handlers in server.HANDLERS:  # the route tables hold the functions themselves
        for method, handler in list(handlers.items()):
            if handler in replacements:
                handlers[method] = replacements[handler]


if __name__ == "__main__":
    install()
    main(sys.argv[1:])
