//! The API server: a unix listener and its connections, served from an event loop, one
//! JSON request and one JSON answer per line. It is generic over its handler, which brings
//! its own request and response types: the vmm serves its VM with it, nicd its adapter. A
//! misbehaving client (garbage, endless lines, vanishing mid-request) gets an error or is
//! dropped; it never stops the process.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use serde::Serialize;
use serde::de::DeserializeOwned;

use devices::warn_ratelimited;
use vmm_sys_util::timerfd::TimerFd;

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something that is not a socket is in the way.
    #[error("API socket path {0} exists and is not a socket")]
    PathInUse(PathBuf),
    /// Binding failed.
    #[error("cannot listen on API socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
}

/// Most clients served at once; more are refused (closed at once).
const MAX_CLIENTS: usize = 32;

/// Longest request line accepted.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// The answer to a request: now, or once the step it started has completed.
#[derive(Debug)]
pub enum Reply<R> {
    /// Answer now.
    Now(R),
    /// The handler answers later through [`ApiHandler::completed`], under this ticket.
    Later(u64),
}

/// Parses one JSON request line; the error is the message to send back.
pub fn parse_json<T: DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))
}

/// Answers requests of its own types.
pub trait ApiHandler: Send {
    /// What clients ask.
    type Request: DeserializeOwned;
    /// What they get back.
    type Response: Serialize;
    /// Parses one request line; the error goes back to the client as the answer.
    fn parse(&self, line: &[u8]) -> Result<Self::Request, String> {
        parse_json(line)
    }
    /// The answer that reports `message` as the error.
    fn error(&self, message: String) -> Self::Response;
    /// A request.
    fn handle(&mut self, request: Self::Request) -> Reply<Self::Response>;
    /// A descriptor that becomes readable when deferred replies may be ready.
    fn completion_fd(&self) -> Option<i32> {
        None
    }
    /// Deferred replies that are ready, by ticket (drains the completion fd).
    fn completed(&mut self) -> Vec<(u64, Self::Response)> {
        Vec::new()
    }
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// The listener and its clients.
pub struct ApiServer<H: ApiHandler> {
    path: PathBuf,
    listener: UnixListener,
    conns: HashMap<i32, Conn>,
    handler: H,
    /// Deferred replies: ticket -> client.
    waiting: HashMap<u64, i32>,
    /// Ticks while replies are deferred, so handlers can time steps out.
    tick: Option<TimerFd>,
}

impl<H: ApiHandler> std::fmt::Debug for ApiServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish()
    }
}

impl<H: ApiHandler> ApiServer<H> {
    /// Listens on `path`, replacing a stale socket left by a previous run.
    pub fn bind(path: &Path, handler: H) -> Result<Self, ApiError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ApiError::PathInUse(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ApiError::Bind(
                    path.to_path_buf(),
                    std::io::Error::new(ErrorKind::AddrInUse, "another process is serving it"),
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener =
            UnixListener::bind(path).map_err(|e| ApiError::Bind(path.to_path_buf(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ApiError::Bind(path.to_path_buf(), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            handler,
            waiting: HashMap::new(),
            tick: TimerFd::new().ok(),
        })
    }

    fn answer(&mut self, line: &[u8]) -> Reply<H::Response> {
        match self.handler.parse(line) {
            Ok(request) => self.handler.handle(request),
            Err(e) => Reply::Now(self.handler.error(e)),
        }
    }

    /// Sends the deferred replies that are ready.
    fn deliver_completed(&mut self) {
        for (ticket, response) in self.handler.completed() {
            if let Some(fd) = self.waiting.remove(&ticket)
                && let Some(conn) = self.conns.get_mut(&fd)
            {
                let _ = reply(&mut conn.stream, &response);
            }
        }
        self.arm_tick();
    }

    fn arm_tick(&mut self) {
        if let Some(t) = &mut self.tick {
            let r = if self.waiting.is_empty() {
                t.clear()
            } else {
                t.reset(
                    std::time::Duration::from_millis(250),
                    Some(std::time::Duration::from_millis(250)),
                )
            };
            if let Err(e) = r {
                warn_ratelimited!("api: tick timer: {e}");
            }
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CLIENTS {
                        warn_ratelimited!("api: more than {MAX_CLIENTS} clients: refusing one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn_ratelimited!("api: a client refused: {e}");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    match ops.add(Events::new(&stream, EventSet::IN)) {
                        Ok(()) => {
                            self.conns.insert(
                                fd,
                                Conn {
                                    stream,
                                    buf: Vec::new(),
                                },
                            );
                        }
                        Err(e) => {
                            warn_ratelimited!("api: a client refused: cannot watch it: {e:?}")
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn_ratelimited!("api: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads one chunk of what a client sent (epoll is level-triggered: more comes on the
    /// next round, so one client cannot hold the loop) and answers every complete line;
    /// false to drop the client.
    fn serve(&mut self, fd: i32) -> bool {
        // The connection stays in the map whatever happens: the caller removes it from epoll
        // before dropping it (epoll cannot forget a descriptor that is already closed).
        let Some(mut conn) = self.conns.remove(&fd) else {
            return false;
        };
        let alive = self.serve_conn(fd, &mut conn);
        self.conns.insert(fd, conn);
        alive
    }

    fn serve_conn(&mut self, fd: i32, conn: &mut Conn) -> bool {
        let mut chunk = [0u8; 4096];
        let alive = match conn.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                conn.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        };
        while let Some(pos) = conn.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = conn.buf.drain(..=pos).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            match self.answer(line) {
                Reply::Now(response) => {
                    if reply(&mut conn.stream, &response).is_err() {
                        return false;
                    }
                }
                Reply::Later(ticket) => {
                    self.waiting.insert(ticket, fd);
                    self.arm_tick();
                }
            }
        }
        if conn.buf.len() > MAX_REQUEST_LEN {
            let too_long = self.handler.error("request too long".into());
            let _ = reply(&mut conn.stream, &too_long);
            return false;
        }
        // A client that closes its side (even half) is dropped with any deferred reply.
        alive
    }
}

fn reply(stream: &mut UnixStream, response: &impl Serialize) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    text.push(b'\n');
    // Answers are small; a client that does not read them is dropped.
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(std::time::Duration::from_secs(1)))?;
    let r = stream.write_all(&text);
    stream.set_nonblocking(true)?;
    r
}

impl<H: ApiHandler> Drop for ApiServer<H> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl<H: ApiHandler> MutEventSubscriber for ApiServer<H> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            devices::error_ratelimited!("api: cannot watch the listener: {e:?}");
        }
        if let Some(fd) = self.handler.completion_fd()
            && let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN))
        {
            devices::error_ratelimited!("api: cannot watch completions: {e:?}");
        }
        if let Some(t) = &self.tick
            && let Err(e) = ops.add(Events::new(t, EventSet::IN))
        {
            devices::error_ratelimited!("api: cannot watch the tick timer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
            return;
        }
        if Some(fd) == self.handler.completion_fd() {
            self.deliver_completed();
            return;
        }
        if let Some(t) = &mut self.tick
            && fd == t.as_raw_fd()
        {
            let _ = t.wait();
            self.deliver_completed();
            return;
        }
        let hangup = events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR);
        let keep = self.serve(fd) && !hangup;
        if !keep {
            let _ = ops.remove(Events::empty_raw(fd));
            self.conns.remove(&fd);
            self.waiting.retain(|_, c| *c != fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Request, Response, VmStatus};
    use event_manager::SubscriberOps;
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};

    struct Fixed;
    impl ApiHandler for Fixed {
        type Request = Request;
        type Response = Response;
        fn error(&self, message: String) -> Response {
            Response::error(message)
        }
        fn handle(&mut self, request: Request) -> Reply<Response> {
            Reply::Now(match request {
                Request::Status => Response::status(VmStatus {
                    state: "running".into(),
                    vcpus: 2,
                    memory_bytes: 1 << 28,
                    cpu_template: "host".into(),
                    kernel: "k".into(),
                    uptime_ms: 5,
                }),
                _ => Response::error("not here"),
            })
        }
    }

    #[test]
    fn serves_status_and_survives_garbage() {
        let path = std::env::temp_dir().join(format!("vmm-api-test-{}.sock", std::process::id()));
        let server = ApiServer::bind(&path, Fixed).unwrap();
        let mut em =
            event_manager::EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
                .unwrap();
        em.add_subscriber(Arc::new(Mutex::new(server)));
        let client = UnixStream::connect(&path).unwrap();
        let mut w = client.try_clone().unwrap();
        let mut r = BufReader::new(client);
        let mut ask = |req: &[u8], em: &mut event_manager::EventManager<_>| {
            w.write_all(req).unwrap();
            let mut line = String::new();
            while line.is_empty() {
                em.run_with_timeout(100).unwrap();
                let _ = r.get_mut().set_nonblocking(true);
                let _ = r.read_line(&mut line);
            }
            serde_json::from_str::<Response>(&line).unwrap()
        };
        em.run_with_timeout(100).unwrap(); // accept
        let bad = ask(b"{nope\n", &mut em);
        assert!(!bad.ok && bad.error.unwrap().contains("malformed"));
        let ok = ask(b"{\"action\":\"status\"}\n", &mut em);
        assert!(ok.ok);
        assert_eq!(ok.status.unwrap().vcpus, 2);
        let long = vec![b'a'; MAX_REQUEST_LEN + 4096];
        let too_long = ask(&long, &mut em);
        assert_eq!(too_long.error.as_deref(), Some("request too long"));
        // A stale socket is replaced; a non-socket is refused.
        drop(em);
        let plain = path.with_extension("txt");
        std::fs::write(&plain, b"x").unwrap();
        assert!(matches!(
            ApiServer::bind(&plain, Fixed),
            Err(ApiError::PathInUse(_))
        ));
        std::fs::remove_file(plain).unwrap();
    }
}
