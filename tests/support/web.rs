//! A stand-in web for the download tests: one port on several loopback addresses (127.0.0.1 to 127.0.0.N, each a
//! host of its own to the client: its own connections, its own per-host limits), answering each path as its
//! [`Answer`] says: an image (after a delay, with extra headers), a status, a page, a redirect, a body cut short,
//! 429 then an image, or nothing at all. It counts the requests to each host and path, notes the order they came
//! in, and the most requests one host had open at once (from a request's arrival until its answer goes out). Stopped on drop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one path answers; `n` in [`Web::start`]'s router is the how-manieth request of that host and path, from 1.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with the body as `content_type`, after `delay`, with `headers` besides.
    Ok { body: Vec<u8>, content_type: String, delay: Duration, headers: Vec<(String, String)> },
    /// The status, with a short text body and `headers`.
    Status { status: u16, headers: Vec<(String, String)> },
    /// 302 to `location`.
    Redirect(String),
    /// 200 declaring the whole body, of which `sent` bytes go out before the connection closes.
    Cut { body: Vec<u8>, sent: usize },
    /// Reads the request and never answers (until the web stops).
    Hang,
}

impl Answer {
    pub fn image(body: &[u8]) -> Answer {
        Answer::ok(body, "image/jpeg", Duration::ZERO)
    }

    pub fn ok(body: &[u8], content_type: &str, delay: Duration) -> Answer {
        Answer::Ok { body: body.to_vec(), content_type: content_type.into(), delay, headers: vec![] }
    }

    pub fn with_header(body: &[u8], name: &str, value: &str) -> Answer {
        Answer::Ok {
            body: body.to_vec(),
            content_type: "image/jpeg".into(),
            delay: Duration::ZERO,
            headers: vec![(name.into(), value.into())],
        }
    }

    pub fn status(status: u16) -> Answer {
        Answer::Status { status, headers: vec![] }
    }

    pub fn retry_after(status: u16, seconds: u64) -> Answer {
        Answer::Status { status, headers: vec![("Retry-After".into(), seconds.to_string())] }
    }
}

/// Routes a request: `(host index from 1, path with query, n)` to its answer.
pub type Router = dyn Fn(usize, &str, usize) -> Answer + Send + Sync;

#[derive(Default)]
struct Log {
    /// Requests by `(host, path)`, query included.
    counts: BTreeMap<(usize, String), usize>,
    /// `(host, path)` of every request, in the order they came.
    order: Vec<(usize, String)>,
    open: BTreeMap<usize, usize>,
    most_open: BTreeMap<usize, usize>,
}

pub struct Web {
    pub port: u16,
    hosts: usize,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Web {
    /// Listens on 127.0.0.1 to 127.0.0.`hosts`, on one port.
    pub fn start(hosts: usize, router: impl Fn(usize, &str, usize) -> Answer + Send + Sync + 'static) -> Web {
        let listeners = bind_all(hosts);
        let port = listeners[0].local_addr().expect("local address").port();
        let log: Arc<Mutex<Log>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let router: Arc<Router> = Arc::new(router);
        let threads = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                let (log, stop, router) = (log.clone(), stop.clone(), router.clone());
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let (log, stop, router) = (log.clone(), stop.clone(), router.clone());
                        std::thread::spawn(move || serve(i + 1, stream, &log, &stop, router.as_ref()));
                    }
                })
            })
            .collect();
        Web { port, hosts, log, stop, threads }
    }

    /// `http://127.0.0.<host>:<port><path>`.
    pub fn url(&self, host: usize, path: &str) -> String {
        format!("http://127.0.0.{host}:{}{path}", self.port)
    }

    /// Requests to `path` (query included) on `host`.
    pub fn requests(&self, host: usize, path: &str) -> usize {
        self.log.lock().unwrap().counts.get(&(host, path.to_string())).copied().unwrap_or(0)
    }

    /// Every request so far, in the order they came.
    pub fn order(&self) -> Vec<(usize, String)> {
        self.log.lock().unwrap().order.clone()
    }

    /// The most requests `host` had open at once.
    pub fn most_open(&self, host: usize) -> usize {
        self.log.lock().unwrap().most_open.get(&host).copied().unwrap_or(0)
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for host in 1..=self.hosts {
            let _ = TcpStream::connect((format!("127.0.0.{host}").as_str(), self.port));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Listeners on one port of 127.0.0.1 to 127.0.0.`hosts` (all loopback on Linux), trying ports until one is free
/// on every address.
fn bind_all(hosts: usize) -> Vec<TcpListener> {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = first.local_addr().expect("local address").port();
        let mut listeners = vec![first];
        for host in 2..=hosts {
            match TcpListener::bind((format!("127.0.0.{host}").as_str(), port)) {
                Ok(listener) => listeners.push(listener),
                Err(_) => break,
            }
        }
        if listeners.len() == hosts {
            return listeners;
        }
    }
    panic!("no port free on 127.0.0.1 to 127.0.0.{hosts}");
}

/// Reads an HTTP request's head from `reader`; its request line (`GET /x HTTP/1.1`), or `None` when the client
/// went away first.
pub fn read_request_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line == "\r\n" => return Some(first),
            Ok(_) => {}
        }
    }
}

fn serve(host: usize, stream: TcpStream, log: &Mutex<Log>, stop: &AtomicBool, router: &Router) {
    let mut reader = BufReader::new(stream);
    let Some(first) = read_request_head(&mut reader) else { return };
    let target = first.split_whitespace().nth(1).unwrap_or_default().to_string();
    let n = {
        let mut log = log.lock().unwrap();
        let n = log.counts.entry((host, target.clone())).or_default();
        *n += 1;
        let n = *n;
        log.order.push((host, target.clone()));
        let open = log.open.entry(host).or_default();
        *open += 1;
        let open = *open;
        let most = log.most_open.entry(host).or_default();
        *most = (*most).max(open);
        n
    };
    let answer = router(host, &target, n);
    let mut stream = reader.into_inner();
    let mut respond = |status: u16, content_type: &str, headers: &[(String, String)], body: &[u8], sent: usize| {
        // A request stops counting as open before its answer goes out: the client may start the next one as soon
        // as it has read this one, and the count must not catch both.
        *log.lock().unwrap().open.entry(host).or_default() -= 1;
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body[..sent.min(body.len())]);
        let _ = stream.flush();
    };
    match answer {
        Answer::Ok { body, content_type, delay, headers } => {
            std::thread::sleep(delay);
            respond(200, &content_type, &headers, &body, body.len());
        }
        Answer::Status { status, headers } => respond(status, "text/plain", &headers, b"no image here", 13),
        Answer::Redirect(location) => respond(302, "text/plain", &[("Location".into(), location)], b"", 0),
        Answer::Cut { body, sent } => respond(200, "image/jpeg", &[], &body, sent),
        Answer::Hang => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            *log.lock().unwrap().open.entry(host).or_default() -= 1;
        }
    }
}

/// A JSONL manifest of `(key, url)` rows, each with a caption, as `DIR/urls.jsonl`; returns its path.
pub fn url_manifest(dir: &std::path::Path, rows: &[(String, String)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut lines = String::with_capacity(rows.len() * 80);
    for (key, url) in rows {
        lines.push_str(&serde_json::json!({"key": key, "url": url, "caption": "a photo"}).to_string());
        lines.push('\n');
    }
    let manifest = dir.join("urls.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    super::s(&manifest)
}
