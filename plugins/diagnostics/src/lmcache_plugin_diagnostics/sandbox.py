"""Running a ``POST /run_script`` upload: restricted builtins, an allow-listed importer, a time limit.

**This is not a security boundary.** CPython cannot sandbox code that runs in
its own process: attribute walks such as ``().__class__.__base__`` need no
builtin at all, and the injected ``app`` / ``server`` objects reach everything
the server holds. The restrictions below stop accidents (a script that opens
files, evaluates strings or imports whatever it likes by mistake); they do not
stop an attacker. That is why the route is off unless the operator passes
``--run-script-api-enabled`` and is behind ``--http-admin-token`` when one is set.

What a script sees:

* ``__builtins__``: exactly :data:`SAFE_BUILTINS` — ``print`` (to the server's
  stdout), the plain types (``bool int float complex str bytes list dict tuple
  set frozenset``), pure helpers (``abs all any divmod enumerate filter format
  hash isinstance issubclass iter len map max min next pow range repr reversed
  round sorted sum zip callable``), ``getattr``/``hasattr`` that refuse names
  starting with ``__`` (dunders and name-mangled privates), the common exception
  classes (so ``try``/``except`` works), and an ``__import__`` that only imports
  the modules of ``--script-allowed-imports`` (``import a.b`` needs ``a.b`` on the
  list, and binds ``a`` as Python does, so allowing ``os.path`` hands out ``os``
  too; relative imports are refused). Not there: ``open``, ``exec``, ``eval``,
  ``compile``, ``globals``, ``locals``, ``vars``, ``dir``, ``setattr``,
  ``delattr``, ``input``, ``breakpoint``, ``type``, ``object``, ``super``,
  ``memoryview``, ``__build_class__`` (so ``class`` statements fail) and the rest.
* Globals: ``app`` (the Litestar app serving the request, as LMCache injects its
  FastAPI app) and ``server`` (the :class:`~lmcache_core.server.CacheServer`).
  One dict serves as globals and locals, so functions defined by the script see
  its top-level names; ``result``, if the script assigns it, is what it returns.

Time limit: the script runs on its own daemon thread. When the limit passes,
:class:`ScriptTimeout` (a ``BaseException``, so ``except Exception`` does not
swallow it) is raised inside that thread, again every 0.1 s for up to
:data:`STOP_GRACE_S`. That stops Python-level loops; it cannot interrupt one long
C-level operation (``10 ** 10 ** 9``, a blocking call in an allowed module), and a
bare ``except:`` in a loop can keep swallowing it. Such a script is reported as
timed out and left running on its daemon thread (logged as a warning).
"""

from __future__ import annotations

import builtins
import ctypes
import importlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
"""How long past the time limit the script thread keeps being interrupted before we give up on it."""
_STOP_RETRY_S = 0.1

_SAFE_NAMES = (
    "print", "bool", "int", "float", "complex", "str", "bytes", "list", "dict", "tuple", "set", "frozenset",
    "abs", "all", "any", "divmod", "enumerate", "filter", "format", "hash", "isinstance", "issubclass", "iter",
    "len", "map", "max", "min", "next", "pow", "range", "repr", "reversed", "round", "sorted", "sum", "zip",
    "callable",
    "Exception", "ArithmeticError", "AssertionError", "AttributeError", "ImportError", "IndexError", "KeyError",
    "LookupError", "NameError", "NotImplementedError", "OverflowError", "RuntimeError", "StopIteration",
    "TypeError", "ValueError", "ZeroDivisionError",
)


def _checked_attribute_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError("attribute name must be a string")
    if name.startswith("__"):
        raise AttributeError(f"access to attribute {name!r} is not allowed in run_script")
    return name


def safe_getattr(obj: Any, name: str, *default: Any) -> Any:
    """``getattr`` that refuses names starting with ``__``."""
    return getattr(obj, _checked_attribute_name(name), *default)


def safe_hasattr(obj: Any, name: str) -> bool:
    """``hasattr`` that refuses names starting with ``__``."""
    return hasattr(obj, _checked_attribute_name(name))


SAFE_BUILTINS: dict[str, Any] = {name: getattr(builtins, name) for name in _SAFE_NAMES}
SAFE_BUILTINS.update(getattr=safe_getattr, hasattr=safe_hasattr)


def make_importer(allowed: Iterable[str]) -> Any:
    """An ``__import__`` that imports only the module names in ``allowed`` (exact, dotted names)."""
    allowed_set = frozenset(allowed)

    def guarded_import(name: str, globals: Any = None, locals: Any = None,  # noqa: A002 (builtin signature)
                       fromlist: Any = (), level: int = 0) -> Any:
        if level != 0:
            raise ImportError("relative imports are not allowed in run_script")
        if name not in allowed_set:
            raise ImportError(f"Import of '{name}' is not allowed")
        module = importlib.import_module(name)
        if fromlist:
            return module
        # ``import a.b`` binds ``a``, as the real __import__ returns the top-level package.
        return importlib.import_module(name.partition(".")[0])

    return guarded_import


class ScriptTimeout(BaseException):
    """Raised inside a script's thread once its time limit has passed."""


class ScriptError(Exception):
    """A script failed (compile error, exception, time limit); the message is what the client sees."""


class _ScriptThread(threading.Thread):
    """Compiles and runs one script; ``outcome`` is its rendered ``result`` or the exception it raised.

    ``finished`` is set under ``lock`` as the thread's last act, and :meth:`interrupt` injects only
    under that lock while it is unset: so the exception is never sent to a thread that already
    left (whose id the OS may have handed to another thread).
    """

    def __init__(self, source: bytes, namespace: dict[str, Any]) -> None:
        super().__init__(name="lmcache-run-script", daemon=True)
        self._source = source
        self._namespace = namespace
        self.outcome: str | BaseException | None = None
        self.lock = threading.Lock()
        self.finished = False

    def run(self) -> None:
        try:
            try:
                code = compile(self._source, "<run_script>", "exec", dont_inherit=True)
                exec(code, self._namespace)  # noqa: S102 (the point of the route; see the module docstring)
                self.outcome = (str(self._namespace["result"]) if "result" in self._namespace
                                else "Script executed successfully")
            except BaseException as exc:  # noqa: BLE001 (every failure becomes the 500 text)
                self.outcome = exc
        except ScriptTimeout as exc:  # delivered while the handler above ran
            self.outcome = exc
        while True:  # an interruption pending from before ``finished`` is set is absorbed here
            try:
                with self.lock:
                    self.finished = True
                return
            except ScriptTimeout:
                continue

    def interrupt(self) -> None:
        """Schedule :class:`ScriptTimeout` in this thread (raised at its next bytecode boundary)."""
        with self.lock:
            if not self.finished and self.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident),
                                                           ctypes.py_object(ScriptTimeout))


def run_script(source: bytes, *, allowed_imports: Iterable[str], timeout_s: float,
               extra_globals: Mapping[str, Any]) -> str:
    """Run ``source`` and return the text to answer; raises :class:`ScriptError` with the reason otherwise.

    Blocks the calling thread for at most about ``timeout_s + STOP_GRACE_S`` seconds.
    """
    script_builtins = dict(SAFE_BUILTINS)
    script_builtins["__import__"] = make_importer(allowed_imports)
    namespace: dict[str, Any] = {"__builtins__": script_builtins, "__name__": "__run_script__", **extra_globals}
    thread = _ScriptThread(source, namespace)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        deadline = time.monotonic() + STOP_GRACE_S
        while thread.is_alive() and time.monotonic() < deadline:
            thread.interrupt()
            thread.join(_STOP_RETRY_S)
        if thread.is_alive():
            logger.warning("run_script: a script passed its %.3g s limit and could not be stopped; "
                           "it keeps running on daemon thread %s", timeout_s, thread.ident)
        raise ScriptError(f"script exceeded the time limit of {timeout_s:g} s")
    outcome = thread.outcome
    if isinstance(outcome, str):
        return outcome
    if isinstance(outcome, ScriptTimeout) or outcome is None:
        raise ScriptError(f"script exceeded the time limit of {timeout_s:g} s")
    try:
        message = str(outcome)
    except Exception:  # an exception whose __str__ itself fails
        message = ""
    raise ScriptError(message or type(outcome).__name__)
