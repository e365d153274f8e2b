//! Host ends of guest network tests: a TCP receiver that checks what a guest sent.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// Receives one TCP connection on `listener`: at most `bytes` bytes, then closes. Sends
/// the count and the SHA-256 (by coreutils' sha256sum, as the guest computes it) of what
/// came.
pub fn receive_tcp(listener: TcpListener, bytes: usize) -> Receiver<(usize, String)> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
        let mut data = Vec::with_capacity(bytes);
        let _ = (&mut conn).take(bytes as u64).read_to_end(&mut data);
        drop(conn);
        let mut sum = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sha256sum");
        sum.stdin
            .take()
            .expect("stdin")
            .write_all(&data)
            .expect("feed sha256sum");
        let out = sum.wait_with_output().expect("sha256sum");
        let hex = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let _ = tx.send((data.len(), hex));
    });
    rx
}

/// Checks that what [`receive_tcp`] got (`received`) is what the guest said it sent in
/// `line` (`... sha256=HEX ...`), `bytes` of it; panics with `transcript` otherwise.
pub fn expect_tcp_whole(
    received: &Receiver<(usize, String)>,
    line: &str,
    bytes: usize,
    transcript: &dyn Fn() -> String,
) {
    let (n, sum) = received
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("the listener got no connection\n{}", transcript()));
    let want = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sha256="))
        .unwrap_or_default();
    assert_eq!(
        (n, sum.as_str()),
        (bytes, want),
        "the TCP transfer did not arrive whole\n{}",
        transcript()
    );
}
