"""Real user agents, their devices' screen sizes, the device category and the browser and OS the pipeline
should derive."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Software:
    """What the agent string says it is (browser family and major version, OS family and major version), as
    read by a person from the string with ua-parser's family names; the enrichment must answer the same."""

    browser: str
    browser_version: str | None
    os: str
    os_version: str | None


@dataclass(frozen=True)
class Agent:
    user_agent: str
    screen_width: int
    screen_height: int
    category: str  # mobile | tablet | desktop | bot (what the pipeline's classifier must answer)
    software: Software


PHONES = (
    Agent(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        390,
        844,
        "mobile",
        Software("Mobile Safari", "17", "iOS", "17"),
    ),
    Agent(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/124.0.6367.111 Mobile/15E148 Safari/604.1",
        430,
        932,
        "mobile",
        Software("Chrome Mobile iOS", "124", "iOS", "17"),
    ),
    Agent(
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.6367.179 Mobile Safari/537.36",
        412,
        915,
        "mobile",
        Software("Chrome Mobile", "124", "Android", "14"),
    ),
    Agent(
        "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
        360,
        780,
        "mobile",
        Software("Samsung Internet", "23", "Android", "13"),
    ),
    Agent(
        "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0",
        412,
        892,
        "mobile",
        Software("Firefox Mobile", "125", "Android", "14"),
    ),
)
TABLETS = (
    Agent(
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        820,
        1180,
        "tablet",
        Software("Mobile Safari", "17", "iOS", "17"),
    ),
    Agent(
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        800,
        1280,
        "tablet",
        Software("Chrome", "124", "Android", "13"),
    ),
    Agent(
        "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/124.3.1 "
        "like Chrome/124.0.6367.179 Safari/537.36",
        800,
        1280,
        "tablet",
        Software("Amazon Silk", "124", "Android", "9"),
    ),
    Agent(
        "Mozilla/5.0 (Linux; Android 12; Lenovo TB-X606F) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36",
        800,
        1280,
        "tablet",
        Software("Chrome", "120", "Android", "12"),
    ),
)
DESKTOPS = (
    Agent(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        1920,
        1080,
        "desktop",
        Software("Chrome", "124", "Windows", "10"),
    ),
    Agent(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
        2560,
        1440,
        "desktop",
        Software("Edge", "124", "Windows", "10"),
    ),
    Agent(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        1536,
        864,
        "desktop",
        Software("Firefox", "125", "Windows", "10"),
    ),
    Agent(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4.1 Safari/605.1.15",
        1440,
        900,
        "desktop",
        Software("Safari", "17", "Mac OS X", "10"),
    ),
    Agent(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        1920,
        1080,
        "desktop",
        Software("Chrome", "124", "Linux", None),
    ),
)
BOTS = (
    Agent(
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        1024,
        768,
        "bot",
        Software("Googlebot", "2", "Other", None),
    ),
    Agent(
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.6367.201 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        412,
        732,
        "bot",
        Software("Googlebot", "2", "Android", "6"),
    ),
    Agent(
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        1024,
        768,
        "bot",
        Software("bingbot", "2", "Other", None),
    ),
    Agent(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/124.0.6367.60 Safari/537.36",
        800,
        600,
        "bot",
        Software("HeadlessChrome", "124", "Linux", None),
    ),
    Agent(
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        0,
        0,
        "bot",
        Software("FacebookBot", "1", "Other", None),
    ),
)
AGENTS: dict[str, tuple[Agent, ...]] = {"mobile": PHONES, "tablet": TABLETS, "desktop": DESKTOPS, "bot": BOTS}
CATEGORY_WEIGHTS: dict[str, float] = {"mobile": 0.55, "desktop": 0.30, "tablet": 0.08, "bot": 0.07}
CATEGORY_BY_AGENT: dict[tuple[str, int, int], str] = {
    (a.user_agent, a.screen_width, a.screen_height): a.category for agents in AGENTS.values() for a in agents
}


def expected_category(user_agent: str, screen_width: int, screen_height: int) -> str:
    """The category the table promises for an agent it holds (KeyError for one it does not)."""
    return CATEGORY_BY_AGENT[(user_agent, screen_width, screen_height)]


SOFTWARE_BY_AGENT: dict[str, Software] = {
    a.user_agent: a.software for agents in AGENTS.values() for a in agents
}


def expected_software(user_agent: str) -> Software:
    """The browser and OS the table promises for an agent it holds (KeyError for one it does not)."""
    return SOFTWARE_BY_AGENT[user_agent]
