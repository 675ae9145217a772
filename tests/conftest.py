"""pytest set-up shared by every test: gevent patches the standard library
before anything imports a socket, exactly as the `opensips-fs` entry point does."""

from gevent import monkey

monkey.patch_all()
