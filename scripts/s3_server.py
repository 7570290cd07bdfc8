"""A real S3 HTTP endpoint on loopback for wap's tests (moto), started single-threaded.

Why single-threaded: moto's stock `moto_server` serves requests on many threads and its
conditional-write check (If-None-Match / If-Match) is not atomic across them; under 8 concurrent
writers it let two writers win the same key about once in 300 rounds. Served on one thread, each
request runs to completion before the next, so put-if-absent and compare-and-swap are atomic, as
on real S3 and MinIO. Usage: s3_server.py PORT [BUCKET...]
"""

import sys
import threading
import urllib.request

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", port, app, threaded=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for bucket in sys.argv[2:]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", method="PUT")
        urllib.request.urlopen(req, timeout=10).read()
    print(f"serving S3 on 127.0.0.1:{port}", flush=True)
    thread.join()


if __name__ == "__main__":
    main()
