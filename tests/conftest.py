"""pytest set-up shared by every test: gevent patches the standard library
before anything imports a socket, exactly as the `opensips-fs` entry point does.

Helpers shared by several test modules live beside it, in modules whose
names do not start with ``test_`` (pytest collects none of them): golden.py
(where the golden transcripts are: ``$OPENSIPS_FS_GOLDEN``, else
``<repo>/../shared/golden``, else ``/work/shared/golden``; skipped when
absent, failed when ``CI=true``) and mi_support.py (the MI test registry)."""

from gevent import monkey

monkey.patch_all()
