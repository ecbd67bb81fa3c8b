//! The endpoint over real sockets: an in-process listener on 127.0.0.1, port 0.

use super::*;
use tokio::net::TcpStream;

const PAGE: &str = "# HELP up_total Up.\n# TYPE up_total counter\nup_total 1\n";

/// Starts an endpoint whose scrape answers `page`; returns where it listens.
async fn endpoint(page: Option<&'static str>, timeout: Duration) -> SocketAddr {
    let mut listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    listener.timeout = timeout;
    let addr = listener.local_addr();
    assert_ne!(addr.port(), 0);
    tokio::spawn(listener.serve(move || async move { page.map(str::to_owned) }));
    addr
}

/// Sends `request` in the given pieces and reads until the server closes.
async fn exchange(addr: SocketAddr, pieces: &[&[u8]]) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    for piece in pieces {
        stream.write_all(piece).await?;
        tokio::task::yield_now().await;
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8(answer).unwrap())
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn get_metrics_answers_the_page() {
    let addr = endpoint(Some(PAGE), CONNECTION_TIMEOUT).await;
    let answer = exchange(
        addr,
        &[
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
            b"Accept: */*\r\n\r\n",
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        answer,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
            PAGE.len()
        )
    );
    // A query string selects nothing; HEAD gets the head alone.
    let answer = exchange(addr, &[b"GET /metrics?x=1 HTTP/1.0\n\n"])
        .await
        .unwrap();
    assert!(answer.ends_with(PAGE), "{answer}");
    let answer = exchange(addr, &[b"HEAD /metrics HTTP/1.1\r\n\r\n"])
        .await
        .unwrap();
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
    assert!(answer.ends_with("\r\n\r\n"), "{answer}");
}

#[tokio::test]
async fn anything_else_is_not_found_or_bad() {
    let addr = endpoint(Some(PAGE), CONNECTION_TIMEOUT).await;
    for request in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET /metricsx HTTP/1.1\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"DELETE /metrics HTTP/1.1\r\n\r\n",
    ] {
        let answer = exchange(addr, &[request]).await.unwrap();
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 404 Not Found",
            "{request:?}"
        );
        assert!(!answer.contains("up_total"));
    }
    for request in [
        &b"hello\r\n\r\n"[..],
        b"GET /metrics\r\n\r\n",
        b"GET /metrics SPDY/3\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
        b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
    ] {
        let answer = exchange(addr, &[request]).await.unwrap();
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 400 Bad Request",
            "{request:?}"
        );
    }
}

#[tokio::test]
async fn an_oversize_request_is_refused_and_closed() {
    let addr = endpoint(Some(PAGE), CONNECTION_TIMEOUT).await;
    // Exactly the limit without an end: the server reads it all, answers 431 and closes.
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
    let answer = exchange(addr, &[&huge.as_bytes()[..MAX_REQUEST]])
        .await
        .unwrap();
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert!(!answer.contains("up_total"));
    // Far more than the limit: closed (the unread rest may turn the close into a reset).
    let flood = vec![b'a'; 16 * MAX_REQUEST];
    match exchange(addr, &[&flood]).await {
        Ok(answer) => assert!(!answer.contains("200 OK"), "{answer}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    // And the endpoint carries on.
    let answer = exchange(addr, &[b"GET /metrics HTTP/1.1\r\n\r\n"])
        .await
        .unwrap();
    assert!(answer.ends_with(PAGE));
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_timeout() {
    let timeout = Duration::from_millis(200);
    let addr = endpoint(Some(PAGE), timeout).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    silent.write_all(b"GET /met").await.unwrap();
    let started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "no answer to half a request");
    assert!(started.elapsed() >= timeout / 2);
}

#[tokio::test]
async fn a_held_connection_does_not_delay_a_scrape() {
    // A timeout far beyond the test's patience: the scrape must not wait for it.
    let addr = endpoint(Some(PAGE), Duration::from_secs(60)).await;
    let _held = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /met").await.unwrap();
    let scrape = exchange(addr, &[b"GET /metrics HTTP/1.1\r\n\r\n"]);
    let answer = tokio::time::timeout(Duration::from_secs(5), scrape)
        .await
        .expect("scrape answered while other connections are held open")
        .unwrap();
    assert!(answer.ends_with(PAGE), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let addr = endpoint(Some(PAGE), Duration::from_secs(60)).await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let scrape = tokio::spawn(exchange(addr, &[b"GET /metrics HTTP/1.1\r\n\r\n"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !scrape.is_finished(),
        "more than {MAX_CONNECTIONS} served at once"
    );
    // One holder leaves: its slot serves the waiting scrape.
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), scrape)
        .await
        .expect("served once a slot was free")
        .unwrap()
        .unwrap();
    assert!(answer.ends_with(PAGE), "{answer}");
}

#[tokio::test]
async fn a_stopped_daemon_is_unavailable() {
    let addr = endpoint(None, CONNECTION_TIMEOUT).await;
    let answer = exchange(addr, &[b"GET /metrics HTTP/1.1\r\n\r\n"])
        .await
        .unwrap();
    assert_eq!(status_line(&answer), "HTTP/1.1 503 Service Unavailable");
}

#[tokio::test]
async fn a_busy_address_is_a_start_up_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let Err(e) = MetricsListener::bind(addr).await else {
        panic!("bound a busy address");
    };
    let text = format!("{e:#}");
    assert!(
        text.contains(&addr.to_string()) && text.contains("--metrics"),
        "{text}"
    );
}
