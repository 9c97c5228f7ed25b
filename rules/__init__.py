"""Clinical rules: specs as data, pure vectorised evaluators, and the streaming engine.

Import what you need from its module (``rules.engine``, ``rules.programs``, ``rules.spec``):
this package's ``__init__`` loads nothing, so reading a spec does not compile the engine's
loops. Severity and AlertCandidate live in the bottom layer, ``rpm.domain``.
"""
