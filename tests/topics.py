"""The topics of the test session: isolated settings change ports and state, never topic names, so these
are the names every service of the session uses (shared/topics.py builds them from the settings)."""

from shared.settings import Settings
from shared.topics import topics

TOPICS = topics(Settings())
EVENTS = TOPICS.events
DEAD_LETTER = TOPICS.dead_letter
