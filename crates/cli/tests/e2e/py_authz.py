"""An HTTP ext_authz server written independently of zmesh (Python's standard library), for the
end-to-end security test: Envoy's HTTP service protocol — the original method and path, the
request's headers; 200 allows (with a header for the app), anything else denies with its status,
body and headers. Allows `x-user: alice`. Usage: py_authz.py ADDRESS PORT"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Authorizer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def decide(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.headers.get("x-user") == "alice":
            self.send_response(200)
            self.send_header("x-py-authz", f"{self.command} {self.path}")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = b"denied by python"
        self.send_response(403)
        self.send_header("x-authz-reason", "not alice")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = decide

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Authorizer).serve_forever()
