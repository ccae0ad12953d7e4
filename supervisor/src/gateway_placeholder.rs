//! Stand-in for the egress gateway until it lands (its own issue): serves the
//! sandbox's one reachable socket with a fixed `503` so programs get a clear
//! answer instead of a hang. It relays nothing, so it opens no path out.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

const ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 62\r\n\r\nmoat: no egress gateway in this build; nothing leaves yet.\r\n\r\n";

/// Answers every connection on `listener` from a background thread.
pub fn serve(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(ANSWER);
        }
    });
}
