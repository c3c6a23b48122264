//! `weft-upstream [--tcp] [ADDRESS] [NAME]`: the harness's HTTP upstream as a standalone server,
//! for `make demo`, local mode's example applications and benchmarks. Answers every request with
//! `upstream NAME: METHOD PATH`; with `--tcp`, a line server that answers each line with
//! `NAME: LINE`. Defaults: `127.0.0.1:8080`, `app`. Runs until killed.

use anyhow::Context;
use weft_e2e::upstream::HttpUpstream;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let tcp = args.next_if(|arg| arg == "--tcp").is_some();
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let name = args.next().unwrap_or_else(|| "app".to_owned());
    let address = address
        .parse()
        .with_context(|| format!("{address:?} is not an address like 127.0.0.1:8080"))?;
    if tcp {
        return line_server(&name, address).await;
    }
    let upstream = HttpUpstream::start_for_load(&name, address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    println!(
        "weft-upstream {} listening on {}",
        upstream.name(),
        upstream.addr()
    );
    std::future::pending::<()>().await;
    Ok(())
}

/// Answers each line of each connection with `name: line`.
async fn line_server(name: &str, address: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    println!("weft-upstream {name} (tcp) listening on {address}");
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.to_owned();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write
                    .write_all(format!("{name}: {line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}
