"""Supervised local backends: one ``llama-server`` per model, and ``ollama serve``.

:mod:`.process` is the generic supervisor (states, restarts, drain, stop), :mod:`.output`
reads and logs a child's output, :mod:`.children` keeps children tied to the daemon (death
signal, environment allowlist, leftovers from a previous run), :mod:`.ports` picks loopback
ports; :mod:`.llamacpp` and :mod:`.ollama` are the two backends.
"""

from .children import ChildRegistry, kill_stale_children
from .llamacpp import BufferSize, LlamaCppBackend, LoadLog, LoadProgress
from .ollama import LoadedModel, OllamaModel, OllamaServer
from .process import SupervisedProcess
from .states import ExitInfo, NotReady, ProcessEvent, RestartPolicy, StartupFailed, State

__all__ = ["BufferSize", "ChildRegistry", "ExitInfo", "LlamaCppBackend", "LoadLog",
           "LoadProgress", "LoadedModel", "NotReady", "OllamaModel", "OllamaServer",
           "ProcessEvent", "RestartPolicy", "StartupFailed", "State", "SupervisedProcess",
           "kill_stale_children"]
