"""How Deeplake's memory allocator is set up in processes that write tables.

Deeplake allocates through its own mimalloc, which gives freed memory back to the system 10 ms
after it is freed: every episode's write then faulted all its buffers in again (~20k page faults,
~60 ms of CPU per 34 MB episode; over a 10-episode ingest ~0.9 s of system time). Kept for 10 s,
consecutive writes reuse them, for ~100 MB more resident memory per writing process. mimalloc
reads the setting when deeplake is loaded, so ``assets`` imports this module before anything that
imports deeplake: the CLI's ingest and the runs ``dagster dev`` launches both load the asset graph
first. A value set by the user wins. Processes that only read tables (training loaders, queries)
do not import it.
"""

import os

os.environ.setdefault("MIMALLOC_PURGE_DELAY", "10000")
