"""Benchmark data with fixed seeds.

hits: rows shaped like ClickBench's `hits` table — its column names and types
(the 40 columns its queries use most), Zipfian counters, users, regions, URLs,
titles and search phrases, most search phrases empty as in the real data.

rockbench: nested JSON documents like RockBench's — a name, an address with
coordinates, a tags array, free text and an event time — of about 1 KB each.
"""
import bisect
import datetime
import random

EPOCH_2013_07_01 = 1_372_636_800
WORDS = ("real time analytics index search query stream kafka leaf shard segment "
         "rust column parquet vector cloud fast fresh data event user page click "
         "buy sell phone laptop book music travel hotel flight game news sport "
         "weather recipe movie car bike garden home health money").split()
DOMAINS = ["google.com", "yandex.ru", "example.com", "shop.example.org", "news.site.net",
           "video.host.tv", "mail.service.com", "maps.google.com", "wiki.org", "forum.board.net"]
PHONES = ["", "", "", "", "iPhone", "iPad", "Galaxy", "Pixel", "Redmi", "Xperia", "Lumia"]
HITS_COLUMNS = {
    # name: DuckDB type (altdb infers the same from JSON: BIGINT / VARCHAR)
    "WatchID": "BIGINT", "JavaEnable": "BIGINT", "Title": "VARCHAR", "GoodEvent": "BIGINT",
    "EventTime": "VARCHAR", "EventDate": "VARCHAR", "CounterID": "BIGINT", "ClientIP": "BIGINT",
    "RegionID": "BIGINT", "UserID": "BIGINT", "CounterClass": "BIGINT", "OS": "BIGINT",
    "UserAgent": "BIGINT", "URL": "VARCHAR", "Referer": "VARCHAR", "IsRefresh": "BIGINT",
    "RefererCategoryID": "BIGINT", "URLCategoryID": "BIGINT", "ResolutionWidth": "BIGINT",
    "ResolutionHeight": "BIGINT", "IsMobile": "BIGINT", "MobilePhone": "BIGINT",
    "MobilePhoneModel": "VARCHAR", "Params": "VARCHAR", "TraficSourceID": "BIGINT",
    "SearchEngineID": "BIGINT", "SearchPhrase": "VARCHAR", "AdvEngineID": "BIGINT",
    "WindowClientWidth": "BIGINT", "WindowClientHeight": "BIGINT", "IsLink": "BIGINT",
    "IsDownload": "BIGINT", "IsNotBounce": "BIGINT", "DontCountHits": "BIGINT",
    "HitColor": "VARCHAR", "Age": "BIGINT", "Sex": "BIGINT", "BrowserLanguage": "VARCHAR",
    "RefererHash": "BIGINT", "URLHash": "BIGINT",
}


class Zipf:
    """Zipfian ranks 0..n-1 (exponent s) by inverse CDF over a precomputed table."""

    def __init__(self, n, s=1.1):
        total, self.cdf = 0.0, []
        for k in range(1, n + 1):
            total += 1.0 / k ** s
            self.cdf.append(total)
        self.total = total

    def draw(self, rng):
        return bisect.bisect_left(self.cdf, rng.random() * self.total)


def _phrase(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def hits(seed, count):
    """`count` hits rows (dicts), deterministic for `seed`."""
    rng = random.Random(seed)
    users, counters, regions = Zipf(200_000), Zipf(5_000, 1.3), Zipf(3_000)
    urls, phrases = Zipf(100_000), Zipf(20_000)
    phrase_text = [_phrase(random.Random(i), 1 + i % 4) for i in range(20_000)]
    for i in range(count):
        t = EPOCH_2013_07_01 + i * 2_592_000 // max(count, 1) + rng.randrange(60)
        when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
        url_rank = urls.draw(rng)
        domain = DOMAINS[url_rank % len(DOMAINS)]
        url = f"https://{domain}/{WORDS[url_rank % len(WORDS)]}/{url_rank}"
        searched = rng.random() < 0.12
        phone = rng.choice(PHONES)
        user = users.draw(rng)
        yield {
            "WatchID": (i * 2_654_435_761 + seed) % 9_000_000_000_000_000_000,
            "JavaEnable": int(rng.random() < 0.3),
            "Title": f"{WORDS[url_rank % len(WORDS)].title()} {_phrase(rng, 3)} - {domain}",
            "GoodEvent": 1,
            "EventTime": when.strftime("%Y-%m-%d %H:%M:%S"),
            "EventDate": when.strftime("%Y-%m-%d"),
            "CounterID": counters.draw(rng),
            "ClientIP": rng.randrange(-2**31, 2**31),
            "RegionID": regions.draw(rng),
            "UserID": user * 7_046_029_254_386_353 % 9_000_000_000_000_000_000,
            "CounterClass": rng.randrange(3),
            "OS": rng.randrange(90),
            "UserAgent": rng.randrange(60),
            "URL": url,
            "Referer": "" if rng.random() < 0.4 else f"https://{rng.choice(DOMAINS)}/{rng.randrange(1000)}",
            "IsRefresh": int(rng.random() < 0.1),
            "RefererCategoryID": rng.randrange(20),
            "URLCategoryID": rng.randrange(20),
            "ResolutionWidth": rng.choice([1920, 1366, 1280, 1440, 1536, 2560, 360, 414]),
            "ResolutionHeight": rng.choice([1080, 768, 800, 900, 864, 1440, 640, 896]),
            "IsMobile": int(phone != ""),
            "MobilePhone": PHONES.index(phone) if phone else 0,
            "MobilePhoneModel": phone,
            "Params": "",
            "TraficSourceID": rng.randrange(-1, 10),
            "SearchEngineID": rng.randrange(1, 30) if searched else 0,
            "SearchPhrase": phrase_text[phrases.draw(rng)] if searched else "",
            "AdvEngineID": rng.choice([2, 4, 12, 27]) if rng.random() < 0.02 else 0,
            "WindowClientWidth": rng.randrange(300, 2560),
            "WindowClientHeight": rng.randrange(300, 1440),
            "IsLink": int(rng.random() < 0.05),
            "IsDownload": int(rng.random() < 0.01),
            "IsNotBounce": int(rng.random() < 0.7),
            "DontCountHits": int(rng.random() < 0.05),
            "HitColor": rng.choice("DEFT"),
            "Age": rng.randrange(0, 80),
            "Sex": rng.randrange(3),
            "BrowserLanguage": rng.choice(["en", "ru", "de", "fr", "es", "ja"]),
            "RefererHash": (url_rank % 5000) * 11_400_714_819_323_198_485 % 2**62,
            "URLHash": (url_rank + 7) * 11_400_714_819_323_198_485 % 2**62,
        }


FIRST = ["Ada", "Bo", "Cai", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kai", "Liv"]
LAST = ["Berg", "Dahl", "Falk", "Holm", "Lund", "Moe", "Nyström", "Strand", "Vik", "Wold"]
CITIES = [("Oslo", 59.91, 10.75), ("Berlin", 52.52, 13.40), ("Paris", 48.86, 2.35),
          ("Boston", 42.36, -71.06), ("Tokyo", 35.68, 139.69), ("Sydney", -33.87, 151.21)]


def rockbench(seed, count, start_us=1_763_800_000_000_000):
    """`count` nested documents of about 1 KB, deterministic for `seed`."""
    rng = random.Random(seed)
    users = Zipf(100_000)
    for i in range(count):
        city, lat, lon = rng.choice(CITIES)
        yield {
            "id": i,
            "ts": start_us + i * 1000,
            "name": {"first": rng.choice(FIRST), "last": rng.choice(LAST)},
            "user_id": f"user{users.draw(rng)}",
            "address": {"city": city, "zip": f"{rng.randrange(10_000, 99_999)}",
                        "street": f"{rng.randrange(1, 200)} {rng.choice(WORDS).title()} Street",
                        "coordinates": {"lat": round(lat + rng.uniform(-0.2, 0.2), 6),
                                        "lon": round(lon + rng.uniform(-0.2, 0.2), 6)}},
            "tags": [rng.choice(WORDS) for _ in range(rng.randrange(1, 5))],
            "score": round(rng.random() * 100, 3),
            "count": rng.randrange(1000),
            "active": rng.random() < 0.8,
            "text": _phrase(rng, 120),
        }
