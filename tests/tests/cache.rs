//! The response cache against a real origin whose answers set the caching rules: hits
//! and misses, HEAD from GET, no-store and private, Vary, revalidation with ETag and
//! Last-Modified (304s both ways), stale-while-revalidate and stale-if-error,
//! coalescing of concurrent misses, purge through the admin API, and the size caps.
//! One worker, so every request sees the same cache.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    client::{Response, request},
    gateway::Gateway,
};

/// An origin whose paths choose their caching headers; it counts requests per path and
/// keeps the request heads it saw.
#[derive(Clone)]
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, Vec<String>>>>,
    failing: Arc<AtomicBool>,
}

impl Origin {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let origin = Self {
            addr: listener.local_addr().expect("addr"),
            seen: Arc::default(),
            failing: Arc::default(),
        };
        let serving = origin.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let serving = serving.clone();
                std::thread::spawn(move || serving.serve(stream));
            }
        });
        origin
    }

    fn serve(&self, mut stream: TcpStream) {
        let mut data = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            while let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).into_owned();
                data.drain(..end + 4);
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_owned();
                let count = {
                    let mut seen = self.seen.lock().expect("seen");
                    let list = seen.entry(path.clone()).or_default();
                    list.push(head.to_ascii_lowercase());
                    list.len()
                };
                let answer = self.answer(&path, &head.to_ascii_lowercase(), count);
                if stream.write_all(&answer).is_err() {
                    return;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn answer(&self, path: &str, head: &str, count: usize) -> Vec<u8> {
        let reply = |status: &str, headers: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\n{headers}content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        if self.failing.load(Ordering::Relaxed) {
            return reply("503 Service Unavailable", "", "down");
        }
        let body = format!("{path} #{count}");
        match path {
            "/nostore" => reply("200 OK", "cache-control: no-store\r\n", &body),
            "/private" => reply("200 OK", "cache-control: private, max-age=60\r\n", &body),
            "/plain" => reply("200 OK", "", &body),
            "/vary" => {
                let lang = head
                    .lines()
                    .find_map(|l| l.strip_prefix("accept-language:"))
                    .unwrap_or("none")
                    .trim()
                    .to_owned();
                reply(
                    "200 OK",
                    "cache-control: max-age=60\r\nvary: Accept-Language\r\n",
                    &format!("{body} {lang}"),
                )
            }
            "/etag" if head.contains("if-none-match: \"v1\"") => reply(
                "304 Not Modified",
                "etag: \"v1\"\r\ncache-control: no-cache\r\n",
                "",
            ),
            "/etag" => reply(
                "200 OK",
                "etag: \"v1\"\r\ncache-control: no-cache\r\n",
                &body,
            ),
            "/modified" if head.contains("if-modified-since: sun, 06 nov 1994 08:49:37 gmt") => {
                reply("304 Not Modified", "cache-control: max-age=60\r\n", "")
            }
            "/modified" => reply(
                "200 OK",
                "last-modified: Sun, 06 Nov 1994 08:49:37 GMT\r\ncache-control: max-age=0\r\n",
                &body,
            ),
            "/swr" => reply(
                "200 OK",
                "cache-control: max-age=1, stale-while-revalidate=30\r\n",
                &body,
            ),
            "/sie" => reply(
                "200 OK",
                "cache-control: max-age=1, stale-if-error=60\r\n",
                &body,
            ),
            "/slow" => {
                std::thread::sleep(Duration::from_millis(400));
                reply("200 OK", "cache-control: max-age=60\r\n", &body)
            }
            _ if path.starts_with("/kb/") => reply(
                "200 OK",
                "cache-control: max-age=60\r\n",
                &"k".repeat(150 * 1024),
            ),
            "/big" => reply(
                "200 OK",
                "cache-control: max-age=60\r\n",
                &"b".repeat(300 * 1024),
            ),
            _ => reply(
                "200 OK",
                "cache-control: max-age=60\r\netag: \"f1\"\r\n",
                &body,
            ),
        }
    }

    fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("seen")
            .get(path)
            .map_or(0, Vec::len)
    }

    fn heads(&self, path: &str) -> Vec<String> {
        self.seen
            .lock()
            .expect("seen")
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

const TOKEN: &str = "cache-admin-token";

fn gateway(origin: &Origin, cache: &str, route: &str) -> (Gateway, tempfile::NamedTempFile) {
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), TOKEN).expect("token");
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 1\nadmin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n\n[cache]\n{cache}\n\n\
         [[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[upstreams]]\nname = \"origin\"\ntargets = [ {{ addr = \"{}\" }} ]\n\n\
         [[routes]]\nname = \"cached\"\nupstream = \"origin\"\n{route}\n",
        token.path().display(),
        origin.addr
    ));
    (gw, token)
}

fn get(gw: &Gateway, path: &str, extra: &str) -> Response {
    request(
        gw.addr(),
        &format!("GET {path} HTTP/1.1\r\nHost: shop\r\n{extra}\r\n"),
    )
}

fn x_cache(res: &Response) -> &str {
    res.header("x-cache").unwrap_or("none")
}

#[test]
fn hits_misses_and_what_is_never_stored() {
    let origin = Origin::start();
    let (gw, _token) = gateway(&origin, "", "cache = {}");
    let first = get(&gw, "/fresh", "");
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    let second = get(&gw, "/fresh", "");
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("etag"), Some("\"f1\""));
    assert!(second.header("age").is_some());
    assert_eq!(origin.count("/fresh"), 1);
    // HEAD is answered from the GET response.
    let head = request(gw.addr(), "HEAD /fresh HTTP/1.1\r\nHost: shop\r\n\r\n");
    assert_eq!((head.status, x_cache(&head)), (200, "HIT"));
    assert!(head.body.is_empty());
    assert_eq!(origin.count("/fresh"), 1);
    // Another query is another key.
    assert_eq!(x_cache(&get(&gw, "/fresh?page=2", "")), "MISS");
    // A client's matching validator gets a 304 from the cache.
    let not_modified = get(&gw, "/fresh", "If-None-Match: \"f1\"\r\n");
    assert_eq!((not_modified.status, x_cache(&not_modified)), (304, "HIT"));
    assert!(not_modified.body.is_empty());
    // no-store, private, and no freshness (default_ttl 0): never stored.
    for path in ["/nostore", "/private", "/plain"] {
        get(&gw, path, "");
        assert_eq!(x_cache(&get(&gw, path, "")), "MISS", "{path}");
        assert_eq!(origin.count(path), 2, "{path}");
    }
    // A client's no-store bypasses; no-cache makes the gateway ask the origin again.
    assert_eq!(
        x_cache(&get(&gw, "/fresh", "Cache-Control: no-store\r\n")),
        "BYPASS"
    );
    assert_eq!(
        x_cache(&get(&gw, "/fresh", "Cache-Control: no-cache\r\n")),
        "MISS"
    );
    // The origin counts by path: /fresh, /fresh?page=2, the bypass and the no-cache.
    assert_eq!(origin.count("/fresh"), 4);
}

#[test]
fn vary_keeps_variants_apart_and_a_default_ttl_stores_plain_answers() {
    let origin = Origin::start();
    let (gw, _token) = gateway(&origin, "", "cache = { default_ttl = \"30s\" }");
    let en = get(&gw, "/vary", "Accept-Language: en\r\n");
    let de = get(&gw, "/vary", "Accept-Language: de\r\n");
    assert!(en.text().ends_with(" en") && de.text().ends_with(" de"));
    assert_eq!(
        x_cache(&get(&gw, "/vary", "Accept-Language: en\r\n")),
        "HIT"
    );
    let de_again = get(&gw, "/vary", "Accept-Language: de\r\n");
    assert_eq!(x_cache(&de_again), "HIT");
    assert!(de_again.text().ends_with(" de"));
    assert_eq!(origin.count("/vary"), 2);
    get(&gw, "/plain", "");
    assert_eq!(
        x_cache(&get(&gw, "/plain", "")),
        "HIT",
        "default_ttl applies"
    );
}

#[test]
fn stale_responses_are_revalidated_with_their_validators() {
    let origin = Origin::start();
    let (gw, _token) = gateway(&origin, "", "cache = {}");
    // ETag + no-cache: stored, and every use asks the origin, which answers 304.
    let first = get(&gw, "/etag", "");
    assert_eq!(x_cache(&first), "MISS");
    let second = get(&gw, "/etag", "");
    assert_eq!((second.status, x_cache(&second)), (200, "REVALIDATED"));
    assert_eq!(second.body, first.body);
    let heads = origin.heads("/etag");
    assert!(heads[1].contains("if-none-match: \"v1\""), "{heads:?}");
    // Last-Modified + max-age=0: revalidated with If-Modified-Since; the 304's own
    // max-age then makes it fresh.
    get(&gw, "/modified", "");
    assert_eq!(x_cache(&get(&gw, "/modified", "")), "REVALIDATED");
    assert_eq!(x_cache(&get(&gw, "/modified", "")), "HIT");
    assert_eq!(origin.count("/modified"), 2);
    // Client validators never reach the origin; the cache answers them.
    let res = get(
        &gw,
        "/modified",
        "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
    );
    assert_eq!(res.status, 304);
    assert!(
        !origin
            .heads("/fresh")
            .iter()
            .any(|h| h.contains("if-none-match"))
    );
}

#[test]
fn stale_while_revalidate_and_stale_if_error() {
    let origin = Origin::start();
    let (gw, _token) = gateway(&origin, "", "cache = {}");
    get(&gw, "/swr", "");
    get(&gw, "/sie", "");
    std::thread::sleep(Duration::from_millis(1300));
    // Stale within stale-while-revalidate: served at once, refreshed behind the scenes.
    let started = Instant::now();
    let stale = get(&gw, "/swr", "");
    assert_eq!(x_cache(&stale), "STALE");
    assert!(stale.text().ends_with("#1"));
    assert!(started.elapsed() < Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.count("/swr") < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let refreshed = get(&gw, "/swr", "");
    assert_eq!(x_cache(&refreshed), "HIT");
    assert!(refreshed.text().ends_with("#2"), "{}", refreshed.text());
    // Stale within stale-if-error while the origin fails: the stale answer, not the 503.
    origin.failing.store(true, Ordering::Relaxed);
    let rescued = get(&gw, "/sie", "");
    assert_eq!((rescued.status, x_cache(&rescued)), (200, "STALE"));
    assert!(rescued.text().ends_with("#1"));
    // Without a stale answer to fall back on, the failure shows.
    assert_eq!(get(&gw, "/other", "").status, 503);
}

#[test]
fn concurrent_misses_collapse_into_one_origin_request() {
    let origin = Origin::start();
    let (gw, _token) = gateway(&origin, "", "cache = {}");
    let addr = gw.addr();
    let clients: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || request(addr, "GET /slow HTTP/1.1\r\nHost: shop\r\n\r\n"))
        })
        .collect();
    let answers: Vec<Response> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    assert!(
        answers
            .iter()
            .all(|r| r.status == 200 && r.text() == "/slow #1")
    );
    assert_eq!(
        origin.count("/slow"),
        1,
        "one upstream request for ten misses"
    );
    assert_eq!(answers.iter().filter(|r| x_cache(r) == "MISS").count(), 1);
}

#[test]
fn purge_and_size_caps() {
    let origin = Origin::start();
    let (gw, _token) = gateway(
        &origin,
        "max_size = \"2MiB\"\nmax_entry_size = \"256KiB\"",
        "cache = {}",
    );
    let admin = gw.admin.expect("admin");
    let purge = |query: &str| {
        request(
            admin,
            &format!("POST /cache/purge?{query} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        )
        .json()
    };
    for path in ["/img/a", "/img/b", "/doc"] {
        get(&gw, path, "");
        assert_eq!(x_cache(&get(&gw, path, "")), "HIT", "{path}");
    }
    assert_eq!(purge("key=GET%20shop%2Fdoc")["purged"], 1);
    assert_eq!(x_cache(&get(&gw, "/doc", "")), "MISS");
    assert_eq!(purge("prefix=GET%20shop%2Fimg%2F")["purged"], 2);
    assert_eq!(x_cache(&get(&gw, "/img/a", "")), "MISS");
    assert_eq!(x_cache(&get(&gw, "/img/b", "")), "MISS");
    let audit = request(
        admin,
        &format!("GET /audit HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    )
    .text();
    assert!(audit.contains("cache_purge"), "{audit}");

    // Over max_entry_size: served, never stored.
    get(&gw, "/big", "");
    assert_eq!(x_cache(&get(&gw, "/big", "")), "MISS");
    // 20 answers of 150 KiB do not fit in 2 MiB: some are evicted, and what stays
    // stays within the cap.
    for i in 0..20 {
        assert_eq!(x_cache(&get(&gw, &format!("/kb/{i}"), "")), "MISS");
    }
    let hits = (0..20)
        .filter(|i| x_cache(&get(&gw, &format!("/kb/{i}"), "")) == "HIT")
        .count();
    assert!(
        (1..=13).contains(&hits),
        "{hits} of 20 answers of 150 KiB still cached under a 2 MiB cap"
    );
}
