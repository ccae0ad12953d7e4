//! The sandbox's DNS responder (transparent egress): answers every A query
//! asked of 127.0.0.53:53 inside the sandbox's namespace, over UDP and TCP,
//! with the name's address from `names`, AAAA and every other type with no
//! data, and forwards nothing. Guards against DNS as a way out (no query
//! ever leaves the supervisor, whatever the name carries) and against
//! resource exhaustion: messages are bounded (`MAX_MESSAGE`), names are
//! checked (host-name bytes, 253 at most), TCP clients are few and timed.
#![forbid(unsafe_code)]
use super::names::{Names, TTL};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Where the sandbox's resolv.conf points.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
/// The largest query read (EDNS's common 1232-byte payload); longer ones are dropped.
pub const MAX_MESSAGE: usize = 1232;
/// TCP clients served at once; more wait in the backlog.
const MAX_TCP: usize = 16;
/// A TCP client's time for each query.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

const FORMERR: u8 = 1;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;
const NOTIMP: u8 = 4;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// The answer to one query; `None` for what deserves none (a response, or
/// too short to carry an id).
pub fn answer(query: &[u8], names: &Names, now: Instant) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (query[2] >> 3) & 0x0f;
    let header = |rcode: u8, qd: u16, an: u16| {
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(&query[..2]);
        // QR, the opcode, AA, RD as asked; RA; the code.
        h.push(0x80 | (opcode << 3) | 0x04 | (query[2] & 0x01));
        h.push(0x80 | rcode);
        for n in [qd, an, 0, 0] {
            h.extend_from_slice(&n.to_be_bytes());
        }
        h
    };
    if opcode != 0 {
        return Some(header(NOTIMP, 0, 0));
    }
    if u16::from_be_bytes([query[4], query[5]]) != 1 {
        return Some(header(FORMERR, 0, 0));
    }
    let Some((name, end)) = question(query) else { return Some(header(FORMERR, 0, 0)) };
    let qtype = u16::from_be_bytes([query[end - 4], query[end - 3]]);
    let qclass = u16::from_be_bytes([query[end - 2], query[end - 1]]);
    let q = &query[12..end];
    let Some(name) = name else {
        let mut r = header(NXDOMAIN, 1, 0);
        r.extend_from_slice(q);
        return Some(r);
    };
    let local = super::asks::is_moat_host(&name) || super::inference::is_inference_host(&name);
    let addr = if qtype != TYPE_A || qclass != CLASS_IN || name.is_empty() {
        None
    } else if local {
        // The gateway's own names (also in /etc/hosts): the gateway's address.
        Some(Ipv4Addr::LOCALHOST)
    } else {
        match names.address_for(&name, now) {
            Some(a) => Some(a),
            None => {
                tracing::warn!(event = "dns_table_full", "the sandbox's name table is full of names in use");
                let mut r = header(SERVFAIL, 1, 0);
                r.extend_from_slice(q);
                return Some(r);
            }
        }
    };
    let mut r = header(0, 1, u16::from(addr.is_some()));
    r.extend_from_slice(q);
    if let Some(a) = addr {
        r.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&(TTL.as_secs() as u32).to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&a.octets());
    }
    Some(r)
}

/// The question's name (lower-case; `None` when it is no host name) and
/// where the question ends; `None` when it is malformed.
fn question(m: &[u8]) -> Option<(Option<String>, usize)> {
    let mut at = 12;
    let mut name = String::new();
    let mut host = true;
    loop {
        let len = usize::from(*m.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // A compression pointer, or a label longer than 63: not in a question.
        if len > 63 {
            return None;
        }
        let label = m.get(at..at + len)?;
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        host &= label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        if name.len() > 253 {
            return None;
        }
    }
    let end = at + 4;
    if m.len() < end {
        return None;
    }
    Some((host.then_some(name), end))
}

/// Serves UDP queries until the runtime stops.
pub(super) async fn serve_udp(names: Arc<Names>, socket: UdpSocket) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(r) = answer(&buf[..n], &names, Instant::now()) {
            let _ = socket.send_to(&r, from).await;
        }
    }
}

/// Serves TCP queries (length-prefixed, RFC 7766) until the runtime stops.
pub(super) async fn serve_tcp(names: Arc<Names>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let names = names.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let read = async {
                    let n = usize::from(s.read_u16().await.ok()?);
                    let q = buf.get_mut(..n)?;
                    s.read_exact(q).await.ok()?;
                    Some(n)
                };
                let Ok(Some(n)) = tokio::time::timeout(TCP_TIMEOUT, read).await else { break };
                let Some(r) = answer(&buf[..n], &names, Instant::now()) else { break };
                let mut out = Vec::with_capacity(r.len() + 2);
                out.extend_from_slice(&(r.len() as u16).to_be_bytes());
                out.extend_from_slice(&r);
                if s.write_all(&out).await.is_err() {
                    break;
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn a_gets_a_reserved_address_aaaa_gets_none() {
        let names = Names::default();
        let now = Instant::now();
        let r = answer(&query("Up.Test", 1), &names, now).unwrap();
        assert_eq!(&r[..2], &[0x42, 0x42]);
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        let ip = Ipv4Addr::new(r[r.len() - 4], r[r.len() - 3], r[r.len() - 2], r[r.len() - 1]);
        assert!(crate::gateway::names::in_range(ip));
        assert_eq!(names.name_of(ip, now).as_deref(), Some("up.test"));
        let r = answer(&query("up.test", 28), &names, now).unwrap();
        assert_eq!((r[3] & 0x0f, u16::from_be_bytes([r[6], r[7]])), (0, 0), "AAAA: no data");
        let r = answer(&query("moat.local", 1), &names, now).unwrap();
        assert_eq!(&r[r.len() - 4..], &[127, 0, 0, 1]);
    }

    #[test]
    fn malformed_and_odd_queries() {
        let names = Names::default();
        let now = Instant::now();
        assert!(answer(&[0u8; 5], &names, now).is_none());
        let mut resp = query("a.test", 1);
        resp[2] |= 0x80;
        assert!(answer(&resp, &names, now).is_none(), "a response is not answered");
        let mut q = query("a.test", 1);
        q.truncate(q.len() - 2);
        assert_eq!(answer(&q, &names, now).unwrap()[3] & 0x0f, FORMERR);
        let mut ptr = query("a.test", 1);
        ptr[12] = 0xc0;
        assert_eq!(answer(&ptr, &names, now).unwrap()[3] & 0x0f, FORMERR);
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(answer(&query(&long, 1), &names, now).unwrap()[3] & 0x0f, FORMERR);
        assert_eq!(answer(&query("bad name.test", 1), &names, now).unwrap()[3] & 0x0f, NXDOMAIN);
        let mut notify = query("a.test", 1);
        notify[2] = 4 << 3;
        assert_eq!(answer(&notify, &names, now).unwrap()[3] & 0x0f, NOTIMP);
        let full = Names::with_capacity(1, Duration::from_secs(600));
        answer(&query("one.test", 1), &full, now).unwrap();
        assert_eq!(answer(&query("two.test", 1), &full, now).unwrap()[3] & 0x0f, SERVFAIL);
    }
}
