//! kloigos-dashboard: serves the dashboard site (`index.html` and
//! `cluster.json`, as `kloigos dashboard --out` or the housekeeper write
//! them) read-only over HTTP, for a try-out or behind a reverse proxy.
//!
//! It answers GET and HEAD for `/`, `/index.html` and `/cluster.json` and
//! nothing else: no other file of the directory can be named, so no path
//! can climb out of it. Request heads are bounded in size and time, and so
//! is the number of connections served at once. It never writes anything.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more get 503.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest file served.
pub const MAX_FILE: u64 = 64 * 1024 * 1024;
/// How long a client may take to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: kloigos-dashboard --dir DIR --listen ADDR

  --dir DIR       the directory written by `kloigos dashboard --out DIR`
                  (or the housekeeper's housekeeper.dashboard_dir)
  --listen ADDR   where to listen, e.g. 127.0.0.1:8080 (port 0: any free port)

Serves DIR/index.html and DIR/cluster.json read-only; nothing else.";

/// The files that can be asked for, and their content types.
const FILES: [(&str, &str, &str); 3] = [
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/index.html", "index.html", "text/html; charset=utf-8"),
    (
        "/cluster.json",
        "cluster.json",
        "application/json; charset=utf-8",
    ),
];

fn main() -> ExitCode {
    let (dir, listen) = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kloigos-dashboard: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            eprintln!(
                "kloigos-dashboard: {}: not a directory; give the directory `kloigos dashboard --out DIR` wrote",
                dir.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!(
                "kloigos-dashboard: {}: {e}; write the site first with `kloigos dashboard --out DIR`",
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kloigos-dashboard: cannot listen on {listen}: {e}");
            return ExitCode::from(3);
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("serving {} on http://{a}/", dir.display()),
        Err(e) => {
            eprintln!("kloigos-dashboard: {e}");
            return ExitCode::from(3);
        }
    }
    // Whoever reads our first line may close the pipe: a failed flush is no reason to stop.
    let _ = io::stdout().flush();
    let dir = Arc::new(dir);
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = respond(&stream, 503, "Service Unavailable", "busy, try again\n");
            continue;
        }
        let guard = Slot(Arc::clone(&active));
        let dir = Arc::clone(&dir);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                let _guard = guard;
                let _ = serve(&stream, &dir);
            });
        if spawned.is_err() {
            // The guard went with the failed closure and was dropped: the count is right.
            continue;
        }
    }
    ExitCode::SUCCESS
}

/// A connection slot, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<(PathBuf, String)>, String> {
    let mut dir = None;
    let mut listen = None;
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            "--listen" => listen = Some(value("--listen")?),
            "--help" | "-h" => return Ok(None),
            other => return Err(format!("unknown argument '{}'", other.escape_debug())),
        }
    }
    match (dir, listen) {
        (Some(d), Some(l)) => Ok(Some((d, l))),
        _ => Err("--dir and --listen are both needed".into()),
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// A file of the site; `head`: HEAD (no body).
    File {
        name: &'static str,
        mime: &'static str,
        head: bool,
    },
    /// An answer other than a file: status, reason, body.
    Refuse(u16, &'static str, &'static str),
}

/// Decides what to answer to a request line, from its text alone.
fn route(request_line: &str) -> Ask {
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ask::Refuse(400, "Bad Request", "bad request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::Refuse(505, "HTTP Version Not Supported", "HTTP/1.x only\n");
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ask::Refuse(405, "Method Not Allowed", "read-only: GET and HEAD only\n"),
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !path.starts_with('/') || path.contains("..") || path.contains('%') || path.contains('\\') {
        return Ask::Refuse(400, "Bad Request", "bad path\n");
    }
    match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, name, mime)) => Ask::File { name, mime, head },
        None => Ask::Refuse(404, "Not Found", "only / and /cluster.json are served\n"),
    }
}

/// Reads the request head (bounded in size and in total time, however
/// slowly the client trickles it), then answers.
fn serve(mut stream: &TcpStream, dir: &Path) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = find_end(&head) {
            break i;
        }
        if head.len() > MAX_HEAD {
            return respond(
                stream,
                431,
                "Request Header Fields Too Large",
                "request head too long\n",
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(stream, 408, "Request Timeout", "request head too slow\n");
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            // The client closed before finishing its request.
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return respond(stream, 408, "Request Timeout", "request head too slow\n")
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    if end > MAX_HEAD {
        return respond(
            stream,
            431,
            "Request Header Fields Too Large",
            "request head too long\n",
        );
    }
    let text = String::from_utf8_lossy(&head[..end]);
    let request_line = text.lines().next().unwrap_or("").trim_end();
    match route(request_line) {
        Ask::Refuse(code, reason, body) => respond(stream, code, reason, body),
        Ask::File { name, mime, head } => match read_file(&dir.join(name)) {
            Ok(body) => send(stream, 200, "OK", mime, &body, head),
            Err(e) if e.kind() == io::ErrorKind::NotFound => respond(
                stream,
                404,
                "Not Found",
                "not written yet: run `kloigos dashboard --out DIR`\n",
            ),
            Err(_) => respond(
                stream,
                500,
                "Internal Server Error",
                "cannot read the site\n",
            ),
        },
    }
}

/// Where the head ends (the index past its blank line), if it has.
fn find_end(head: &[u8]) -> Option<usize> {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Reads one of the site's files: no symlink followed, size bounded.
fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(io::Error::other("not a regular file of a bounded size"));
    }
    let mut body = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE).read_to_end(&mut body)?;
    Ok(body)
}

fn respond(stream: &TcpStream, code: u16, reason: &str, body: &str) -> io::Result<()> {
    send(
        stream,
        code,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        false,
    )
}

fn send(
    mut stream: &TcpStream,
    code: u16,
    reason: &str,
    mime: &str,
    body: &[u8],
    head: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\n\
         Content-Type: {mime}\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n\
         X-Frame-Options: DENY\r\n\
         Referrer-Policy: no-referrer\r\n\
         Connection: close\r\n",
        body.len()
    )
    .into_bytes();
    if code == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_site_is_routed() {
        assert_eq!(
            route("GET / HTTP/1.1"),
            Ask::File {
                name: "index.html",
                mime: "text/html; charset=utf-8",
                head: false
            }
        );
        assert!(matches!(
            route("HEAD /cluster.json?t=1 HTTP/1.0"),
            Ask::File {
                name: "cluster.json",
                head: true,
                ..
            }
        ));
        for bad in [
            "GET /../etc/passwd HTTP/1.1",
            "GET /%2e%2e/etc/passwd HTTP/1.1",
            "GET /..\\x HTTP/1.1",
            "GET http://x/ HTTP/1.1",
        ] {
            assert!(matches!(route(bad), Ask::Refuse(400, ..)), "{bad}");
        }
        assert!(matches!(
            route("GET /etc/passwd HTTP/1.1"),
            Ask::Refuse(404, ..)
        ));
        assert!(matches!(
            route("GET /index.html.tmp.x.1 HTTP/1.1"),
            Ask::Refuse(404, ..)
        ));
        assert!(matches!(
            route("PUT /cluster.json HTTP/1.1"),
            Ask::Refuse(405, ..)
        ));
        assert!(matches!(route("DELETE / HTTP/1.1"), Ask::Refuse(405, ..)));
        assert!(matches!(route("GET / HTTP/2"), Ask::Refuse(505, ..)));
        assert!(matches!(route("GET /"), Ask::Refuse(400, ..)));
    }

    #[test]
    fn arguments() {
        let p = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        assert_eq!(
            p(&["--dir", "/d", "--listen=127.0.0.1:0"]).unwrap(),
            Some((PathBuf::from("/d"), "127.0.0.1:0".to_string()))
        );
        assert!(p(&["--dir", "/d"]).unwrap_err().contains("both"));
        assert!(p(&["--frob"]).unwrap_err().contains("--frob"));
        assert_eq!(p(&["--help"]).unwrap(), None);
    }
}
