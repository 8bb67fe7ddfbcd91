"""A web handler that records its errors: a WSGI app (standard library only) collects every
unhandled exception with its traceback and request, then answers 500 without waiting."""

import tempfile
import threading
import traceback
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import memcollect as mc


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def make_app(memories: mc.MemoryCollector):
    def app(environ, start_response):
        try:
            if environ["PATH_INFO"] == "/checkout":
                cart = {"items": []}
                return [str(1 / len(cart["items"])).encode()]  # a bug: empty cart
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        except Exception as exc:  # noqa: BLE001 - recording every unhandled error is the point
            memories.collect(
                "error",
                f"{type(exc).__name__} in {environ['PATH_INFO']}: {exc}",
                {"traceback": traceback.format_exc(), "method": environ["REQUEST_METHOD"]},
                tags=["web", environ["PATH_INFO"].strip("/")],
                agent="web-handler",
            )
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"something went wrong; it has been recorded"]

    return app


with tempfile.TemporaryDirectory() as data_dir, mc.MemoryCollector(data_dir=data_dir) as memories:
    server = make_server("127.0.0.1", 0, make_app(memories), handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    print("GET /:", urllib.request.urlopen(f"{base}/").status)
    try:
        urllib.request.urlopen(f"{base}/checkout")
    except urllib.error.HTTPError as err:
        print("GET /checkout:", err.code)
    server.shutdown()
    memories.flush()
    error = memories.search("ZeroDivisionError checkout", category="error")[0]
    print("recorded:", error.content)
    print("with traceback:", "ZeroDivisionError" in error.metadata["traceback"])
    print("priority:", error.priority)
