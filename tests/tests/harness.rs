//! The harness itself: raw TCP through Envoy reaches the echo upstream, and dropping an
//! [`Envoy`] kills its process.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_e2e::bootstrap::{bootstrap, cluster, tcp_listener};
use weft_e2e::envoy::Envoy;
use weft_e2e::poll;
use weft_e2e::upstream::TcpEcho;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_through_envoy_reaches_the_echo_upstream() {
    let echo = TcpEcho::start().await.unwrap();
    let envoy = Envoy::start(&bootstrap(
        vec![tcp_listener("tcp", "echo")],
        vec![cluster("echo", echo.addr())],
    ))
    .await
    .unwrap();
    let mut stream = TcpStream::connect(envoy.listener("tcp").await.unwrap())
        .await
        .unwrap();
    stream.write_all(b"ping over envoy").await.unwrap();
    let mut reply = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(&reply, b"ping over envoy");
    assert_eq!(echo.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_envoy_kills_its_process() {
    let envoy = Envoy::start(&bootstrap(Vec::new(), Vec::new()))
        .await
        .unwrap();
    let proc_dir = format!("/proc/{}", envoy.pid());
    assert!(std::path::Path::new(&proc_dir).exists());
    drop(envoy);
    // `drop` kills and reaps the child, so its /proc entry is gone once drop returns.
    poll::until(
        "the Envoy process to disappear",
        Duration::from_secs(5),
        || async { Ok((!std::path::Path::new(&proc_dir).exists()).then_some(())) },
    )
    .await
    .unwrap();
}
