"""Running a monitoring program, as pure logic: device periods, calendar months, time
entries and their activities, and (``codes``) the billing code table that says what a
period's days and a month's minutes earn.

SQL for them is in ``rpm/storage/time_entries.py`` and ``rpm/storage/billing.py``
(docs/billing.md).
"""
