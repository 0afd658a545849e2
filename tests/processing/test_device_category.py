"""The device_category Java function, run by Flink itself (batch mode over VALUES) on real user agents."""

from __future__ import annotations

import pytest

from infrastructure.local import jars
from services.processing.coordinator import sql_string
from services.processing.device import device_category_sql, function_ddl
from services.processing.driver import pipeline_jars
from shared.settings import Settings

pytestmark = pytest.mark.flink

AGENTS = [
    # phones
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1",
        390,
        844,
        "mobile",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.6367.82 Mobile Safari/537.36",
        412,
        915,
        "mobile",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
        384,
        854,
        "mobile",
    ),
    (
        "Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 (KHTML, "
        "like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.14977",
        360,
        640,
        "mobile",
    ),
    (
        "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en) Presto/2.5.25 "
        "Version/10.54",
        240,
        320,
        "mobile",
    ),
    # tablets
    (
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Mobile/15E148 Safari/604.1",
        820,
        1180,
        "tablet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36",
        800,
        1280,
        "tablet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 11; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/124.2.1 like "
        "Chrome/124.0.6367.179 Safari/537.36",
        800,
        1280,
        "tablet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 12; Lenovo TB-J606F) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36",
        1200,
        2000,
        "tablet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; HUAWEI MatePad) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0 "
        "Mobile Safari/537.36",
        800,
        1280,
        "tablet",
    ),
    # desktops
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36",
        1920,
        1080,
        "desktop",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Safari/605.1.15",
        1512,
        982,
        "desktop",
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", 2560, 1440, "desktop"),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
        "Safari/537.36 Edg/124.0.2478.67",
        1366,
        768,
        "desktop",
    ),
    # bots
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 0, 0, "bot"),
    (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.6367.118 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
        "+http://www.google.com/bot.html)",
        412,
        732,
        "bot",
    ),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 0, 0, "bot"),
    ("Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)", 0, 0, "bot"),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 "
        "Safari/537.36",
        800,
        600,
        "bot",
    ),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", 0, 0, "bot"),
    ("python-requests/2.31.0", 0, 0, "bot"),
    ("curl/8.5.0", 0, 0, "bot"),
    # no agent: screen size decides
    ("", 375, 667, "mobile"),
    ("", 1920, 1080, "desktop"),
]


def test_real_user_agents_get_the_right_category():
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("parallelism.default", "1")
    jars.prepare_pipeline_jars(Settings())
    t_env.get_config().set("pipeline.jars", pipeline_jars(Settings()))
    t_env.execute_sql(function_ddl())
    rows = ", ".join(f"({i}, {sql_string(ua)}, {w}, {h})" for i, (ua, w, h, _) in enumerate(AGENTS))
    query = f"SELECT i, {device_category_sql('ua', 'w', 'h')} FROM (VALUES {rows}) AS t(i, ua, w, h)"
    with t_env.execute_sql(query).collect() as results:
        got = {row[0]: row[1] for row in results}
    wrong = [(AGENTS[i][0][:70], AGENTS[i][3], got[i]) for i in range(len(AGENTS)) if got[i] != AGENTS[i][3]]
    assert not wrong, wrong
