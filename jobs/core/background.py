"""Work done in a thread beside the job's own step, stopped with it.

`beside(fn, *args, **kwargs)` runs `fn(*args, stop=event, **kwargs)` in one thread (with the
job's log context) while the `with` body runs, and yields its `Future`. Leaving the body
normally waits for `fn`; leaving it by an exception (a failed step, SIGTERM's `Terminated`)
sets `stop`, waits for `fn` to notice it, and re-raises the body's exception: the job never
exits with a thread still writing. `fn` must check `stop` often (between files, say).
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def beside(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Iterator[Future[T]]:
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        call = functools.partial(fn, *args, stop=stop, **kwargs)
        future = pool.submit(contextvars.copy_context().run, call)
        try:
            yield future
        except BaseException:
            stop.set()
            raise
        # Leaving the pool's `with` joins the thread in both cases.
