//! The gateway's front door: accepts the sandbox's connections, reads the
//! first request head under a deadline, identifies the caller once, and
//! routes CONNECT to an L4 relay or an inspected tunnel and absolute-form
//! requests to the forward path. Guards against resource exhaustion (bounded
//! heads, head deadlines against slowloris, a connection cap) and against a
//! tunnel outliving the policy that allowed it (open relays re-check
//! themselves when the generation changes).
#![forbid(unsafe_code)]
use super::decide::{self, Identified, Relay};
use super::events::{Decision, Event};
use super::http1::{self, RequestHead};
use super::inspect::{self, Target};
use super::upstream::{dial, split_authority};
use super::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Accepts until the runtime stops.
/// `slots` is the connection cap, shared with the transparent ports.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener, slots: Arc<tokio::sync::Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(event = "gateway_accept_failed", error = %moat_builder::errors::chain(&e), "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let mut s = stream;
            tokio::spawn(async move {
                let _ = s
                    .write_all(&http1::simple_response(
                        503,
                        "Service Unavailable",
                        "moat: too many connections\n",
                        true,
                    ))
                    .await;
            });
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let local = stream.local_addr().ok();
            handle(&shared, stream, peer, local).await;
            drop(permit);
        });
    }
}

async fn handle(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, local: Option<SocketAddr>) {
    let mut client = BufReader::new(stream);
    let head = match inspect::read_head(shared, &mut client, shared.limits.head_timeout).await {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(resp) => {
            let _ = client.get_mut().write_all(&resp).await;
            return;
        }
    };
    let caller = identify(shared, peer, local).await;
    if head.method == "CONNECT" {
        connect(shared, client, head, caller).await;
    } else {
        inspect::forward(shared, &mut client, Some(head), &caller).await;
    }
}

/// Identifies the caller off the reactor (it reads /proc).
pub(super) async fn identify(shared: &Arc<Shared>, peer: SocketAddr, local: Option<SocketAddr>) -> Identified {
    let Some(local) = local else { return Err(super::identity::IdentityError::NotFound(peer)) };
    let s = shared.clone();
    let check_ancestors = s.current().compiled.passes_to_children();
    tokio::task::spawn_blocking(move || s.identity.identify(peer, local, check_ancestors))
        .await
        .unwrap_or(Err(super::identity::IdentityError::NotFound(peer)))
}

async fn connect(shared: &Arc<Shared>, mut client: BufReader<TcpStream>, head: RequestHead, caller: Identified) {
    let Some((host, port)) = split_authority(&head.target) else {
        let _ = client
            .get_mut()
            .write_all(&http1::simple_response(400, "Bad Request", "moat: CONNECT needs host:port\n", true))
            .await;
        return;
    };
    if super::inference::is_inference_host(&host) {
        if client.get_mut().write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_ok() {
            inspect::inference_tunnel(shared, client, caller.as_ref().ok().map(|c| &c.process)).await;
        }
        return;
    }
    if super::asks::is_moat_host(&host) {
        let body = "moat: moat.local speaks plain HTTP: use http://moat.local/v1/requests\n";
        let _ = client.get_mut().write_all(&http1::simple_response(400, "Bad Request", body, true)).await;
        return;
    }
    let relay = match decide::destination(shared, &caller, &host, port, "CONNECT", "").await {
        Ok(r) => r,
        Err(refusal) => return super::refused_tunnel::answer(shared, client, &caller, &host, port, &refusal).await,
    };
    let Ok(caller) = caller else { return };
    let upstream = match dial(shared, &relay).await {
        Ok(u) => u,
        Err(e) => {
            let body = format!("moat: cannot reach {host}:{port}: {e}\n");
            let _ = client.get_mut().write_all(&http1::simple_response(502, "Bad Gateway", &body, true)).await;
            return;
        }
    };
    if client.get_mut().write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_err() {
        return;
    }
    if relay.endpoint.inspected() {
        let target = Target { host, port, relay, upstream };
        inspect::tunnel(shared, client, &caller, target).await;
    } else {
        relay_l4(shared, client, upstream, &caller, relay, &host, port).await;
    }
}

/// Relays bytes both ways until either side closes, or until a new policy
/// revision no longer allows the destination.
pub(super) async fn relay_l4(
    shared: &Arc<Shared>,
    client: BufReader<TcpStream>,
    mut upstream: TcpStream,
    caller: &super::identity::Caller,
    relay: Relay,
    host: &str,
    port: u16,
) {
    let mut changes = shared.subscribe();
    let mut relay = relay;
    // Bytes the client sent right behind its CONNECT head go first.
    let early = client.buffer();
    if !early.is_empty() && upstream.write_all(early).await.is_err() {
        return;
    }
    let client = client.into_inner();
    let copy = super::splice::relay(&client, &upstream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    continue;
                }
                match decide::recheck(shared, caller, &relay, host, port) {
                    Ok(r) => relay = r,
                    Err(reason) => {
                        shared.events.record(&Event::new(Some(&caller.process), host, port, "CONNECT", "", Decision::Revoke, &relay.policy, &reason));
                        return;
                    }
                }
            }
        }
    }
}
