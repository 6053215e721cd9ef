#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub's file endpoints, on 127.0.0.1, for the tests.

    hub_server.py --root DIR --log FILE      (prints "READY <port>" once listening)

`GET /{org}/{repo}/resolve/{revision}/{path}` of a file `DIR/{org}/{repo}/{revision}/{path}` answers as the hub
does for an LFS file: `302` to the file's blob on a CDN host (here a second port, another origin: `/cdn/{sha256}`), with
`X-Repo-Commit` (a 40-hex commit id derived from the revision), `X-Linked-Etag` (the SHA-256) and `X-Linked-Size`.
`GET /cdn/{sha256}` serves the bytes, honouring `Range` (`206` with `Content-Range`). Every request's path and
`Authorization` header are appended to the log file, so a test can tell that a token reached the server.
`GET /{owner}/{repo}/releases/download/{tag}/{name}` of `DIR/{owner}/{repo}/{tag}/releases/{name}` answers as GitHub
does for a release asset: a redirect to the same CDN.
"""
import argparse
import hashlib
import http.server
import os
import threading
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    root = Path(args.root)
    lock = threading.Lock()
    blobs = {}

    def sha_of(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def record(self):
            with lock, open(args.log, "a") as log:
                log.write(f"{self.command} {self.path} authorization={self.headers.get('Authorization', '')}\n")

        def do_HEAD(self):
            self.do_GET(body=False)

        def do_GET(self, body=True):
            self.record()
            parts = self.path.split("?")[0].lstrip("/").split("/")
            # A GitHub release asset, `/{owner}/{repo}/releases/download/{tag}/{name}`: a redirect to the CDN too.
            release = len(parts) == 6 and parts[2:4] == ["releases", "download"]
            if release or (len(parts) >= 5 and parts[2] == "resolve"):
                if release:
                    org, repo, _, _, revision, name = parts
                    rest = ["releases", name]
                else:
                    org, repo, _, revision, *rest = parts
                file = root / org / repo / revision / "/".join(rest)
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                sha = sha_of(file)
                with lock:
                    blobs[sha] = file
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{cdn.server_address[1]}/cdn/{sha}")
                self.send_header("X-Repo-Commit", hashlib.sha1(revision.encode()).hexdigest())
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(file.stat().st_size))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if len(parts) == 2 and parts[0] == "cdn" and parts[1] in blobs:
                data = blobs[parts[1]].read_bytes()
                start, end = 0, len(data) - 1
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    first, _, last = ranged[6:].partition("-")
                    start = int(first or 0)
                    end = min(int(last), len(data) - 1) if last else len(data) - 1
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                chunk = data[start : end + 1]
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("ETag", f'"{parts[1]}"')
                self.end_headers()
                if body:
                    self.wfile.write(chunk)
                return
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    os.umask(0o022)
    main()
