//! Connections and requests are bounded as upstream bounds them: sockets that never
//! finish TLS or never send a request, idle keep-alives and dribbled headers are closed;
//! a dribbled body times out with 504; full in-flight pools answer 429 with Retry-After;
//! at the connection cap, silent sockets cannot lock real clients out.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect_tls, tls_config, TestServer, Tls};
use rkube_apiserver::Limits;

/// Longest any single wait may take before the test calls the socket still open.
const PATIENCE: Duration = Duration::from_secs(20);

fn limits() -> Limits {
    Limits {
        max_requests_inflight: 2,
        max_mutating_requests_inflight: 1,
        request_timeout: Duration::from_secs(4),
        read_header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        max_connections: None,
    }
}

fn addr(srv: &TestServer) -> std::net::SocketAddr {
    srv.server.as_ref().unwrap().addr
}

/// What one read attempt saw.
enum Read1 {
    Data(Vec<u8>),
    Closed,
    Nothing,
}

fn read_once(r: &mut impl Read) -> Read1 {
    let mut buf = [0u8; 4096];
    match r.read(&mut buf) {
        Ok(0) => Read1::Closed,
        Ok(n) => Read1::Data(buf[..n].to_vec()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Read1::Nothing,
        // A reset or a TLS stream cut without close_notify: closed by the server.
        Err(_) => Read1::Closed,
    }
}

/// Reads until the server closes the connection (true) or PATIENCE runs out (false);
/// returns what arrived.
fn read_until_closed(r: &mut impl Read, tcp: &TcpStream) -> (Vec<u8>, bool) {
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < PATIENCE {
        match read_once(r) {
            Read1::Data(d) => got.extend(d),
            Read1::Closed => return (got, true),
            Read1::Nothing => {}
        }
    }
    (got, false)
}

#[test]
fn connections_and_requests_are_bounded() {
    let srv = TestServer::start_with(tempfile::tempdir().unwrap(), |c| c.limits = limits());
    silent_sockets_are_closed(&srv);
    idle_keep_alive_is_closed(&srv);
    dribbled_headers_are_cut_off(&srv);
    dribbled_body_times_out(&srv);
    full_pools_answer_429(&srv);
    watches_outlive_the_request_timeout(&srv);
    at_the_connection_cap_silent_sockets_give_way();
}

fn silent_sockets_are_closed(srv: &TestServer) {
    // Never starts TLS.
    let mut tcp = TcpStream::connect(addr(srv)).unwrap();
    let probe = tcp.try_clone().unwrap();
    let (_, closed) = read_until_closed(&mut tcp, &probe);
    assert!(closed, "a socket that never started TLS is still open");
    // Finishes TLS, never sends a request.
    let mut tls = connect_tls(srv, tls_config(srv, None));
    let probe = tls.sock.try_clone().unwrap();
    let (_, closed) = read_until_closed(&mut tls, &probe);
    assert!(closed, "a TLS connection without a request is still open");
}

fn idle_keep_alive_is_closed(srv: &TestServer) {
    let mut tls = connect_tls(srv, tls_config(srv, None));
    tls.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let probe = tls.sock.try_clone().unwrap();
    let (got, closed) = read_until_closed(&mut tls, &probe);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(closed, "an idle keep-alive connection is still open");
}

fn dribbled_headers_are_cut_off(srv: &TestServer) {
    let mut tls = connect_tls(srv, tls_config(srv, None));
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    tls.write_all(b"GET /version HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < PATIENCE {
        if tls.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        if let Read1::Closed | Read1::Data(_) = read_once(&mut tls) {
            closed = true;
            break;
        }
    }
    assert!(closed, "headers sent a byte at a time are still being read");
}

/// Starts a POST whose body never completes; returns the stream to read its answer.
fn slow_post(srv: &TestServer, identity: (&str, &str)) -> Tls {
    let mut tls = connect_tls(srv, tls_config(srv, Some(identity)));
    tls.write_all(
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"metadata\":",
    )
    .unwrap();
    tls.flush().unwrap();
    tls
}

fn dribbled_body_times_out(srv: &TestServer) {
    let (_, cert, key) = srv.pems();
    let mut tls = slow_post(srv, (&cert, &key));
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < PATIENCE && !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let _ = tls.write_all(b" ");
        match read_once(&mut tls) {
            Read1::Data(d) => got.extend(d),
            Read1::Closed => break,
            Read1::Nothing => {}
        }
    }
    let probe = tls.sock.try_clone().unwrap();
    let (rest, _) = read_until_closed(&mut tls, &probe);
    got.extend(rest);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(
        text.contains("request did not complete within requested timeout"),
        "{text}"
    );
}

fn full_pools_answer_429(srv: &TestServer) {
    let server = srv.server.as_ref().unwrap();
    let alice = server.pki.issue_client("alice", &["devs"]).unwrap();
    let (ca, admin_cert, admin_key) = srv.pems();
    let alice_http =
        common::admin_client((ca.clone(), alice.cert_pem.clone(), alice.key_pem.clone()));
    let admin_http = common::admin_client((ca, admin_cert, admin_key));
    let cm =
        |name: &str| serde_json::to_vec(&serde_json::json!({"metadata": {"name": name}})).unwrap();
    let post = |http: &reqwest::blocking::Client, name: &str| {
        http.post(format!(
            "{}/api/v1/namespaces/default/configmaps",
            srv.url()
        ))
        .header("Content-Type", "application/json")
        .body(cm(name))
        .send()
        .unwrap()
    };
    // One mutating slot: a POST that never finishes its body holds it. (Retried if the
    // machine is so slow that the slow POST timed out before the next one arrived.)
    let mut refused = None;
    for _ in 0..3 {
        let _hold = slow_post(srv, (&alice.cert_pem, &alice.key_pem));
        std::thread::sleep(Duration::from_millis(200));
        let r = post(&alice_http, "refused");
        if r.status().as_u16() == 429 {
            refused = Some(r);
            // Read-only requests have their own pool; system:masters is not limited.
            let r = alice_http
                .get(format!(
                    "{}/api/v1/namespaces/default/configmaps",
                    srv.url()
                ))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let r = post(&admin_http, "by-admin");
            assert_eq!(r.status().as_u16(), 201);
            break;
        }
    }
    let r = refused.expect("a request beyond --max-mutating-requests-inflight was not refused");
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        r.text().unwrap(),
        "Too many requests, please try again later.\n"
    );
    // The slot frees once the slow request is gone.
    let start = Instant::now();
    loop {
        let code = post(&alice_http, "later").status().as_u16();
        if code == 201 {
            break;
        }
        assert_eq!(code, 429);
        assert!(
            start.elapsed() < PATIENCE,
            "the mutating slot was never freed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn watches_outlive_the_request_timeout(srv: &TestServer) {
    // A watch is long-running: no request timeout (4 s here), its own timeoutSeconds ends it.
    let http = srv.client();
    let start = Instant::now();
    let mut r = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=6",
            srv.url()
        ))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut body = String::new();
    r.read_to_string(&mut body).unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "the watch ended after {:?}: {body}",
        start.elapsed()
    );
    assert!(!body.contains("did not complete"), "{body}");
}

fn at_the_connection_cap_silent_sockets_give_way() {
    let srv = TestServer::start_with(tempfile::tempdir().unwrap(), |c| {
        c.limits.max_connections = Some(16);
    });
    // Far more silent sockets than the cap, each of which would hold its place for the
    // 32 s handshake timeout.
    let silent: Vec<TcpStream> = (0..48)
        .map(|_| TcpStream::connect(addr(&srv)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = srv
        .client()
        .get(format!("{}/version", srv.url()))
        .timeout(Duration::from_secs(10))
        .send()
        .expect("a real client was locked out by silent sockets");
    assert_eq!(r.status().as_u16(), 200);
    // The displaced sockets were closed, not left open.
    let mut closed = 0;
    for s in &silent {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        if let Read1::Closed = read_once(&mut &*s) {
            closed += 1;
        }
    }
    assert!(
        closed >= 48 - 16,
        "only {closed} of 48 silent sockets were closed"
    );
}
