"""Starts a throwaway PostgreSQL server (pgserver, from PyPI) in DIR for the catalog tests.

    python pg_server.py DIR

Prints one line, the server's URL (a Unix socket in DIR, user postgres, no password), then
serves until its stdin closes, and stops the server.
"""
import sys

import pgserver


def main():
    server = pgserver.get_server(sys.argv[1], cleanup_mode="stop")
    print(f"postgresql://postgres@/postgres?host={sys.argv[1]}", flush=True)
    sys.stdin.read()
    server.cleanup()


if __name__ == "__main__":
    main()
