"""The program between the alerts, as pure logic: segments over patient facts, campaigns
(a segment, a trigger or schedule, messages per language) and their rendering.

SQL for them is in ``rpm/storage/segments.py``, ``rpm/storage/campaigns.py`` and
``rpm/storage/engagement.py``; the planner worker in
``rpm/workers/campaigns.py``; the API in ``rpm/api/engagement.py`` (docs/engagement.md).
"""
