"""Replaying stored readings through the rules and the alert policy (``rpm rules backtest``).

A tool above ``rules`` and ``alerts``: ``replay`` is the pure replay, ``burden`` what it
finds (and the comparison of two rule sets), ``store`` reads the
readings and programs it needs from the database and writes reports.
"""
