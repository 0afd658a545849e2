"""Device category as one Flink SQL expression (runs in the JVM, no Python per row).

Order matters: bots first (Googlebot's smartphone agent also says "Android ... Mobile"), then
tablets (iPad, Android without "Mobile", Kindle/Silk, tablet words, or a touch agent on a
screen whose short side is at least 600 CSS px), then phones, then desktop. An empty agent
falls back to the screen size alone.
"""

from __future__ import annotations

BOT_PATTERN = (
    "bot|crawl|spider|slurp|headless|phantomjs|lighthouse|facebookexternalhit|bingpreview|"
    "mediapartners|adsbot|feedfetcher|python-requests|python-urllib|curl/|wget/|go-http-client|"
    "java/|libwww|scrapy|httpclient|pingdom|uptimerobot|archiver"
)
TABLET_PATTERN = "ipad|tablet|kindle|silk/|playbook|nexus (7|9|10)|sm-t[0-9]|sm-x[0-9]|gt-p[0-9]|kfapwi|kftt|lenovo tab|mi pad"
PHONE_PATTERN = "mobi|iphone|ipod|android|windows phone|iemobile|blackberry|bb10|opera mini|webos|symbian"
TABLET_MIN_SIDE_PX = 600


def device_category_sql(user_agent: str, screen_width: str, screen_height: str) -> str:
    """A SQL expression yielding 'bot' | 'tablet' | 'mobile' | 'desktop' from the given column expressions."""
    ua = f"LOWER(COALESCE({user_agent}, ''))"
    short_side = f"LEAST(COALESCE({screen_width}, 0), COALESCE({screen_height}, 0))"
    return (
        "CASE"
        f" WHEN REGEXP({ua}, '{BOT_PATTERN}') THEN 'bot'"
        f" WHEN REGEXP({ua}, '{TABLET_PATTERN}') THEN 'tablet'"
        f" WHEN REGEXP({ua}, 'android') AND NOT REGEXP({ua}, 'mobile') THEN 'tablet'"
        f" WHEN REGEXP({ua}, '{PHONE_PATTERN}') AND {short_side} >= {TABLET_MIN_SIDE_PX} THEN 'tablet'"
        f" WHEN REGEXP({ua}, '{PHONE_PATTERN}') THEN 'mobile'"
        f" WHEN {ua} = '' AND {short_side} > 0 AND {short_side} < {TABLET_MIN_SIDE_PX} THEN 'mobile'"
        " ELSE 'desktop' END"
    )
